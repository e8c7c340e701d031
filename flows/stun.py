"""The ``stun`` flow: STUN (structured-then-unstructured MoE pruning) vs its baselines, as a runbook."""
from pathlib import Path

from flows.platform.scaffold import FlowReport, RunResources, paperline_flow
from tasks.stun import steps
from tasks.stun.config import StunConfig
from tasks.stun.sweep import model_variants


@paperline_flow("stun", StunConfig)
def stun(cfg: StunConfig, res: RunResources) -> FlowReport:
    """STUN pruning of a Mixture-of-Experts LLM, against its baselines, over seeds, in one run.

    In: a MoE checkpoint (``model=/path``) or the embedded zoo model trained here (one per seed)
    on Shakespeare + arithmetic word problems. Chain, per seed: dense model → calibration set →
    expert-behaviour profiling (a pool of Ray actors) → expert pruning (STUN clustering; NAEE,
    frequency drop) → unstructured pruning (Wanda/OWL, streamed layer by layer) → evaluation of
    every variant; then the report (mean ± std over seeds) and the pruned checkpoint chosen on
    the validation split. Out: ``data/stun/`` (DVC outs), ``report/metrics.json`` (DVC metrics),
    ``report/curves/*.csv`` (DVC plots), ``report/pruning_curves.png``, ``pruned/`` (+ model card).

    Run: ``paperline run stun [--set seeds=[0]]`` · ``paperline run stun --params
    tasks/stun/presets/paper.yaml`` · ``dvc repro stun`` · the ``stun`` deployment.
    """
    with res.steps(cpus=1):
        corpus = steps.build_corpus.submit(cfg).result()
        data = steps.user_data.submit(cfg, corpus).result()  # the zoo corpus, or the user's files
    evals, model_dirs, candidates, chosen_from = [], [], [], {}
    for seed in cfg.seeds:
        with res.steps(cpus=cfg.zoo.threads, gpu=True):
            model = steps.prepare_model.submit(cfg, corpus, seed, use_gpu=res.use_gpu).result()
        with res.steps(cpus=1):
            calib = steps.calibration.submit(cfg, model, data, seed).result()
        with res.steps(cpus=0):  # only hands out shards: its profiler actors hold the CPUs/GPUs
            profile = steps.profile_experts.submit(cfg, model, calib, res.workers, res.threads_per_worker,
                                                   use_gpu=res.use_gpu, seed=seed).result()
        model_dirs.append(model)
        experts, dense_pruned = {}, {}  # shared stages, each submitted once
        with res.steps(cpus=1, gpu=True):
            for v in model_variants(cfg, model):
                src, tag = model, ""
                if v.unstructured and (v.order == "unstructured_first" or not v.expert_method):
                    key = (v.unstructured, round(v.rate, 6))  # unstructured pruning of the dense model
                    if key not in dense_pruned:
                        dense_pruned[key] = steps.prune_unstructured.submit(cfg, v.name, v.unstructured, v.rate, model,
                                                                            calib, use_gpu=res.use_gpu, seed=seed)
                    src = dense_pruned[key]
                    tag = f"after-{v.unstructured}-u{v.rate:.4f}-" if v.expert_method else ""
                if v.expert_method:  # experts of the dense model, or of the pruned one (reverse order)
                    k = (tag, v.expert_method, v.keep, v.expert_opts)
                    if k not in experts:
                        experts[k] = steps.prune_experts.submit(cfg, v.expert_method, v.keep, src, profile, calib,
                                                                seed=seed, tag=tag, opts=dict(v.expert_opts))
                    src = experts[k]
                if v.unstructured and v.expert_method and v.order == "experts_first":
                    src = steps.prune_unstructured.submit(cfg, v.name, v.unstructured, v.rate, src, calib,
                                                          use_gpu=res.use_gpu, seed=seed)
                ev = steps.evaluate.submit(cfg, v.name, src, data, v.meta(), use_gpu=res.use_gpu, seed=seed)
                evals.append(ev)
                if v.validate and seed == cfg.seeds[0]:
                    candidates.append(ev)
                    chosen_from[v.name] = src
    eval_files = [e.result() for e in evals]
    with res.steps(cpus=1):
        report_dir = steps.report.submit(cfg, eval_files, model_dirs).result()
        pruned_dir = steps.export_checkpoint.submit(cfg, [c.result() for c in candidates],
                                                    {n: Path(s.result()) for n, s in chosen_from.items()}).result()
    return FlowReport(table=(Path(report_dir) / "table.md").read_text(), report=report_dir,
                      outputs={"pruned": pruned_dir},
                      extra_md=f"Exported checkpoint (chosen on the validation split): `{pruned_dir}` "
                               f"— see its README.md")
