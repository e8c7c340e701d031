"""``stun``: STUN pruning of a Mixture-of-Experts LLM, against its baselines, in one run.

In: a MoE checkpoint (``model=/path``) or the embedded zoo model trained here on Shakespeare +
arithmetic word problems. Chain: corpus → dense model → calibration set → expert-behaviour
profiling (Ray actors) → expert pruning (STUN clustering; NAEE, frequency drop) →
unstructured pruning (Wanda/OWL, streamed layer by layer) → evaluation of every variant →
report → pruned checkpoint. Out: ``data/stun/`` (DVC outs), ``data/stun/report/metrics.json``
(DVC metrics), ``data/stun/report/curves/*.csv`` (DVC plots), ``pruning_curves.png``.

Run: ``paperline run stun [--set sparsities=[0.5]]`` · ``dvc repro stun`` ·
``dvc exp run -S stun.expert_fraction=0.375`` · the ``stun`` deployment in the dashboard.
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from tasks.common.config import load_config
from tasks.common.locks import run_lock
from tasks.common.runner import cluster_resources, make_task_runner, step_options
from tasks.common.versioning import publish_report, record_outputs
from tasks.stun import steps
from tasks.stun.adapters import adapter_for, read_config
from tasks.stun.config import StunConfig
from tasks.stun.sweep import export_variant, sweep_variants

PURPOSE = "STUN: expert-then-unstructured pruning of MoE LLMs vs Wanda/OWL/NAEE/frequency baselines"


# A step lost with its process (a killed Ray worker, a removed node) fails the run; one flow
# retry redoes only what the step cache and the shard files do not already hold.
@flow(name="stun", task_runner=make_task_runner(), log_prints=True, retries=1, retry_delay_seconds=5)
def stun(config: StunConfig = load_config("stun", StunConfig)) -> dict:
    with run_lock("stun"):
        cfg = config
        res = cluster_resources()
        cpus = int(cfg.cpus_per_step or res.get("CPU", 1))
        gpus = 0 if cfg.device == "cpu" else int(res.get("GPU", 0))
        heavy = dict(num_cpus=min(cpus, res.get("CPU", 1)), num_gpus=1 if gpus else 0)
        light = dict(num_cpus=1, num_gpus=1 if gpus else 0)

        with step_options(num_cpus=1):
            corpus = steps.build_corpus.submit(cfg).result()
        with step_options(**heavy):
            model = steps.prepare_model.submit(cfg, corpus, threads=heavy["num_cpus"]).result()
        with step_options(num_cpus=1):
            calib = steps.calibration.submit(cfg, model, corpus).result()
        # The profiling step only orchestrates its actors, which hold the CPUs/GPUs themselves.
        with step_options(num_cpus=0):
            profile = steps.profile_experts.submit(cfg, model, calib, num_gpus=gpus).result()

        model_cfg = read_config(model)
        ad = adapter_for(model_cfg)
        variants = sweep_variants(cfg, ad.num_experts(model_cfg), ad.top_k(model_cfg))

        expert_jobs, pruned, evals = {}, {}, []
        with step_options(**light):
            for v in variants:
                src = model
                if v.expert_method:
                    k = (v.expert_method, v.keep)
                    if k not in expert_jobs:
                        expert_jobs[k] = steps.prune_experts.submit(cfg, v.expert_method, v.keep, model, profile, calib)
                    src = expert_jobs[k]
                if v.unstructured:
                    src = steps.prune_unstructured.submit(cfg, v.name, v.unstructured, v.rate, src, calib, use_gpu=bool(gpus))
                pruned[v.name] = src
                evals.append(steps.evaluate.submit(cfg, v.name, src, corpus, v.meta(), use_gpu=bool(gpus)))
            eval_files = [e.result() for e in evals]
        with step_options(num_cpus=1):
            report_dir = steps.report.submit(cfg, eval_files, model).result()
            export = export_variant(cfg, variants)
            pruned_dir = steps.export_checkpoint.submit(cfg, pruned[export.name]).result()

        table_md = (Path(report_dir) / "table.md").read_text()
        dvc = record_outputs("stun")
        publish_report("stun", table_md, dvc, extra_md=f"Exported checkpoint: `{pruned_dir}` ({export.name})")
        return {"report": str(report_dir), "pruned": str(pruned_dir), "table": table_md, "dvc": dvc}
