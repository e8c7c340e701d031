"""The ``s3nas`` flow's Prefect steps: thin, typed, path-in / path-out.

Every step owns ``data/s3nas/<step>/...``, is skipped when that folder already holds the same
(inputs, config, code) key — the code part derived from what the step imports — and writes
through a temp folder renamed into place. SCALE-Sim runs go to the ``workers/npu.py`` pool and
land in the per-layer cache ``data/s3nas/npu_cache/``: no layer is ever simulated twice, across
steps and runs. Training steps keep their engine checkpoints in ``data/s3nas/.checkpoints/``
(per step, for the step's key) until the step is complete, so a killed run resumes mid-training.
The methods themselves live in the domain modules; a step only wires paths to them.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from tasks.common.artifacts import cache_key, cached_step, read_json, step_dir, write_json
from tasks.common.steps import ResumableStep, set_threads, step, step_logger

from .config import S3NASConfig

FLOW = "s3nas"


def _checkpoints(name: str, key: str) -> Path:
    """The checkpoint folder of one training step, kept across a crash while the key holds."""
    return ResumableStep(step_dir(FLOW, ".checkpoints") / name, key).claim().out


def _device(use_gpu: bool):
    from tasks.common.devices import pick_device

    return pick_device("auto" if use_gpu else "cpu")


def _simulator(cfg: S3NASConfig, workers: int):
    """``archs -> simulated µs``: new layers on the NPU pool, everything else from the cache."""
    from workers.npu import simulate_archs

    from .npu import default_cache_root

    return lambda archs: simulate_archs(archs, cfg.npu, str(default_cache_root()), workers)


def load_data(data_dir: Path) -> dict:
    from .data import load_splits

    return load_splits(Path(data_dir) / "fashion_mnist.safetensors")


def load_estimator(est_dir: Path):
    from .estimator import LatencyEstimator

    return LatencyEstimator.from_dict(read_json(Path(est_dir) / "estimator.json"))


# ------------------------------------------------------------------------------- data + latency


@step("s3nas.data")
def data(cfg: S3NASConfig) -> Path:
    """A stratified Fashion-MNIST subset: train / val (from the 60k) / test (from the 10k)."""
    from .data import FASHION_DIR, make_splits, save_splits

    params = dict(n_train=cfg.n_train, n_val=cfg.n_val, n_test=cfg.n_test, seed=cfg.seed, source=str(FASHION_DIR))
    out = step_dir(FLOW, "data")
    with cached_step(out, cache_key(step="data", config=params)) as tmp:
        if tmp is not None:
            splits = make_splits(cfg.n_train, cfg.n_val, cfg.n_test, cfg.seed)
            save_splits(splits, tmp / "fashion_mnist.safetensors")
            write_json(tmp / "data.json", {**params, "counts": {k: len(v) for k, v in splits.items() if k.endswith("_y")}})
    return out


def on_npu(cfg: S3NASConfig, which: str) -> S3NASConfig:
    """The config with ``npu`` = the primary NPU (``"npu"``) or the second one (``"second_npu"``)."""
    return cfg if which == "npu" else cfg.model_copy(update={"npu": cfg.second_npu})


@step("s3nas.lut", run_name="lut[{which}]")
def latency_table(cfg: S3NASConfig, workers: int = 1, which: str = "npu") -> Path:
    """First, the target check that needs the simulator (a handful of layers); then every layer
    of the search space (and of the estimator's fit spaces) on the NPU pool → the layer LUT and
    S3NAS's per-block table (block string + input size). ``which="second_npu"`` builds the same
    table on the second NPU (its target is set relative to the first, so no floor check)."""
    from workers.npu import simulate_layers

    from .lut import build_latency_table, check_target_reachable, fit_scales
    from .npu import SimCache, default_cache_root

    cfg = on_npu(cfg, which)
    cache = SimCache.default(cfg.npu)
    if which == "npu":
        floor_us = check_target_reachable(cfg, cache)
        step_logger().info("smallest network of the space: %.1f µs; search target %.1f µs", floor_us, cfg.search_target_us)
    params = dict(npu=cfg.npu, supernet=cfg.supernet, se_ratio=cfg.se_ratio, fit_scales=fit_scales())
    out = step_dir(FLOW, "lut" if which == "npu" else "lut_npu2")
    with cached_step(out, cache_key(step="lut", config=params)) as tmp:
        if tmp is not None:
            lut, blocks, stats = build_latency_table(
                cfg, cache, lambda layers: simulate_layers(layers, cfg.npu, str(default_cache_root()), workers))
            write_json(tmp / "lut.json", lut)
            write_json(tmp / "blocks.json", blocks)
            write_json(tmp / "lut_stats.json", stats)
    return out


@step("s3nas.estimator")
def estimator(cfg: S3NASConfig, lut_dir: Path, workers: int = 1) -> Path:
    """Fit the analytical estimator to the LUT; check it against the simulator on held-out
    whole networks (random architectures at widths/resolutions outside the fit set)."""
    import time

    from .estimator import LatencyEstimator
    from .npu import NPULayer, SimCache
    from .validation import heldout_archs, validate_estimator

    params = dict(n=cfg.heldout_networks, seed=cfg.seed, se_ratio=cfg.se_ratio, supernet=cfg.supernet)
    out = step_dir(FLOW, "estimator")
    with cached_step(out, cache_key(step="estimator", config=params, inputs=[lut_dir])) as tmp:
        if tmp is not None:
            lut = read_json(Path(lut_dir) / "lut.json")
            t0 = time.perf_counter()
            est = LatencyEstimator.fit([(NPULayer.from_dict(v["layer"]), v["cycles"]) for v in lut["layers"].values()],
                                       cfg.npu)
            fit_s = time.perf_counter() - t0
            archs = heldout_archs(cfg.supernet, cfg.heldout_networks, cfg.seed, cfg.se_ratio)
            report = validate_estimator(est, archs, _simulator(cfg, workers), SimCache.default(cfg.npu), set(lut["layers"]))
            write_json(tmp / "estimator.json", est.to_dict())
            write_json(tmp / "validation.json", {**report, "fit_seconds": fit_s})
    return out


# ------------------------------------------------------------------------------- search


@step("s3nas.search", run_name="search[{arm}]")
def search(cfg: S3NASConfig, data_dir: Path, lut_dir: Path, arm: str = "s3nas", threads: int = 1,
           use_gpu: bool = False, ref_lut_dir: Path | None = None) -> Path:
    """Supernet training + single-path search (resumable) for one search arm of
    :data:`tasks.s3nas.arms.SEARCHES`: its cost model (the NPU's table ``lut_dir``, or the MAC
    proxy calibrated on it) and its target (a fraction of T; on the second NPU, T carried over by
    the ratio of the two NPUs' largest networks, ``ref_lut_dir`` being the first NPU's table)."""
    from tasks.common.progress import Progress

    from .arms import SEARCHES, search_cost
    from .lut import LatencyTable
    from .search import SupernetSearchRecipe, single_path_search

    set_threads(threads)
    spec = SEARCHES[arm]
    params = cfg.model_dump(include={"supernet", "search_epochs", "warmup_epochs", "latency_lambda", "latency_m", "lr",
                                     "threshold_lr", "threshold_optimizer", "label_smoothing", "batch_size", "seed",
                                     "target_latency_us", "search_target_ratio"})
    params.update(arm=arm, spec=spec)
    out = step_dir(FLOW, "search") / arm
    key = cache_key(step="search", config=params, inputs=[data_dir, lut_dir] + ([ref_lut_dir] if ref_lut_dir else []))
    with cached_step(out, key) as tmp:
        if tmp is not None:
            lut, splits, device = LatencyTable.load(lut_dir), load_data(data_dir), _device(use_gpu)
            run_cfg, cost = search_cost(cfg, spec, lut, LatencyTable.load(ref_lut_dir) if ref_lut_dir else None)
            recipe = SupernetSearchRecipe(run_cfg, splits["train_x"], splits["train_y"], cost["block_us"],
                                          cost["fixed_us"], cost["arch_us"])
            ckpt = _checkpoints(f"search-{arm}", key)
            with Progress(f"s3nas supernet search [{arm}]", recipe.steps) as p:
                arch, info = single_path_search(recipe, splits, ckpt, device, progress=p.callback)
            arch.name = arm
            write_json(tmp / "arch.json", arch.to_dict())
            write_json(tmp / "search.json", {**info, "arm": arm, "cost": spec["cost"], "device": str(device),
                                             "cost_model": cost["describe"], "npu_latency_us": lut.arch_us(arch),
                                             "arch": arch.describe()})
            step_logger().info("searched [%s] %s: %.1f µs by its cost model, %.1f µs on the NPU (search target %.1f) "
                               "in %.0f s", arm, arch.describe(), info["latency_us"], lut.arch_us(arch),
                               info["target_us"], info["search_seconds"])
    shutil.rmtree(step_dir(FLOW, ".checkpoints") / f"search-{arm}", ignore_errors=True)
    return out


@step("s3nas.random_search", run_name="search[random_search]")
def random_search(cfg: S3NASConfig, data_dir: Path, lut_dir: Path, threads: int = 1, use_gpu: bool = False) -> Path:
    """Baseline: random architectures meeting the same search target, same image budget (resumable)."""
    from tasks.common.progress import Progress

    from .lut import LatencyTable
    from .search import random_search as search_randomly

    set_threads(threads)
    params = cfg.model_dump(include={"supernet", "search_epochs", "random_epochs_each", "lr", "label_smoothing",
                                     "batch_size", "seed", "target_latency_us", "search_target_ratio"})
    out = step_dir(FLOW, "random_search")
    key = cache_key(step="random_search", config=params, inputs=[data_dir, lut_dir])
    with cached_step(out, key) as tmp:
        if tmp is not None:
            lut, splits = LatencyTable.load(lut_dir), load_data(data_dir)
            ckpt = _checkpoints("random_search", key)
            with Progress("s3nas random search", 1) as p:
                arch, info = search_randomly(cfg, splits, lut.arch_us, ckpt, _device(use_gpu), progress=p.callback)
            write_json(tmp / "arch.json", arch.to_dict())
            write_json(tmp / "search.json", {**info, "arch": arch.describe()})
    shutil.rmtree(step_dir(FLOW, ".checkpoints") / "random_search", ignore_errors=True)
    return out


# ------------------------------------------------------------------------------- scaling


@step("s3nas.scale", run_name="scale[{name}]")
def scale(cfg: S3NASConfig, name: str, arch_dir: Path | None, est_dir: Path, workers: int = 1,
          lut_dir: Path | None = None) -> Path:
    """Compound scaling of a net (``arch_dir``; None = the hand-designed baseline) to the final
    target, as arm ``name`` of :data:`tasks.s3nas.arms.FINALS` says: by the estimator confirmed
    by the simulator (landing within ``latency_tolerance`` below T), or — the as-found proxy arm —
    by the MAC proxy calibrated on ``lut_dir``, then measured on the simulator. A target the net
    cannot reach is a configuration error naming ``target_latency_us``."""
    import time

    from tasks.common.config import ConfigError

    from .arms import FINALS
    from .lut import LatencyTable
    from .proxy import MacProxy
    from .scaling import ScalingError, compound_scale, hand_designed
    from .space import Arch, network_layers

    spec = FINALS.get(name, {"scale_cost": "npu", "fix_resolution": False})
    resolutions = [1.0] if spec["fix_resolution"] else cfg.resolution_choices
    params = dict(name=name, spec=spec, target=cfg.target_latency_us, se_ratio=cfg.se_ratio, d=cfg.depth_choices,
                  w=cfg.width_choices, r=resolutions, max_conf=cfg.max_confirmations, npu=cfg.npu,
                  supernet=cfg.supernet, tol=cfg.latency_tolerance)
    out = step_dir(FLOW, "scaled") / name
    inputs = [est_dir] + ([arch_dir] if arch_dir else []) + ([lut_dir] if lut_dir else [])
    with cached_step(out, cache_key(step="scale", config=params, inputs=inputs)) as tmp:
        if tmp is not None:
            base = Arch.from_dict(read_json(Path(arch_dir) / "arch.json")) if arch_dir else hand_designed(cfg.supernet)
            est = load_estimator(est_dir)
            simulate = _simulator(cfg, workers)
            if spec["scale_cost"] == "mac":  # NPU-unaware: the proxy both estimates and "confirms"
                proxy = MacProxy.calibrated(cfg.supernet, LatencyTable.load(lut_dir).arch_us)
                estimate, confirm = proxy.arch_us, proxy.archs_us
            else:
                estimate, confirm = (lambda a: est.network_us(network_layers(a))), simulate
            t0 = time.perf_counter()
            try:
                arch, info = compound_scale(
                    base, cfg.target_latency_us, estimate, confirm, depths=cfg.depth_choices, widths=cfg.width_choices,
                    resolutions=resolutions, se_ratio=cfg.se_ratio, max_confirmations=cfg.max_confirmations,
                    lower=1 - cfg.latency_tolerance)
            except ScalingError as e:
                raise ConfigError(f"s3nas.{e} (scaling {name})") from None
            arch.name = name
            info["scale_cost"] = spec["scale_cost"]
            if spec["scale_cost"] == "mac":
                info["proxy_us"] = info["simulated_us"]
                info["simulated_us"] = simulate([arch])[0]
                info["fraction_of_target"] = info["simulated_us"] / cfg.target_latency_us
            write_json(tmp / "arch.json", arch.to_dict())
            write_json(tmp / "scaling.json", {**info, "seconds": time.perf_counter() - t0, "base": base.describe(),
                                              "arch": arch.describe()})
    return out


# ------------------------------------------------------------------------------- final training


@step("s3nas.train_final", run_name="train_final[{name} seed {seed}]")
def train_final(cfg: S3NASConfig, name: str, scaled_dir: Path, data_dir: Path, est_dir: Path, remove_se: bool = False,
                threads: int = 1, use_gpu: bool = False, seed: int | None = None) -> Path:
    """Train a scaled net from scratch with training seed ``seed`` (initialisation, batch order,
    dropout; resumable), evaluate it on the test split; with ``remove_se`` also the rmSE variant
    (excitation-variance SE removal, then fine-tuning)."""
    from safetensors.torch import save_file

    from tasks.common.progress import Progress

    from .final import evaluate_net, selective_se_removal
    from .space import Arch, network_layers
    from .train import ClassifierRecipe, train_classifier

    set_threads(threads)
    params = cfg.model_dump(include={"final_epochs", "lr", "label_smoothing", "batch_size", "seed", "se_remove_fraction",
                                     "rmse_finetune_epochs", "npu"})
    seed = cfg.seed if seed is None else seed
    params.update(name=name, remove_se=remove_se, seed=seed)
    out = step_dir(FLOW, "final") / name / f"seed{seed}"
    key = cache_key(step="train_final", config=params, inputs=[scaled_dir, data_dir, est_dir])
    with cached_step(out, key) as tmp:
        if tmp is not None:
            device = _device(use_gpu)
            arch = Arch.from_dict(read_json(Path(scaled_dir) / "arch.json"))
            splits, est = load_data(data_dir), load_estimator(est_dir)
            # This step holds one CPU already: its few new layers (if any) are simulated here.
            simulate = _simulator(cfg, 1)
            ckpt = _checkpoints(f"final-{name}-{seed}", key)
            recipe = ClassifierRecipe(arch, splits["train_x"], splits["train_y"], epochs=cfg.final_epochs, lr=cfg.lr,
                                      batch_size=cfg.batch_size, label_smoothing=cfg.label_smoothing, seed=seed)
            with Progress(f"train {name} seed {seed}", recipe.steps) as p:
                model, tr = train_classifier(recipe, ckpt / "net", device, progress=p.callback)
            res = {"method": name, "seed": seed, **evaluate_net(model, arch, splits["test_x"], splits["test_y"], device,
                                                  sim_us=simulate([arch])[0], est_us=est.network_us(network_layers(arch)),
                                                  train_seconds=tr["train_seconds"])}
            save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
            write_json(tmp / "eval.json", res)
            if remove_se:
                small, arch_rm, scores, dropped = selective_se_removal(model, arch, splits["val_x"], cfg.se_remove_fraction,
                                                                       device)
                tr2 = {"train_seconds": 0.0}
                if cfg.rmse_finetune_epochs:
                    tune = ClassifierRecipe(arch_rm, splits["train_x"], splits["train_y"], epochs=cfg.rmse_finetune_epochs,
                                            lr=cfg.lr / 3, batch_size=cfg.batch_size, label_smoothing=cfg.label_smoothing,
                                            seed=seed + 1, init_state=small.state_dict())
                    small, tr2 = train_classifier(tune, ckpt / "rmse", device)
                res_rm = {"method": f"{name}-rmSE", "seed": seed,
                          **evaluate_net(small, arch_rm, splits["test_x"], splits["test_y"], device,
                                         sim_us=simulate([arch_rm])[0], est_us=est.network_us(network_layers(arch_rm)),
                                         train_seconds=tr["train_seconds"] + tr2["train_seconds"]),
                          "se_scores": scores, "se_removed": dropped}
                write_json(tmp / "eval_rmse.json", res_rm)
    shutil.rmtree(step_dir(FLOW, ".checkpoints") / f"final-{name}-{seed}", ignore_errors=True)
    return out


# ------------------------------------------------------------------------------- report


@step("s3nas.report")
def report(cfg: S3NASConfig, final_dirs: dict[str, list[Path]], search_dirs: dict[str, Path], scaled_dirs: dict[str, Path],
           est_dir: Path, lut_dir: Path, lut2_dir: Path | None = None) -> Path:
    """Table, metrics.json, headline.json (DVC metrics), results.csv (DVC plots), pareto.png —
    written whole; with the second NPU's table, the two NPUs' searches compared."""
    from .compare import npu_comparison
    from .lut import LatencyTable
    from .report import report_rows, write_report
    from .space import Arch

    params = dict(target=cfg.target_latency_us, tol=cfg.latency_tolerance, methods=sorted(final_dirs),
                  searches=sorted(search_dirs), npus=[cfg.npu, cfg.second_npu])
    inputs = [*(d for ds in final_dirs.values() for d in ds), *search_dirs.values(), *scaled_dirs.values(), est_dir,
              lut_dir] + ([lut2_dir] if lut2_dir else [])
    out = step_dir(FLOW, "report")
    with cached_step(out, cache_key(step="report", config=params, inputs=inputs)) as tmp:
        if tmp is not None:
            rows, extra = report_rows(cfg.target_latency_us, final_dirs, search_dirs, scaled_dirs, est_dir, lut_dir)
            npu_md = ""
            if lut2_dir and "npu2" in search_dirs:
                luts = {"npu1": LatencyTable.load(lut_dir), "npu2": LatencyTable.load(lut2_dir)}
                archs = {"npu1": Arch.from_dict(read_json(Path(search_dirs["s3nas"]) / "arch.json")),
                         "npu2": Arch.from_dict(read_json(Path(search_dirs["npu2"]) / "arch.json"))}
                facts, md = npu_comparison(cfg.supernet, {k: v.arch_us for k, v in luts.items()},
                                           {k: v.net_us for k, v in luts.items()}, archs)
                extra["second_npu"] = {"npu1": cfg.npu.model_dump(), "npu2": cfg.second_npu.model_dump(), **facts}
                npu_md = (f"Second NPU ({cfg.second_npu.array_rows}×{cfg.second_npu.array_cols} {cfg.second_npu.dataflow}"
                          f" against {cfg.npu.array_rows}×{cfg.npu.array_cols} {cfg.npu.dataflow}): " + md)
            write_report(rows, tmp, extra, cfg.latency_tolerance, npu_md)
    return out
