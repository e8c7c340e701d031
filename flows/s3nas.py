"""The ``s3nas`` flow: NPU-aware architecture search on a simulated NPU, as a runbook."""
from __future__ import annotations

from flows.platform.scaffold import FlowReport, RunResources, paperline_flow
from tasks.s3nas import steps
from tasks.s3nas.arms import FINALS
from tasks.s3nas.config import S3NASConfig


@paperline_flow("s3nas", S3NASConfig)
def s3nas(cfg: S3NASConfig, res: RunResources) -> FlowReport:
    """``s3nas``: what NPU-awareness buys — S3NAS against NPU-unaware designs at equal NPU latency.

    In: Fashion-MNIST (Debian's ``dataset-fashion-mnist``), two NPU descriptions (SCALE-Sim
    systolic arrays) and a latency target T. Chain: data → latency tables on both NPUs (target
    check first; SCALE-Sim on a pool of Ray actors, per-layer cache) → estimator fitted to the
    first, checked on held-out whole networks → five supernet searches (S3NAS at the tighter
    target; at T; with a MAC proxy; with Adam-trained thresholds; on the second NPU) + random search with the same budget
    → compound scaling of every arm (tasks.s3nas.arms.FINALS) to within ``latency_tolerance`` of T
    on the simulator, the proxy's net also by the proxy itself → ``seeds`` trainings per arm
    (+ SE removal for S3NAS) → report: mean ± std, paired McNemar/t-tests, accuracy-vs-latency
    plot, the two NPUs' searches compared. Out: ``data/s3nas/`` (DVC outs),
    ``report/headline.json`` (DVC metrics), ``report/results.csv`` (DVC plots), ``pareto.png``.

    Run: ``paperline run s3nas`` · ``dvc repro s3nas`` · ``dvc exp run -S s3nas.seeds=10`` ·
    the ``s3nas-weekly`` deployment.
    """
    # Training steps run two at a time, each on half the cores (and a GPU when there is one).
    threads = max(1, res.cpus // 2)
    train = dict(threads=threads, use_gpu=res.use_gpu)
    with res.steps(cpus=1):
        data = steps.data.submit(cfg)
    # Simulation steps only drive the NPU pool, whose actors hold the CPUs themselves.
    with res.steps(cpus=0):
        lut = steps.latency_table.submit(cfg, res.workers).result()
        lut2 = steps.latency_table.submit(cfg, res.workers, which="second_npu").result()
        est = steps.estimator.submit(cfg, lut, res.workers)
    data = data.result()
    with res.steps(cpus=1, gpu=True):
        found = {arm: steps.search.submit(cfg, data, lut, arm=arm, **train) for arm in ("s3nas", "at_target", "mac_proxy", "s3nas_adam")}
        found["npu2"] = steps.search.submit(cfg, data, lut2, arm="npu2", ref_lut_dir=lut, **train)
        found["random_search"] = steps.random_search.submit(cfg, data, lut, **train)
        found, est = {k: f.result() for k, f in found.items()}, est.result()
    with res.steps(cpus=0):
        # One after another: each holds a pool of NPU actors while it confirms.
        scaled = {k: steps.scale.submit(cfg, k, found[s["search"]] if s["search"] else None, est, res.workers,
                                        lut_dir=lut).result() for k, s in FINALS.items()}
    with res.steps(cpus=1, gpu=True):
        finals = {k: [steps.train_final.submit(cfg, k, d, data, est, remove_se=(k == "s3nas"), seed=cfg.seed + i, **train)
                      for i in range(cfg.seeds)] for k, d in scaled.items()}
        finals = {k: [f.result() for f in fs] for k, fs in finals.items()}
    with res.steps(cpus=1):
        report = steps.report.submit(cfg, finals, found, scaled, est, lut, lut2).result()
    return FlowReport(table=(report / "table.md").read_text(), report=report, outputs={"final": finals["s3nas"][0]},
                      extra_md=f"Accuracy-vs-latency plot: `{report / 'pareto.png'}`")
