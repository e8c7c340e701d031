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


@step("stun.model", run_name="model[{cfg.model}]")
def prepare_model(cfg: StunConfig, corpus_dir: Path, use_gpu: bool = False) -> Path:
    """The dense model: the user's checkpoint as given (checked again: it may have changed since
    the config was validated), or the zoo model trained here, resumable after a kill."""
    if cfg.model != "zoo":
        from .adapters import MoEModelError, check_model_folder

        try:
            check_model_folder(cfg.model)
        except (FileNotFoundError, MoEModelError) as e:
            raise ConfigError(f"stun.{e}") from None
        return Path(cfg.model)
    from .zoo import train_zoo

    set_threads(cfg.zoo.threads)
    out = step_dir(FLOW, "zoo")
    key = cache_key(step="zoo", config=cfg.zoo, inputs=[corpus_dir])
    # Training checkpoints outlive a killed run here (another key's are cleared by the claim);
    # they are scratch once the model is saved.
    scratch = ResumableStep(step_dir(FLOW, "zoo_train"), key)
    with cached_step(out, key) as tmp:
        if tmp is not None:
            scratch.claim()
            with Progress("train zoo MoE", cfg.zoo.steps) as p:
                metrics = train_zoo(cfg.zoo, corpus_dir, tmp, progress=p.callback, device=_device(use_gpu),
                                    checkpoint_dir=scratch.out / "checkpoints")
            write_json(tmp / "zoo_metrics.json", metrics)
            step_logger().info("zoo model: held-out ppl %.2f, exact match %.3f (%d steps, %.0f s)",
                               metrics["dense_ppl"], metrics["dense_exact_match"], cfg.zoo.steps,
                               metrics["train_seconds"])
    shutil.rmtree(scratch.out, ignore_errors=True)
    return out


@step("stun.calibration", run_name="calibration[{cfg.calib_samples}x{cfg.calib_seq_len}]")
def calibration(cfg: StunConfig, model_dir: Path, corpus_dir: Path) -> Path:
    """Calibration sequences from the training mix, tokenised by the model's tokenizer."""
    from .calibration import build_calibration

    params = dict(n=cfg.calib_samples, seq_len=cfg.calib_seq_len, seed=cfg.seed,
                  problem_share=cfg.zoo.problem_fraction)
    out = step_dir(FLOW, "calibration")
    with cached_step(out, cache_key(step="calibration", config=params, inputs=[model_dir, corpus_dir])) as tmp:
        if tmp is not None:
            build_calibration(model_dir, corpus_dir, tmp, **params)
    return out


@step("stun.profile", run_name="profile[{workers} workers]")
def profile_experts(cfg: StunConfig, model_dir: Path, calib_dir: Path, workers: int, threads: int = 1,
                    use_gpu: bool = False) -> Path:
    """One calibration sweep over a pool of profiler actors → router co-activation counts per layer."""
    from workers.profiler import profile_calibration

    from .calibration import load_calibration
    from .profiling import PROFILE_BATCH

    out = step_dir(FLOW, "profile")
    key = cache_key(step="profile", config={"pair_k": 2, "batch_size": PROFILE_BATCH}, inputs=[model_dir, calib_dir])
    # Finished shards outlive a crash here, each recorded with its files' sizes and hashes.
    shards = ResumableStep(step_dir(FLOW, "profile_shards"), key)
    with cached_step(out, key) as tmp:
        if tmp is not None:
            profile, stats = profile_calibration(model_dir, load_calibration(calib_dir), shards.claim(), workers=workers,
                                                 num_gpus=1 if use_gpu else 0, threads=threads, pair_k=2)
            profile.save(tmp / "profile")
            write_json(tmp / "profile.json", stats)
    shutil.rmtree(shards.out, ignore_errors=True)
    return out


@step("stun.experts", run_name="experts[{method}@k{keep_per_layer}]")
def prune_experts(cfg: StunConfig, method: str, keep_per_layer: int, model_dir: Path, profile_dir: Path,
                  calib_dir: Path) -> Path:
    """Expert pruning to ``keep_per_layer`` experts (the mean over layers for a global budget)
    by a method of ``EXPERT_PRUNING_METHODS``; writes a checkpoint + plan.json."""
    from .expert_methods import EXPERT_PRUNING_METHODS, ExpertPruningSettings, prune_checkpoint_experts

    set_threads(LIGHT_THREADS)
    budget = EXPERT_PRUNING_METHODS.get(method).budget(cfg.budget)
    settings = ExpertPruningSettings.of(cfg)
    out = step_dir(FLOW, "experts") / f"{method}-{budget}-k{keep_per_layer}"
    key = cache_key(step="experts", config=dict(method=method, keep=keep_per_layer, budget=budget, **asdict(settings)),
                    inputs=[model_dir, profile_dir, calib_dir])
    with cached_step(out, key) as tmp:
        if tmp is not None:
            prune_checkpoint_experts(model_dir, tmp, method, keep_per_layer, budget=budget, profile_dir=profile_dir,
                                     calib_dir=calib_dir, settings=settings)
    return out


@step("stun.unstructured", run_name="unstructured[{name}: {method}@{sparsity:.3g}]")
def prune_unstructured(cfg: StunConfig, name: str, method: str, sparsity: float, src_dir: Path, calib_dir: Path,
                       use_gpu: bool = False) -> Path:
    """Wanda / OWL / magnitude at ``sparsity`` of the remaining expert weights, streamed
    layer by layer from ``src_dir``'s shards into a new checkpoint."""
    from .calibration import load_calibration
    from .streaming import prune_checkpoint_streaming, pruning_steps

    set_threads(LIGHT_THREADS)
    params = dict(method=method, sparsity=round(sparsity, 6), nm=cfg.nm, owl_M=cfg.owl_M, owl_lambda=cfg.owl_lambda)
    out = step_dir(FLOW, "unstructured") / name
    with cached_step(out, cache_key(step="unstructured", config=params, inputs=[src_dir, calib_dir])) as tmp:
        if tmp is not None:
            with Progress(f"{method} {name}", pruning_steps(src_dir, method)) as p:
                record = prune_checkpoint_streaming(
                    Path(src_dir), tmp / "model", load_calibration(calib_dir), method=method, sparsity=sparsity,
                    nm=cfg.nm_tuple, owl_M=cfg.owl_M, owl_lambda=cfg.owl_lambda, device=_device(use_gpu),
                    progress=p.callback,
                )
            write_json(tmp / "report.json", record)
    return out / "model"


@step("stun.evaluate", run_name="evaluate[{name}]")
def evaluate(cfg: StunConfig, name: str, model_dir: Path, corpus_dir: Path, meta: dict[str, Any],
             use_gpu: bool = False) -> Path:
    """Held-out perplexity + generative exact match of one model variant → eval/<name>/eval.json."""
    from .evaluate import evaluate_checkpoint

    set_threads(LIGHT_THREADS)
    params = dict(tokens=cfg.eval_ppl_tokens, problems=cfg.eval_problems, seq_len=cfg.zoo.seq_len, meta=meta)
    out = step_dir(FLOW, "eval") / name
    with cached_step(out, cache_key(step="evaluate", config=params, inputs=[model_dir, corpus_dir])) as tmp:
        if tmp is not None:
            row = evaluate_checkpoint(model_dir, corpus_dir, device=_device(use_gpu), seq_len=cfg.zoo.seq_len,
                                      max_ppl_tokens=cfg.eval_ppl_tokens, n_problems=cfg.eval_problems)
            write_json(tmp / "eval.json", {"name": name, **meta, **row})
    return out / "eval.json"


@step("stun.report", run_name="report")
def report(cfg: StunConfig, eval_files: list[Path], zoo_dir: Path) -> Path:
    """metrics.json (DVC metrics), one CSV per curve (DVC plots), a PNG, a markdown table."""
    from .report import write_report

    out = step_dir(FLOW, "report")
    zoo_metrics = Path(zoo_dir) / "zoo_metrics.json"
    inputs = [*eval_files, *([zoo_metrics] if zoo_metrics.is_file() else [])]
    with cached_step(out, cache_key(step="report", config={}, inputs=inputs)) as tmp:
        if tmp is not None:
            write_report([read_json(p) for p in eval_files], tmp, cfg,
                         zoo=read_json(zoo_metrics) if zoo_metrics.is_file() else None)
            if (out / ".gitignore").is_file():  # DVC's, tracked by git: the new folder keeps it
                shutil.copy2(out / ".gitignore", tmp / ".gitignore")
    return out


@step("stun.export", run_name="export")
def export_checkpoint(cfg: StunConfig, src_model_dir: Path) -> Path:
    """Copy the chosen pruned checkpoint to data/stun/pruned/ (loads with from_pretrained)."""
    from .checkpoint import copy_checkpoint

    out = step_dir(FLOW, "pruned")
    with cached_step(out, cache_key(step="export", config={}, inputs=[src_model_dir])) as tmp:
        if tmp is not None:
            copy_checkpoint(src_model_dir, tmp)
    return out
