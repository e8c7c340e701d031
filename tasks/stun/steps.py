"""The ``stun`` flow's Prefect steps: thin, typed, path-in / path-out.

Every step owns ``data/stun/<step>/...``, is skipped when that folder already holds the same
(inputs, config, code) key, and writes through a temp folder renamed into place — so a
crashed run redoes only what is missing. The maths lives in the modules beside this one.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from tasks.common.artifacts import cache_key, cached_step, read_json, step_dir, write_json
from tasks.common.devices import compute_dtype, pick_device
from tasks.common.progress import Progress

from .config import StunConfig

FLOW = "stun"
STEP_OPTS: dict[str, Any] = dict(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2, persist_result=False)
CODE_COMMON = ["tasks/common", "tasks/stun/adapters.py", "tasks/stun/checkpoint.py"]


def _code(*files: str) -> list[str]:
    return CODE_COMMON + [f"tasks/stun/{f}" for f in files]


def _threads(n: int) -> None:
    torch.set_num_threads(max(1, n))


def _logger():
    try:
        return get_run_logger()
    except Exception:  # called outside Prefect (tests, benches)
        import logging

        return logging.getLogger("paperline.stun")


# ------------------------------------------------------------------------------- data + model


@task(name="stun.corpus", **STEP_OPTS)
def build_corpus(cfg: StunConfig) -> Path:
    """Shakespeare (train / held-out works) + generated arithmetic problems, as JSONL."""
    from .corpus import build_corpus as _build

    z = cfg.zoo
    params = dict(seed=z.seed, heldout_works=z.heldout_works, n_train_problems=z.n_train_problems,
                  n_heldout_problems=z.n_heldout_problems)
    out = step_dir(FLOW, "corpus")
    key = cache_key(step="corpus", config=params, code=_code("corpus.py"))
    with cached_step(out, key) as tmp:
        if tmp is not None:
            counts = _build(tmp, **params)
            write_json(tmp / "counts.json", counts)
    return out


@task(name="stun.model", **STEP_OPTS)
def prepare_model(cfg: StunConfig, corpus_dir: Path, threads: int = 1) -> Path:
    """The dense model: the user's checkpoint as given, or the zoo model trained here."""
    from .adapters import read_config

    if cfg.model != "zoo":
        read_config(cfg.model)  # fails early, naming the path, for a missing/non-MoE model
        return Path(cfg.model)
    from .zoo import train_zoo

    _threads(threads)
    out = step_dir(FLOW, "zoo")
    key = cache_key(step="zoo", config=cfg.zoo, inputs=[corpus_dir],
                    code=_code("zoo.py", "tokenizer.py", "evaluate.py", "corpus.py"))
    with cached_step(out, key) as tmp:
        if tmp is not None:
            with Progress("train zoo MoE", cfg.zoo.steps) as p:
                metrics = train_zoo(cfg.zoo, corpus_dir, tmp, progress=p.callback)
            write_json(tmp / "zoo_metrics.json", metrics)
            _logger().info("zoo model: %s", metrics)
    return out


@task(name="stun.calibration", **STEP_OPTS)
def calibration(cfg: StunConfig, model_dir: Path, corpus_dir: Path) -> Path:
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from .calibration import calibration_ids
    from .corpus import format_problem, load_corpus

    out = step_dir(FLOW, "calibration")
    params = dict(n=cfg.calib_samples, seq_len=cfg.calib_seq_len, seed=cfg.seed)
    key = cache_key(step="calibration", config=params, inputs=[model_dir, corpus_dir], code=_code("calibration.py", "corpus.py"))
    with cached_step(out, key) as tmp:
        if tmp is not None:
            tok = AutoTokenizer.from_pretrained(model_dir)
            corpus = load_corpus(corpus_dir)
            ids = calibration_ids(tok, corpus.train_text, [format_problem(p) for p in corpus.train_problems],
                                  problem_share=cfg.zoo.problem_fraction, **params)
            save_file({"input_ids": ids.contiguous()}, str(tmp / "calib.safetensors"))
    return out


def load_calibration(calib_dir: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(Path(calib_dir) / "calib.safetensors"))["input_ids"]


# ------------------------------------------------------------------------------- profiling


@task(name="stun.profile", **STEP_OPTS)
def profile_experts(cfg: StunConfig, model_dir: Path, calib_dir: Path, num_gpus: int = 0) -> Path:
    """One calibration sweep over Ray actors → router co-activation counts per layer."""
    import ray

    from workers.profiler import RouterProfiler

    from .profiling import RouterProfile

    out = step_dir(FLOW, "profile")
    key = cache_key(step="profile", config={"pair_k": 2}, inputs=[model_dir, calib_dir], code=_code("profiling.py") + ["workers/profiler.py"])
    ids = load_calibration(calib_dir)
    n_workers = num_gpus if (cfg.profile_workers == 0 and num_gpus) else max(1, cfg.profile_workers or 1)
    shards_dir = step_dir(FLOW, "profile_shards") / key  # survives a crash: finished shards are reused
    shards_dir.mkdir(parents=True, exist_ok=True)
    with cached_step(out, key) as tmp:
        if tmp is not None:
            chunks = [c for c in torch.chunk(ids, n_workers) if len(c)]
            gpu_each = 1 if num_gpus else 0
            device = "cuda" if gpu_each else "cpu"
            actors = [RouterProfiler.options(num_cpus=1, num_gpus=gpu_each).remote(str(model_dir), device, 1)
                      for _ in chunks]
            t0 = time.perf_counter()
            refs = [a.profile_shard.remote(c, 8, 2, str(shards_dir / f"shard-{i:03d}"))
                    for i, (a, c) in enumerate(zip(actors, chunks))]
            paths = ray.get(refs)
            for a in actors:
                ray.kill(a)
            total = RouterProfile.load(paths[0])
            for p in paths[1:]:
                total = total.merge(RouterProfile.load(p))
            total.save(tmp / "profile")
            write_json(tmp / "profile.json", {"workers": len(chunks), "forward_passes": total.forward_passes,
                                              "tokens": total.tokens, "seconds": time.perf_counter() - t0})
    return out


# ------------------------------------------------------------------------------- structured stage


@task(name="stun.experts", **STEP_OPTS)
def prune_experts(cfg: StunConfig, method: str, keep_per_layer: int, model_dir: Path, profile_dir: Path,
                  calib_dir: Path, threads: int = 1) -> Path:
    """Expert pruning to ``keep_per_layer`` experts (mean over layers for a global budget):
    STUN clustering, NAEE enumeration or frequency drop. Writes a checkpoint + plan.json."""
    from .checkpoint import load_checkpoint, save_checkpoint

    _threads(threads)
    budget = cfg.budget if method == "stun" else "uniform"
    params = dict(method=method, keep=keep_per_layer, budget=budget, lambda1=cfg.lambda1, lambda2=cfg.lambda2,
                  reconstruction=cfg.reconstruction, kappa=cfg.kappa, naee_max=cfg.naee_max_combinations)
    name = f"{method}-{budget}-k{keep_per_layer}"
    out = step_dir(FLOW, "experts") / name
    key = cache_key(step="experts", config=params, inputs=[model_dir, profile_dir, calib_dir],
                    code=_code("expert_pruning.py", "baselines.py", "profiling.py"))
    with cached_step(out, key) as tmp:
        if tmp is not None:
            t0 = time.perf_counter()
            model, tok = load_checkpoint(model_dir)
            info = _plan_and_apply(cfg, method, budget, keep_per_layer, model, profile_dir, calib_dir)
            save_checkpoint(model, tmp, tok)
            write_json(tmp / "plan.json", {**info, "seconds": time.perf_counter() - t0, "params": params})
    return out


def _plan_and_apply(cfg: StunConfig, method: str, budget: str, keep: int, model: Any, profile_dir: Path,
                    calib_dir: Path) -> dict[str, Any]:
    from . import baselines, expert_pruning
    from .adapters import adapter_for
    from .profiling import RouterProfile

    ad = adapter_for(model)
    n = ad.num_experts(model.config)
    if keep > n:
        raise ValueError(f"keep_experts={keep} is larger than the model's {n} experts per layer")
    if keep < ad.top_k(model.config):
        raise ValueError(f"keep_experts={keep} is below the model's top-k={ad.top_k(model.config)}")
    profile = RouterProfile.load(Path(profile_dir) / "profile")
    if method == "stun":
        n_layers = len(ad.moe_blocks(model))
        budget_kw = {"keep_per_layer": keep} if budget == "uniform" else {"expert_budget": keep * n_layers}
        plan = expert_pruning.plan_expert_pruning(
            model, **budget_kw, profile=profile, lambda1=cfg.lambda1, lambda2=cfg.lambda2,
            reconstruction=cfg.reconstruction, kappa=cfg.kappa, merge_max_clusters=cfg.kappa,
        )
        expert_pruning.apply_plan(model, plan)
        return {"plan": expert_pruning.plan_to_json(plan), "forward_passes": profile.forward_passes}
    if method == "frequency":
        plan = baselines.frequency_drop_plan(profile, keep)
        expert_pruning.apply_plan(model, plan)
        return {"plan": expert_pruning.plan_to_json(plan), "forward_passes": profile.forward_passes}
    if method == "naee":
        ids = load_calibration(calib_dir)
        batches = [ids[i : i + 8] for i in range(0, len(ids), 8)]
        result = baselines.naee_prune(model, batches, keep, cfg.naee_max_combinations)
        return {"plan": expert_pruning.plan_to_json(result.plan), "losses": result.losses,
                "block_evaluations": result.evaluations, "forward_passes": result.forward_passes}
    raise ValueError(f"unknown expert pruning method {method!r}")


# ------------------------------------------------------------------------------- unstructured stage


@task(name="stun.unstructured", **STEP_OPTS)
def prune_unstructured(cfg: StunConfig, name: str, method: str, sparsity: float, src_dir: Path, calib_dir: Path,
                       threads: int = 1, use_gpu: bool = False) -> Path:
    """Wanda / OWL / magnitude at ``sparsity`` of the remaining expert weights, streamed
    layer by layer from ``src_dir``'s shards into a new checkpoint."""
    from .streaming import prune_checkpoint_streaming

    _threads(threads)
    params = dict(method=method, sparsity=round(sparsity, 6), nm=cfg.nm, owl_M=cfg.owl_M, owl_lambda=cfg.owl_lambda)
    out = step_dir(FLOW, "unstructured") / name
    key = cache_key(step="unstructured", config=params, inputs=[src_dir, calib_dir], code=_code("unstructured.py", "streaming.py"))
    with cached_step(out, key) as tmp:
        if tmp is not None:
            ids = load_calibration(calib_dir)
            device = "cuda" if use_gpu else "cpu"
            ckpt = tmp / "model"
            with Progress(f"{method} {name}", 1) as p:
                report = prune_checkpoint_streaming(
                    Path(src_dir), ckpt, ids, method=method, sparsity=sparsity, nm=cfg.nm_tuple,
                    owl_M=cfg.owl_M, owl_lambda=cfg.owl_lambda, device=device, progress=p.callback,
                )
            write_json(tmp / "report.json", report)
    return out / "model"


# ------------------------------------------------------------------------------- evaluation


@task(name="stun.evaluate", **STEP_OPTS)
def evaluate(cfg: StunConfig, name: str, model_dir: Path, corpus_dir: Path, meta: dict[str, Any],
             threads: int = 1, use_gpu: bool = False) -> Path:
    """Held-out perplexity + generative exact match of one model variant → eval/<name>.json."""
    from .accounting import expert_weight_counts
    from .checkpoint import load_checkpoint
    from .corpus import load_corpus
    from .evaluate import evaluate_model

    _threads(threads)
    params = dict(tokens=cfg.eval_ppl_tokens, problems=cfg.eval_problems, seq_len=cfg.zoo.seq_len)
    out = step_dir(FLOW, "eval") / name
    key = cache_key(step="evaluate", config=params, inputs=[model_dir, corpus_dir], code=_code("evaluate.py", "accounting.py"))
    with cached_step(out, key) as tmp:
        if tmp is not None:
            device = pick_device("cuda" if use_gpu else "cpu")
            t0 = time.perf_counter()
            model, tok = load_checkpoint(model_dir, device=device, dtype=compute_dtype(device))
            res = evaluate_model(model, tok, load_corpus(corpus_dir), seq_len=cfg.zoo.seq_len,
                                 max_ppl_tokens=cfg.eval_ppl_tokens, n_problems=cfg.eval_problems)
            counts = expert_weight_counts(model)
            write_json(tmp / "eval.json", {
                "name": name, **meta, "ppl": float(res["ppl"]), "exact_match": float(res["exact_match"]),
                "expert_weights_total": sum(c["total"] for c in counts),
                "expert_weights_nonzero": sum(c["nonzero"] for c in counts),
                "experts_per_layer": [c["experts"] for c in counts],
                "eval_seconds": time.perf_counter() - t0,
                "examples": res.get("examples", [])[:3],
            })
    return out / "eval.json"


# ------------------------------------------------------------------------------- report + export


@task(name="stun.report", **STEP_OPTS)
def report(cfg: StunConfig, eval_files: list[Path], zoo_dir: Path) -> Path:
    """metrics.json (DVC metrics), one CSV per curve (DVC plots), a PNG, a markdown table."""
    from .report import write_report

    out = step_dir(FLOW, "report")
    rows = [read_json(p) for p in eval_files]
    zoo_metrics = Path(zoo_dir) / "zoo_metrics.json"
    write_report(rows, out, cfg, zoo=read_json(zoo_metrics) if zoo_metrics.is_file() else None)
    return out


@task(name="stun.export", **STEP_OPTS)
def export_checkpoint(cfg: StunConfig, src_model_dir: Path) -> Path:
    """Copy the chosen pruned checkpoint to data/stun/pruned/ (loads with from_pretrained)."""
    import shutil

    from tasks.common.artifacts import atomic_path

    out = step_dir(FLOW, "pruned")
    key = cache_key(step="export", config={}, inputs=[src_model_dir])
    marker = out / ".source.json"
    if marker.is_file() and read_json(marker).get("key") == key:
        return out
    with atomic_path(out, is_dir=True) as tmp:
        for f in Path(src_model_dir).iterdir():
            if f.is_file() and not f.name.startswith("."):
                shutil.copy2(f, tmp / f.name)
        write_json(tmp / ".source.json", {"key": key, "source": str(src_model_dir)})
    return out
