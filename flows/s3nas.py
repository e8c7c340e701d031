"""``s3nas``: NPU-aware architecture search with a simulated NPU, scaled to a latency target.

In: Fashion-MNIST (Debian's ``dataset-fashion-mnist``), an NPU description (SCALE-Sim systolic
array) and a latency target T. Chain: data → latency table (SCALE-Sim on Ray actors, per-layer
cache) → analytical estimator fitted to it and checked on held-out whole networks → supernet
training + single-path search at the tighter target → random search with the same budget →
compound scaling of ours, the random-search winner and a hand-designed EfficientNet-B0-style
net to T (estimator, then simulator confirmation) → final training (+ SE removal for ours) →
report. Out: ``data/s3nas/`` (DVC outs), ``data/s3nas/report/metrics.json`` (DVC metrics),
``results.csv`` (DVC plots), ``pareto.png``.

Run: ``paperline run s3nas --set target_latency_us=400`` · ``dvc repro s3nas`` ·
``dvc exp run -S s3nas.target_latency_us=500`` · the ``s3nas-weekly`` deployment.
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from tasks.common.config import load_config
from tasks.common.locks import run_lock
from tasks.common.runner import cluster_resources, make_task_runner, step_options
from tasks.common.versioning import publish_report, record_outputs
from tasks.s3nas import steps
from tasks.s3nas.config import S3NASConfig

PURPOSE = "S3NAS: NPU-aware NAS on a SCALE-Sim NPU, scaled to a latency target, vs random search and a hand-designed net"


# A step lost with its process (a killed Ray worker, a removed node) fails the run; one flow
# retry redoes only what the step cache does not already hold.
@flow(name="s3nas", task_runner=make_task_runner(), log_prints=True, retries=1, retry_delay_seconds=5)
def s3nas(config: S3NASConfig = load_config("s3nas", S3NASConfig)) -> dict:
    with run_lock("s3nas"):
        cfg = config
        res = cluster_resources()
        cpus = int(cfg.cpus_per_step or res.get("CPU", 1))
        gpus = 0 if cfg.device == "cpu" else int(res.get("GPU", 0))
        # Training steps share the machine: each gets an equal slice of the cores (and a GPU if any).
        train = dict(num_cpus=1, num_gpus=1 if gpus else 0)
        threads = max(1, cpus // 2)

        with step_options(num_cpus=1):
            data = steps.data.submit(cfg)
        # Simulation steps only orchestrate the NPU actors, which hold the CPUs themselves.
        with step_options(num_cpus=0):
            lut = steps.latency_table.submit(cfg).result()
            est = steps.estimator.submit(cfg, lut)
        data = data.result()
        with step_options(**train):
            ours = steps.search.submit(cfg, data, lut, threads=threads, use_gpu=bool(gpus))
            rand = steps.random_search.submit(cfg, data, lut, threads=threads, use_gpu=bool(gpus))
            ours, rand, est = ours.result(), rand.result(), est.result()
        with step_options(num_cpus=0):
            # One after another: each holds a set of NPU simulator actors while it confirms, and
            # two steps each holding part of their set can wait on each other for the CPUs forever.
            scaled = {k: steps.scale.submit(cfg, k, src, est).result()
                      for k, src in (("s3nas", ours), ("random_search", rand), ("hand_designed", None))}
        with step_options(**train):
            finals = {k: steps.train_final.submit(cfg, k, d, data, est, remove_se=(k == "s3nas"), threads=threads,
                                                  use_gpu=bool(gpus)) for k, d in scaled.items()}
            finals = {k: v.result() for k, v in finals.items()}
        with step_options(num_cpus=1):
            report_dir = steps.report.submit(cfg, finals, {"s3nas": ours, "random_search": rand}, est, lut).result()

        table_md = (Path(report_dir) / "table.md").read_text()
        dvc = record_outputs("s3nas")
        publish_report("s3nas", table_md, dvc, extra_md=f"Pareto plot: `{Path(report_dir) / 'pareto.png'}`")
        return {"report": str(report_dir), "table": table_md, "dvc": dvc}
