"""The ``s3nas`` flow: NPU-aware architecture search on a simulated NPU, as a runbook."""
from __future__ import annotations

from flows.platform.scaffold import FlowReport, RunResources, paperline_flow
from tasks.s3nas import steps
from tasks.s3nas.config import S3NASConfig


@paperline_flow("s3nas", S3NASConfig)
def s3nas(cfg: S3NASConfig, res: RunResources) -> FlowReport:
    """``s3nas``: NPU-aware architecture search with a simulated NPU, scaled to a latency target.

    In: Fashion-MNIST (Debian's ``dataset-fashion-mnist``), an NPU description (SCALE-Sim systolic
    array) and a latency target T. Chain: data → latency table (the target check first, then
    SCALE-Sim on a pool of Ray actors, per-layer cache) → analytical estimator fitted to it and
    checked on held-out whole networks → supernet training + single-path search at the tighter
    target → random search with the same budget → compound scaling of ours, the random-search
    winner and a hand-designed EfficientNet-B0-style net to T (estimator, then simulator
    confirmation) → final training (+ SE removal for ours) → report. Out: ``data/s3nas/`` (DVC
    outs), ``report/headline.json`` (DVC metrics; ``metrics.json`` in full), ``report/results.csv``
    (DVC plots), ``pareto.png``.

    Run: ``paperline run s3nas --set target_latency_us=400`` · ``dvc repro s3nas`` ·
    ``dvc exp run -S s3nas.target_latency_us=500`` · the ``s3nas-weekly`` deployment.
    """
    # Training steps run two at a time, each on half the cores (and a GPU when there is one).
    threads = max(1, res.cpus // 2)
    with res.steps(cpus=1):
        data = steps.data.submit(cfg)
    # Simulation steps only drive the NPU pool, whose actors hold the CPUs themselves.
    with res.steps(cpus=0):
        lut = steps.latency_table.submit(cfg, res.workers).result()
        est = steps.estimator.submit(cfg, lut, res.workers)
    data = data.result()
    with res.steps(cpus=1, gpu=True):
        ours = steps.search.submit(cfg, data, lut, threads=threads, use_gpu=res.use_gpu)
        rand = steps.random_search.submit(cfg, data, lut, threads=threads, use_gpu=res.use_gpu)
        ours, rand, est = ours.result(), rand.result(), est.result()
    with res.steps(cpus=0):
        # One after another: each holds a pool of NPU actors while it confirms, and two steps each
        # holding part of their pool could wait on each other for the CPUs.
        scaled = {k: steps.scale.submit(cfg, k, src, est, res.workers).result()
                  for k, src in (("s3nas", ours), ("random_search", rand), ("hand_designed", None))}
    with res.steps(cpus=1, gpu=True):
        finals = {k: steps.train_final.submit(cfg, k, d, data, est, remove_se=(k == "s3nas"), threads=threads,
                                              use_gpu=res.use_gpu) for k, d in scaled.items()}
        finals = {k: f.result() for k, f in finals.items()}
    with res.steps(cpus=1):
        report = steps.report.submit(cfg, finals, {"s3nas": ours, "random_search": rand}, est, lut).result()
    return FlowReport(table=(report / "table.md").read_text(), report=report, outputs={"final": finals["s3nas"]},
                      extra_md=f"Pareto plot: `{report / 'pareto.png'}`")
