"""The ``stun`` flow's steps: thin, typed, path-in / path-out.

Each step owns ``data/stun/<step>/...``: it resolves that folder and its cache key (config, the
content of its inputs, and the code it really imports, derived by ``@step``), skips when the
folder already holds that key intact, else calls one method function and writes through a temp
folder renamed into place — so a crashed run redoes only what is missing. Every temp or scratch
folder a step makes is under ``data/stun`` (dot-named temps are swept at flow start; training
checkpoints and profiling shards are kept for their key until the step completes), never under
``/tmp``.

Threads are fixed by the config, never by the machine, so the numbers do not depend on its core
count: ``zoo.threads`` for training, ``resources.threads_per_worker`` for the profiling actors,
one for the steps that run side by side (pruning, evaluation).
"""
from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tasks.common.artifacts import cache_key, cached_step, read_json, step_dir, write_json
from tasks.common.config import ConfigError
from tasks.common.progress import Progress
from tasks.common.steps import ResumableStep, set_threads, step, step_logger

from .config import StunConfig

FLOW = "stun"
#: torch threads of the steps that run side by side on one CPU each (pruning, evaluation)
LIGHT_THREADS = 1


def _device(use_gpu: bool) -> str:
    return "cuda" if use_gpu else "cpu"


@step("stun.corpus", run_name="corpus")
def build_corpus(cfg: StunConfig) -> Path:
    """Shakespeare (train / held-out works) + generated arithmetic problems, as JSONL."""
    from .corpus import build_corpus as build

    z = cfg.zoo
    params = dict(seed=z.seed, heldout_works=z.heldout_works, n_train_problems=z.n_train_problems,
                  n_heldout_problems=z.n_heldout_problems)
    out = step_dir(FLOW, "corpus")
    with cached_step(out, cache_key(step="corpus", config=params)) as tmp:
        if tmp is not None:
            write_json(tmp / "counts.json", build(tmp, **params))
    return out


@step("stun.data", run_name="data")
def user_data(cfg: StunConfig, corpus_dir: Path) -> Path:
    """The calibration / evaluation corpus: the zoo corpus, or one built from the user's files
    (``calib_data``, ``eval_data``, ``eval_problems_data``) with the zoo corpus filling the rest."""
    from .corpus import build_user_corpus

    files = {k: getattr(cfg, k) for k in ("calib_data", "eval_data", "eval_problems_data")}
    if not any(files.values()):
        return corpus_dir
    out = step_dir(FLOW, "data")
    paths = [Path(v) for v in files.values() if v]
    with cached_step(out, cache_key(step="data", config=files, inputs=[corpus_dir, *paths])) as tmp:
        if tmp is not None:
            write_json(tmp / "counts.json", build_user_corpus(tmp, corpus_dir, **files))
    return out


def _seed_dir(step_name: str, seed: int) -> Path:
    return step_dir(FLOW, step_name) / f"seed{seed}"


@step("stun.model", run_name="model[{cfg.model} seed {seed}]")
def prepare_model(cfg: StunConfig, corpus_dir: Path, seed: int = 0, use_gpu: bool = False) -> Path:
    """The dense model: the user's checkpoint as given (checked again: it may have changed since
    the config was validated; ``zoo/source.json`` records which one, so the DVC stage has its
    ``zoo`` out), or the zoo model of training seed ``seed``, resumable after a kill."""
    if cfg.model != "zoo":
        from .adapters import MoEModelError, check_model_folder, weight_files

        try:
            check_model_folder(cfg.model)
        except (FileNotFoundError, MoEModelError) as e:
            raise ConfigError(f"stun.{e}") from None
        src = Path(cfg.model).resolve()
        # The user's weights are not copied into DVC (they may be hundreds of GB): the record is
        # their path and a fingerprint (names, sizes, mtimes) that changes when they do.
        files = [src / "config.json", *weight_files(src)]
        source = {"model": str(src), "files": [{"name": f.name, "bytes": f.stat().st_size,
                                                "mtime_ns": f.stat().st_mtime_ns} for f in files]}
        out = step_dir(FLOW, "zoo")
        with cached_step(out, cache_key(step="model-source", config=source)) as tmp:
            if tmp is not None:
                write_json(tmp / "source.json", source)
        return src
    from .zoo import train_zoo

    set_threads(cfg.zoo.threads)
    zcfg = cfg.zoo.model_copy(update={"seed": seed})  # the corpus split stays cfg.zoo.seed's
    out = _seed_dir("zoo", seed)
    key = cache_key(step="zoo", config=zcfg, inputs=[corpus_dir])
    # Training checkpoints outlive a killed run here (another key's are cleared by the claim);
    # they are scratch once the model is saved.
    scratch = ResumableStep(step_dir(FLOW, f"zoo_train_seed{seed}"), key)
    with cached_step(out, key) as tmp:
        if tmp is not None:
            scratch.claim()
            with Progress(f"train zoo MoE (seed {seed})", zcfg.steps) as p:
                metrics = train_zoo(zcfg, corpus_dir, tmp, progress=p.callback, device=_device(use_gpu),
                                    checkpoint_dir=scratch.out / "checkpoints")
            write_json(tmp / "zoo_metrics.json", metrics)
            step_logger().info("zoo model seed %d: held-out ppl %.2f, exact match %.3f (%d steps, %.0f s)", seed,
                               metrics["dense_ppl"], metrics["dense_exact_match"], zcfg.steps,
                               metrics["train_seconds"])
    shutil.rmtree(scratch.out, ignore_errors=True)
    return out


@step("stun.calibration", run_name="calibration[{cfg.calib_samples}x{cfg.calib_seq_len} seed {seed}]")
def calibration(cfg: StunConfig, model_dir: Path, corpus_dir: Path, seed: int = 0) -> Path:
    """Calibration sequences from the training mix, tokenised by the model's tokenizer."""
    from .calibration import build_calibration

    params = dict(n=cfg.calib_samples, seq_len=cfg.calib_seq_len, seed=seed,
                  problem_share=cfg.zoo.problem_fraction)
    out = _seed_dir("calibration", seed)
    with cached_step(out, cache_key(step="calibration", config=params, inputs=[model_dir, corpus_dir])) as tmp:
        if tmp is not None:
            build_calibration(model_dir, corpus_dir, tmp, **params)
    return out


@step("stun.profile", run_name="profile[{workers} workers seed {seed}]")
def profile_experts(cfg: StunConfig, model_dir: Path, calib_dir: Path, workers: int, threads: int = 1,
                    use_gpu: bool = False, seed: int = 0) -> Path:
    """One calibration sweep over a pool of profiler actors → router co-activation counts per layer."""
    from workers.profiler import profile_calibration

    from .calibration import load_calibration
    from .profiling import PROFILE_BATCH

    out = _seed_dir("profile", seed)
    key = cache_key(step="profile", config={"pair_k": 2, "batch_size": PROFILE_BATCH}, inputs=[model_dir, calib_dir])
    # Finished shards outlive a crash here, each recorded with its files' sizes and hashes.
    shards = ResumableStep(step_dir(FLOW, f"profile_shards_seed{seed}"), key)
    with cached_step(out, key) as tmp:
        if tmp is not None:
            profile, stats = profile_calibration(model_dir, load_calibration(calib_dir), shards.claim(), workers=workers,
                                                 num_gpus=1 if use_gpu else 0, threads=threads, pair_k=2)
            profile.save(tmp / "profile")
            write_json(tmp / "profile.json", stats)
    shutil.rmtree(shards.out, ignore_errors=True)
    return out


@step("stun.experts", run_name="experts[{method}@k{keep_per_layer}{tag} seed {seed}]")
def prune_experts(cfg: StunConfig, method: str, keep_per_layer: int, model_dir: Path, profile_dir: Path,
                  calib_dir: Path, seed: int = 0, tag: str = "", opts: dict[str, Any] | None = None) -> Path:
    """Expert pruning to ``keep_per_layer`` experts (the mean over layers for a global budget)
    by a method of ``EXPERT_PRUNING_METHODS``; writes a checkpoint + plan.json. ``opts``
    overrides the config's expert-stage settings (``budget``, ``lambda2``, ``coactivation``: the
    ablations); ``tag`` names a source other than the dense model (the reverse order)."""
    from dataclasses import replace

    from .expert_methods import EXPERT_PRUNING_METHODS, ExpertPruningSettings, prune_checkpoint_experts

    set_threads(LIGHT_THREADS)
    opts = dict(opts or {})
    budget = EXPERT_PRUNING_METHODS.get(method).budget(opts.pop("budget", cfg.budget))
    settings = replace(ExpertPruningSettings.of(cfg), **opts)
    suffix = "".join(f"-{k}={v}" for k, v in sorted(opts.items()))
    out = _seed_dir("experts", seed) / f"{tag}{method}-{budget}-k{keep_per_layer}{suffix}"
    key = cache_key(step="experts", config=dict(method=method, keep=keep_per_layer, budget=budget, **asdict(settings)),
                    inputs=[model_dir, profile_dir, calib_dir])
    with cached_step(out, key) as tmp:
        if tmp is not None:
            prune_checkpoint_experts(model_dir, tmp, method, keep_per_layer, budget=budget, profile_dir=profile_dir,
                                     calib_dir=calib_dir, settings=settings)
    return out


@step("stun.unstructured", run_name="unstructured[{name}: {method}@{sparsity:.3g} seed {seed}]")
def prune_unstructured(cfg: StunConfig, name: str, method: str, sparsity: float, src_dir: Path, calib_dir: Path,
                       use_gpu: bool = False, seed: int = 0) -> Path:
    """Wanda / OWL / magnitude at ``sparsity`` of the weights in scope (``cfg.scope``), streamed
    layer by layer from ``src_dir``'s shards into a new checkpoint."""
    from .calibration import load_calibration
    from .streaming import prune_checkpoint_streaming, pruning_steps

    set_threads(LIGHT_THREADS)
    params = dict(method=method, sparsity=round(sparsity, 6), nm=cfg.nm, owl_M=cfg.owl_M, owl_lambda=cfg.owl_lambda,
                  scope=cfg.scope)
    out = _seed_dir("unstructured", seed) / name
    with cached_step(out, cache_key(step="unstructured", config=params, inputs=[src_dir, calib_dir])) as tmp:
        if tmp is not None:
            with Progress(f"{method} {name}", pruning_steps(src_dir, method)) as p:
                record = prune_checkpoint_streaming(
                    Path(src_dir), tmp / "model", load_calibration(calib_dir), method=method, sparsity=sparsity,
                    nm=cfg.nm_tuple, owl_M=cfg.owl_M, owl_lambda=cfg.owl_lambda, device=_device(use_gpu),
                    progress=p.callback, scope=cfg.scope,
                )
            write_json(tmp / "report.json", record)
    return out / "model"


@step("stun.evaluate", run_name="evaluate[{name} seed {seed}]")
def evaluate(cfg: StunConfig, name: str, model_dir: Path, corpus_dir: Path, meta: dict[str, Any],
             use_gpu: bool = False, seed: int = 0) -> Path:
    """Test-split perplexity + exact match (+ validation split for export candidates) and the
    remaining weights' kurtosis of one variant → eval/seed<seed>/<name>/eval.json."""
    from .evaluate import evaluate_checkpoint

    set_threads(LIGHT_THREADS)
    validation = bool(meta.get("validate"))
    params = dict(tokens=cfg.eval_ppl_tokens, problems=cfg.eval_problems, val_problems=cfg.val_problems,
                  val_tokens=cfg.val_ppl_tokens if validation else 0, seq_len=cfg.zoo.seq_len, meta=meta)
    out = _seed_dir("eval", seed) / name
    with cached_step(out, cache_key(step="evaluate", config=params, inputs=[model_dir, corpus_dir])) as tmp:
        if tmp is not None:
            row = evaluate_checkpoint(model_dir, corpus_dir, device=_device(use_gpu), seq_len=cfg.zoo.seq_len,
                                      max_ppl_tokens=cfg.eval_ppl_tokens, n_problems=cfg.eval_problems,
                                      val_problems=cfg.val_problems, val_ppl_tokens=cfg.val_ppl_tokens,
                                      validation=validation)
            write_json(tmp / "eval.json", {"name": name, "seed": seed, "model_dir": str(model_dir), **meta, **row})
    return out / "eval.json"


@step("stun.report", run_name="report")
def report(cfg: StunConfig, eval_files: list[Path], model_dirs: list[Path]) -> Path:
    """metrics.json (DVC metrics), one CSV per curve (DVC plots), a PNG, markdown tables."""
    from .report import write_report

    out = step_dir(FLOW, "report")
    zoo_files = [Path(d) / "zoo_metrics.json" for d in model_dirs if (Path(d) / "zoo_metrics.json").is_file()]
    with cached_step(out, cache_key(step="report", config=cfg, inputs=[*eval_files, *zoo_files])) as tmp:
        if tmp is not None:
            write_report([read_json(p) for p in eval_files], tmp, cfg, zoo=[read_json(p) for p in zoo_files])
            if (out / ".gitignore").is_file():  # DVC's, tracked by git: the new folder keeps it
                shutil.copy2(out / ".gitignore", tmp / ".gitignore")
    return out


@step("stun.export", run_name="export")
def export_checkpoint(cfg: StunConfig, candidates: list[Path], model_dirs: dict[str, Path]) -> Path:
    """The best STUN variant at export_sparsity by the *validation* split (``candidates``: its
    eval.json files; ``model_dirs``: name → checkpoint) → data/stun/pruned/ with a model card."""
    from .checkpoint import copy_checkpoint
    from .report import model_card
    from .sweep import pick_export

    rows = [read_json(p) for p in candidates]
    best = pick_export(rows)
    src = model_dirs[best["name"]]
    out = step_dir(FLOW, "pruned")
    with cached_step(out, cache_key(step="export", config=cfg, inputs=[src, *candidates])) as tmp:
        if tmp is not None:
            copy_checkpoint(src, tmp)
            (tmp / "README.md").write_text(model_card(cfg, best, rows))
    return out
