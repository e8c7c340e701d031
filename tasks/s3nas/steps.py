"""The ``s3nas`` flow's Prefect steps: thin, typed, path-in / path-out.

Every step owns ``data/s3nas/<step>/...``, is skipped when that folder already holds the same
(inputs, config, code) key, and writes through a temp folder renamed into place. SCALE-Sim
runs go to the ``workers/npu.py`` actors and land in the per-layer cache
``data/s3nas/npu_cache/`` — no layer is ever simulated twice, across steps and runs.
"""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from tasks.common.artifacts import cache_key, cached_step, read_json, step_dir, write_json
from tasks.common.devices import pick_device, seed_everything
from tasks.common.progress import Progress

from .config import S3NASConfig

FLOW = "s3nas"
STEP_OPTS: dict[str, Any] = dict(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2, persist_result=False)
CODE_COMMON = ["tasks/common", "tasks/s3nas/config.py", "tasks/s3nas/space.py", "tasks/s3nas/npu.py"]


def _code(*files: str) -> list[str]:
    return CODE_COMMON + [f"tasks/s3nas/{f}" for f in files]


def _logger():
    try:
        return get_run_logger()
    except Exception:
        import logging

        return logging.getLogger("paperline.s3nas")


def _device(cfg: S3NASConfig, use_gpu: bool) -> torch.device:
    if cfg.device != "auto":
        return pick_device(cfg.device)
    return pick_device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


def _threads(n: int) -> None:
    torch.set_num_threads(max(1, n))


# ------------------------------------------------------------------------------- latency helpers


class LatencyTable:
    """Simulated cycles per layer key (the LUT), and latencies built from it."""

    def __init__(self, cycles: dict[str, float], clock_mhz: float):
        self.cycles, self.clock = cycles, clock_mhz

    @classmethod
    def load(cls, lut_dir: Path) -> "LatencyTable":
        d = read_json(Path(lut_dir) / "lut.json")
        return cls({k: v["cycles"] for k, v in d["layers"].items()}, d["npu"]["clock_mhz"])

    def net_us(self, net) -> float:
        return sum(self.cycles[layer.key()] * n for layer, n in net) / self.clock

    def arch_us(self, arch) -> float:
        from .space import network_layers

        return self.net_us(network_layers(arch))

    def block_us(self, slot, branches) -> float:
        from .space import block_layers, make_block

        return self.net_us(block_layers(make_block(slot, branches), slot.h))


def simulate_archs(cfg: S3NASConfig, archs: list, workers: int | None = None) -> list[float]:
    """Simulated latency (µs) of whole networks; new layers run on the NPU actors."""
    from workers.npu import simulate_layers

    from .npu import SimCache, default_cache_root, network_cycles
    from .space import network_layers

    nets = [network_layers(a) for a in archs]
    layers = [layer for net in nets for layer, _ in net]
    simulate_layers(layers, cfg.npu, str(default_cache_root()), workers or cfg.lut_workers)
    cache = SimCache.default(cfg.npu)
    return [network_cycles(net, cache) / cfg.npu.clock_mhz for net in nets]


def fit_scales() -> list[tuple[float, float]]:
    """(width, resolution) of the spaces whose layers the estimator is fitted on; held-out
    networks use other multipliers so that most of their layers are new to it."""
    return [(1.0, 1.0), (0.625, 0.75), (1.5, 1.25)]


HELDOUT_WIDTHS = [0.75, 0.875, 1.125, 1.25, 1.75, 2.0]
HELDOUT_RESOLUTIONS = [0.875, 1.125, 1.5]


# ------------------------------------------------------------------------------- data


@task(name="s3nas.data", **STEP_OPTS)
def data(cfg: S3NASConfig) -> Path:
    """A stratified Fashion-MNIST subset: train / val (from the 60k) / test (from the 10k)."""
    from .data import FASHION_DIR, make_splits, save_splits

    params = dict(n_train=cfg.n_train, n_val=cfg.n_val, n_test=cfg.n_test, seed=cfg.seed, source=str(FASHION_DIR))
    out = step_dir(FLOW, "data")
    key = cache_key(step="data", config=params, code=_code("data.py"))
    with cached_step(out, key) as tmp:
        if tmp is not None:
            splits = make_splits(cfg.n_train, cfg.n_val, cfg.n_test, cfg.seed)
            save_splits(splits, tmp / "fashion_mnist.safetensors")
            write_json(tmp / "data.json", {**params, "counts": {k: len(v) for k, v in splits.items() if k.endswith("_y")}})
    return out


def load_data(data_dir: Path) -> dict:
    from .data import load_splits

    return load_splits(Path(data_dir) / "fashion_mnist.safetensors")


# ------------------------------------------------------------------------------- latency table


@task(name="s3nas.lut", **STEP_OPTS)
def latency_table(cfg: S3NASConfig) -> Path:
    """Simulate every layer of the search space (and of the estimator's fit spaces) on the
    NPU actors; write the layer LUT and S3NAS's per-block table (block string + input size)."""
    from workers.npu import simulate_layers

    from .npu import SimCache, default_cache_root
    from .space import block_choices, block_layers, make_block, scaled_supernet, search_space_layers, supernet_slots

    params = dict(npu=cfg.npu, supernet=cfg.supernet, se_ratio=cfg.se_ratio, fit_scales=fit_scales())
    out = step_dir(FLOW, "lut")
    key = cache_key(step="lut", config=params, code=_code("estimator.py") + ["workers/npu.py"])
    with cached_step(out, key) as tmp:
        if tmp is not None:
            t0 = time.perf_counter()
            layers = {}
            for w, r in fit_scales():
                for layer in search_space_layers(scaled_supernet(cfg.supernet, w, r), se_ratio=cfg.se_ratio):
                    layers[layer.key()] = layer
            space_keys = {l.key() for l in search_space_layers(cfg.supernet, se_ratio=cfg.se_ratio)}
            cache = SimCache.default(cfg.npu)
            before = len(cache.missing(layers.values()))
            runs = simulate_layers(list(layers.values()), cfg.npu, str(default_cache_root()), cfg.lut_workers)
            rows = {k: {**cache.get(l), "in_search_space": k in space_keys} for k, l in layers.items()}
            blocks = {}
            for slot in supernet_slots(cfg.supernet):
                for branches in block_choices(cfg.supernet, slot):
                    b = make_block(slot, branches)
                    net = block_layers(b, slot.h)
                    blocks[f"{b.tag()}_imgsize{slot.h}"] = {
                        "latency_us": sum(rows[l.key()]["cycles"] * n for l, n in net) / cfg.npu.clock_mhz}
            write_json(tmp / "lut.json", {"npu": cfg.npu.model_dump(), "layers": rows})
            write_json(tmp / "blocks.json", blocks)
            write_json(tmp / "lut_stats.json", {"layers": len(rows), "search_space_layers": len(space_keys),
                                                "block_entries": len(blocks), "uncached_before": before,
                                                "simulations_run": runs, "seconds": time.perf_counter() - t0})
    return out


# ------------------------------------------------------------------------------- estimator


@task(name="s3nas.estimator", **STEP_OPTS)
def estimator(cfg: S3NASConfig, lut_dir: Path) -> Path:
    """Fit the analytical estimator to the LUT; check it against the simulator on held-out
    whole networks (random architectures at widths/resolutions outside the fit set)."""
    from .estimator import LatencyEstimator, mape
    from .npu import NPULayer, SimCache
    from .scaling import finish
    from .space import network_layers, random_arch, scaled_supernet

    params = dict(n=cfg.heldout_networks, seed=cfg.seed)
    out = step_dir(FLOW, "estimator")
    key = cache_key(step="estimator", config=params, inputs=[lut_dir], code=_code("estimator.py", "scaling.py") + ["workers/npu.py"])
    with cached_step(out, key) as tmp:
        if tmp is not None:
            lut = read_json(Path(lut_dir) / "lut.json")
            rows = [(NPULayer.from_dict(v["layer"]), v["cycles"]) for v in lut["layers"].values()]
            t0 = time.perf_counter()
            est = LatencyEstimator.fit(rows, cfg.npu)
            fit_s = time.perf_counter() - t0
            rng = random.Random(cfg.seed + 7)
            archs = []
            for i in range(cfg.heldout_networks):
                sn = scaled_supernet(cfg.supernet, rng.choice(HELDOUT_WIDTHS), rng.choice(HELDOUT_RESOLUTIONS))
                a = random_arch(sn, rng, name=f"heldout-{i}")
                archs.append(finish(a, cfg.se_ratio) if i % 2 else a)  # half with SE + h-swish, like finished nets
            t1 = time.perf_counter()
            sim = simulate_archs(cfg, archs)
            sim_wall = time.perf_counter() - t1
            t2 = time.perf_counter()
            pred = [est.network_us(network_layers(a)) for a in archs]
            est_s = time.perf_counter() - t2
            fit_keys = set(lut["layers"])
            cache = SimCache.default(cfg.npu)
            nets = []
            for a, s, p in zip(archs, sim, pred):
                net = network_layers(a)
                keys = {l.key() for l, _ in net}
                nets.append({"name": a.name, "sim_us": s, "est_us": p, "err_pct": 100 * (p - s) / s,
                             "new_layer_fraction": len(keys - fit_keys) / len(keys), "arch": a.describe(),
                             "scalesim_seconds_as_run": sum(cache.get(l)["sim_seconds"] * n for l, n in net)})
            write_json(tmp / "estimator.json", est.to_dict())
            write_json(tmp / "validation.json", {
                "networks": len(archs), "mape_pct": mape(pred, sim),
                "max_abs_err_pct": max(abs(n["err_pct"]) for n in nets),
                "mean_new_layer_fraction": sum(n["new_layer_fraction"] for n in nets) / len(nets),
                "fit_seconds": fit_s, "estimate_seconds_total": est_s, "simulate_wall_seconds": sim_wall,
                "scalesim_seconds_as_run_total": sum(n["scalesim_seconds_as_run"] for n in nets),
                "per_network": nets})
    return out


def load_estimator(est_dir: Path):
    from .estimator import LatencyEstimator

    return LatencyEstimator.from_dict(read_json(Path(est_dir) / "estimator.json"))


# ------------------------------------------------------------------------------- search


@task(name="s3nas.search", **STEP_OPTS)
def search(cfg: S3NASConfig, data_dir: Path, lut_dir: Path, threads: int = 1, use_gpu: bool = False) -> Path:
    """Supernet training + single-path search at the tighter search target."""
    from .search import single_path_search
    from .space import fixed_layers

    _threads(threads)
    params = cfg.model_dump(include={"supernet", "search_epochs", "warmup_epochs", "latency_lambda", "latency_m", "lr",
                                     "threshold_lr", "label_smoothing", "batch_size", "seed", "target_latency_us",
                                     "search_target_ratio"})
    out = step_dir(FLOW, "search")
    key = cache_key(step="search", config=params, inputs=[data_dir, lut_dir], code=_code("supernet.py", "search.py", "train.py", "data.py", "models.py"))
    with cached_step(out, key) as tmp:
        if tmp is not None:
            seed_everything(cfg.seed)
            lut = LatencyTable.load(lut_dir)
            splits = load_data(data_dir)
            device = _device(cfg, use_gpu)
            steps = cfg.search_epochs * -(-cfg.n_train // cfg.batch_size)
            with Progress("s3nas supernet search", steps) as p:
                arch, info = single_path_search(cfg, splits, lut.block_us, lut.net_us(fixed_layers(cfg.supernet)),
                                                lut.arch_us, device, progress=p.callback)
            write_json(tmp / "arch.json", arch.to_dict())
            write_json(tmp / "search.json", {**info, "device": str(device), "arch": arch.describe()})
            _logger().info("searched %s: %.1f µs (search target %.1f) in %.0f s", arch.describe(), info["latency_us"],
                           info["target_us"], info["search_seconds"])
    return out


@task(name="s3nas.random_search", **STEP_OPTS)
def random_search(cfg: S3NASConfig, data_dir: Path, lut_dir: Path, threads: int = 1, use_gpu: bool = False) -> Path:
    """Baseline: random architectures meeting the same search target, same image budget."""
    from .search import random_search as _random

    _threads(threads)
    params = cfg.model_dump(include={"supernet", "search_epochs", "random_epochs_each", "lr", "label_smoothing",
                                     "batch_size", "seed", "target_latency_us", "search_target_ratio"})
    out = step_dir(FLOW, "random_search")
    key = cache_key(step="random_search", config=params, inputs=[data_dir, lut_dir], code=_code("search.py", "train.py", "data.py", "models.py"))
    with cached_step(out, key) as tmp:
        if tmp is not None:
            seed_everything(cfg.seed)
            lut = LatencyTable.load(lut_dir)
            splits = load_data(data_dir)
            n = max(2, cfg.search_epochs // cfg.random_epochs_each)
            with Progress("s3nas random search", n) as p:
                arch, info = _random(cfg, splits, lut.arch_us, _device(cfg, use_gpu), progress=p.callback)
            write_json(tmp / "arch.json", arch.to_dict())
            write_json(tmp / "search.json", {**info, "arch": arch.describe()})
    return out


# ------------------------------------------------------------------------------- scaling


@task(name="s3nas.scale", **STEP_OPTS)
def scale(cfg: S3NASConfig, name: str, arch_dir: Path | None, est_dir: Path) -> Path:
    """Compound scaling of a net (``arch_dir``; None = the hand-designed baseline) to the
    final target by the estimator, confirmed by the simulator."""
    from .scaling import compound_scale, hand_designed
    from .space import Arch, network_layers

    params = dict(name=name, target=cfg.target_latency_us, se_ratio=cfg.se_ratio, d=cfg.depth_choices,
                  w=cfg.width_choices, r=cfg.resolution_choices, max_conf=cfg.max_confirmations, npu=cfg.npu,
                  res=cfg.supernet.resolution)
    out = step_dir(FLOW, "scaled") / name
    inputs = [est_dir] + ([arch_dir] if arch_dir else [])
    key = cache_key(step="scale", config=params, inputs=inputs, code=_code("scaling.py", "estimator.py") + ["workers/npu.py"])
    with cached_step(out, key) as tmp:
        if tmp is not None:
            base = Arch.from_dict(read_json(Path(arch_dir) / "arch.json")) if arch_dir else hand_designed(cfg.supernet)
            est = load_estimator(est_dir)
            t0 = time.perf_counter()
            arch, info = compound_scale(
                base, cfg.target_latency_us, lambda a: est.network_us(network_layers(a)),
                lambda archs: simulate_archs(cfg, archs), depths=cfg.depth_choices, widths=cfg.width_choices,
                resolutions=cfg.resolution_choices, se_ratio=cfg.se_ratio, max_confirmations=cfg.max_confirmations)
            arch.name = name
            write_json(tmp / "arch.json", arch.to_dict())
            write_json(tmp / "scaling.json", {**info, "seconds": time.perf_counter() - t0, "base": base.describe(),
                                              "arch": arch.describe()})
    return out


# ------------------------------------------------------------------------------- final training


def _evaluate(model, arch, splits, device, *, sim_us: float, est_us: float, t_train: float) -> dict:
    from .supernet import count_params
    from .space import network_macs
    from .train import accuracy, predict

    pred = predict(model, splits["test_x"], resolution=arch.resolution, device=device)
    correct = (pred == splits["test_y"])
    return {"test_acc": accuracy(pred, splits["test_y"]), "correct": int(correct.sum()), "n_test": len(correct),
            "correct_mask": correct.int().tolist(), "sim_latency_us": sim_us, "est_latency_us": est_us,
            "macs": network_macs(arch), "params": count_params(model), "train_seconds": t_train,
            "arch_describe": arch.describe(), "arch": arch.to_dict()}


@task(name="s3nas.train_final", **STEP_OPTS)
def train_final(cfg: S3NASConfig, name: str, scaled_dir: Path, data_dir: Path, est_dir: Path, remove_se: bool = False,
                threads: int = 1, use_gpu: bool = False) -> Path:
    """Train a scaled net from scratch, evaluate on the test split; with ``remove_se`` also the
    rmSE variant (excitation-variance SE removal, then fine-tuning)."""
    from safetensors.torch import save_file

    from .models import ChildNet, without_se
    from .scaling import excitation_scores, remove_se as _remove
    from .space import Arch, network_layers
    from .train import train_classifier

    _threads(threads)
    params = cfg.model_dump(include={"final_epochs", "lr", "label_smoothing", "batch_size", "seed", "se_remove_fraction",
                                     "rmse_finetune_epochs", "npu"})
    params.update(name=name, remove_se=remove_se)
    out = step_dir(FLOW, "final") / name
    key = cache_key(step="train_final", config=params, inputs=[scaled_dir, data_dir, est_dir],
                    code=_code("models.py", "train.py", "scaling.py", "data.py") + ["workers/npu.py"])
    with cached_step(out, key) as tmp:
        if tmp is not None:
            seed_everything(cfg.seed)
            device = _device(cfg, use_gpu)
            arch = Arch.from_dict(read_json(Path(scaled_dir) / "arch.json"))
            splits = load_data(data_dir)
            est = load_estimator(est_dir)
            model = ChildNet(arch)
            steps = cfg.final_epochs * -(-cfg.n_train // cfg.batch_size)
            with Progress(f"train {name}", steps) as p:
                tr = train_classifier(model, splits["train_x"], splits["train_y"], resolution=arch.resolution,
                                      epochs=cfg.final_epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                                      label_smoothing=cfg.label_smoothing, device=device, seed=cfg.seed, progress=p.callback)
            sim_us = simulate_archs(cfg, [arch])[0]
            res = {"method": name, **_evaluate(model, arch, splits, device, sim_us=sim_us,
                                               est_us=est.network_us(network_layers(arch)), t_train=tr["train_seconds"])}
            save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
            write_json(tmp / "eval.json", res)
            if remove_se:
                from .train import predict

                se = model.se_modules()
                for _, m in se:
                    m.recorded = []
                predict(model, splits["val_x"], resolution=arch.resolution, device=device)
                excitations = [torch.cat(m.recorded).numpy() for _, m in se]
                for _, m in se:
                    m.recorded = None
                scores = excitation_scores(excitations)
                arch_rm, dropped = _remove(arch, scores, cfg.se_remove_fraction)
                small = without_se(model.cpu(), arch_rm)
                tr2 = {"train_seconds": 0.0}
                if cfg.rmse_finetune_epochs:
                    tr2 = train_classifier(small, splits["train_x"], splits["train_y"], resolution=arch.resolution,
                                           epochs=cfg.rmse_finetune_epochs, lr=cfg.lr / 3, batch_size=cfg.batch_size,
                                           label_smoothing=cfg.label_smoothing, device=device, seed=cfg.seed + 1)
                sim_rm = simulate_archs(cfg, [arch_rm])[0]
                res_rm = {"method": f"{name}-rmSE", **_evaluate(small, arch_rm, splits, device, sim_us=sim_rm,
                                                                est_us=est.network_us(network_layers(arch_rm)),
                                                                t_train=tr["train_seconds"] + tr2["train_seconds"]),
                          "se_scores": scores, "se_removed": dropped}
                write_json(tmp / "eval_rmse.json", res_rm)
    return out


# ------------------------------------------------------------------------------- report


@task(name="s3nas.report", **STEP_OPTS)
def report(cfg: S3NASConfig, final_dirs: dict[str, Path], search_dirs: dict[str, Path], est_dir: Path, lut_dir: Path) -> Path:
    """Table, metrics.json (DVC metrics), results.csv (DVC plots), pareto.png."""
    from .report import write_report

    out = step_dir(FLOW, "report")
    rows = []
    for name, d in final_dirs.items():
        for f in ("eval.json", "eval_rmse.json"):
            p = Path(d) / f
            if p.is_file():
                r = read_json(p)
                r["target_us"] = cfg.target_latency_us
                s = search_dirs.get(name)
                r["search_seconds"] = read_json(Path(s) / "search.json")["search_seconds"] if s else 0.0
                rows.append(r)
    val = read_json(Path(est_dir) / "validation.json")
    search_info = read_json(Path(search_dirs["s3nas"]) / "search.json")
    extra = {
        "target_us": cfg.target_latency_us, "search_target_us": cfg.search_target_us,
        "estimator": {k: val[k] for k in ("networks", "mape_pct", "max_abs_err_pct", "mean_new_layer_fraction",
                                          "estimate_seconds_total", "simulate_wall_seconds", "scalesim_seconds_as_run_total")},
        "search": {"seconds": search_info["search_seconds"], "searched_latency_us": search_info["latency_us"],
                   "arch": search_info["arch"]},
        "lut": read_json(Path(lut_dir) / "lut_stats.json"),
    }
    write_report(rows, out, extra)
    write_json(out / "summary.json", {"rows": [{k: v for k, v in r.items() if k not in ("correct_mask", "arch")} for r in rows],
                                      **extra})
    return out
