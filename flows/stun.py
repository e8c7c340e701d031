"""The ``stun`` flow: STUN (structured-then-unstructured MoE pruning) vs its baselines, as a runbook."""
from pathlib import Path

from flows.platform.scaffold import FlowReport, RunResources, paperline_flow
from tasks.stun import steps
from tasks.stun.config import StunConfig
from tasks.stun.sweep import export_variant, model_variants


@paperline_flow("stun", StunConfig)
def stun(cfg: StunConfig, res: RunResources) -> FlowReport:
    """STUN pruning of a Mixture-of-Experts LLM, against its baselines, in one run.

    In: a MoE checkpoint (``model=/path``) or the embedded zoo model trained here on Shakespeare +
    arithmetic word problems. Chain: corpus → dense model → calibration set → expert-behaviour
    profiling (a pool of Ray actors) → expert pruning (STUN clustering; NAEE, frequency drop) →
    unstructured pruning (Wanda/OWL, streamed layer by layer) → evaluation of every variant →
    report → pruned checkpoint. Out: ``data/stun/`` (DVC outs), ``report/metrics.json`` (DVC
    metrics), ``report/curves/*.csv`` (DVC plots), ``report/pruning_curves.png``, ``pruned/``.

    Run: ``paperline run stun [--set sparsities=[0.5]]`` · ``dvc repro stun`` ·
    ``dvc exp run -S stun.expert_fraction=0.375`` · the ``stun`` deployment in the dashboard.
    """
    with res.steps(cpus=1):
        corpus = steps.build_corpus.submit(cfg).result()
    with res.steps(cpus=cfg.zoo.threads, gpu=True):
        model = steps.prepare_model.submit(cfg, corpus, use_gpu=res.use_gpu).result()
    with res.steps(cpus=1):
        calib = steps.calibration.submit(cfg, model, corpus).result()
    with res.steps(cpus=0):  # only hands out shards: its profiler actors hold the CPUs/GPUs
        profile = steps.profile_experts.submit(cfg, model, calib, res.workers, res.threads_per_worker,
                                               use_gpu=res.use_gpu).result()

    variants = model_variants(cfg, model)
    experts, pruned, evals = {}, {}, []
    with res.steps(cpus=1, gpu=True):
        for v in variants:
            src = model
            if v.expert_method:
                if (v.expert_method, v.keep) not in experts:
                    experts[v.expert_method, v.keep] = steps.prune_experts.submit(cfg, v.expert_method, v.keep, model,
                                                                                  profile, calib)
                src = experts[v.expert_method, v.keep]
            if v.unstructured:
                src = steps.prune_unstructured.submit(cfg, v.name, v.unstructured, v.rate, src, calib,
                                                      use_gpu=res.use_gpu)
            pruned[v.name] = src
            evals.append(steps.evaluate.submit(cfg, v.name, src, corpus, v.meta(), use_gpu=res.use_gpu))
        eval_files = [e.result() for e in evals]
    export = export_variant(cfg, variants)
    with res.steps(cpus=1):
        report_dir = steps.report.submit(cfg, eval_files, model).result()
        pruned_dir = steps.export_checkpoint.submit(cfg, pruned[export.name]).result()
    return FlowReport(table=(Path(report_dir) / "table.md").read_text(), report=report_dir,
                      outputs={"pruned": pruned_dir}, extra_md=f"Exported checkpoint: `{pruned_dir}` ({export.name})")
