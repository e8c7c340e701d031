"""``reenact``: cross-domain head reenactment — a human drives an anime character — trained on animeceleb.

In: the ``animeceleb`` outputs (manifest, shards, ``.npz`` morph models; a DVC dependency, so
``dvc repro reenact`` renders them first). Chain: bridge B (anime morphs → human blendshapes,
fitted on landmarks) → in parallel: EDTN (human ARKit coefficients → 17 anime morphs, geometric
loss in human mesh space through B), the anime head generator (mapping / warping / editing nets +
patch discriminator, self-reenactment pairs) and the morph regressor (the fidelity judge) → report
(held-out identities and held-out expressions: EDTN vs the linear B⁻¹ baseline, self-reenactment
PSNR/SSIM/L1, expression fidelity; a human driving sequence → EDTN → generator as a PNG strip and
an MP4). Training runs on the shared engine: plain torch on CPU, DeepSpeed ZeRO-2 bf16 on a GPU,
Ray Train across GPUs. Out: ``data/reenact/`` (DVC outs), ``data/reenact/report/metrics.json``
(DVC metrics), ``report/cross_domain.{png,mp4}``, ``report/self_reenactment.png``.

Run: ``paperline run reenact --set generator.steps=1000`` · ``dvc repro reenact`` ·
``dvc exp run -S reenact.edtn.lr=1e-4`` · the ``reenact-weekly`` deployment.
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from tasks.common.config import load_config
from tasks.common.locks import run_lock
from tasks.common.runner import cluster_resources, make_task_runner, step_options
from tasks.common.versioning import publish_report, record_outputs
from tasks.reenact import steps
from tasks.reenact.config import ReenactConfig

PURPOSE = "EDTN + Animo-style anime head generator: human-driven anime reenactment, trained on animeceleb renders"


# A step lost with its process (a killed Ray worker, a removed node) fails the run; one flow
# retry resumes from the step cache and the training checkpoints.
@flow(name="reenact", task_runner=make_task_runner(), log_prints=True, retries=1, retry_delay_seconds=5)
def reenact(config: ReenactConfig = load_config("reenact", ReenactConfig)) -> dict:
    with run_lock("reenact"):
        cfg = config
        steps.check_inputs(cfg)  # a missing or mismatched animeceleb dataset fails here, naming the field
        res = cluster_resources()
        gpus = 0 if cfg.training.device == "cpu" else int(res.get("GPU", 0))
        # Each trainer gets one GPU when there are any (the engine then runs DeepSpeed), else one CPU;
        # the three trainers are independent and run side by side.
        train = dict(num_cpus=1, num_gpus=1 if gpus else 0)

        with step_options(num_cpus=1):
            bridge = steps.bridge.submit(cfg).result()
        with step_options(**train):
            edtn = steps.edtn.submit(cfg, bridge)
            gen = steps.generator.submit(cfg)
            reg = steps.regressor.submit(cfg)
            edtn, gen, reg = edtn.result(), gen.result(), reg.result()
        with step_options(num_cpus=1):
            report_dir = steps.report.submit(cfg, bridge, edtn, gen, reg).result()

        table_md = (Path(report_dir) / "table.md").read_text()
        dvc = record_outputs("reenact")
        pics = ", ".join(f"`{Path(report_dir) / n}`" for n in ("cross_domain.png", "cross_domain.mp4", "self_reenactment.png"))
        publish_report("reenact", table_md, dvc, extra_md=f"Outputs: {pics}")
        return {"report": str(report_dir), "table": table_md, "dvc": dvc}
