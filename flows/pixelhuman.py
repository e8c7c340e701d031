"""The ``pixelhuman`` flow: an animatable human from a few images, vs two baselines, as a runbook."""
from __future__ import annotations

from flows.platform.scaffold import FlowReport, RunResources, paperline_flow
from tasks.pixelhuman import steps
from tasks.pixelhuman.config import PixelHumanConfig


@paperline_flow("pixelhuman", PixelHumanConfig)
def pixelhuman(cfg: PixelHumanConfig, res: RunResources) -> FlowReport:
    """``pixelhuman``: do pose-aware pixel-aligned features in a canonical space give better novel
    views and novel poses of unseen people from 1, 3 or 5 images?

    In: anny full bodies (identity-disjoint train/test; procedural poses and a walk cycle) posed
    in the driver and rendered with masks from a ring of cameras on the Blender worker pool, with
    the skinning (bone transforms, weights) saved per frame. Chain: bodies → the generalisable
    models trained side by side (ours: inverse skinning + residual deformation + pose-aware
    pixel features; the pose-unaware pixel-aligned baseline) → evaluation of every method on the
    unseen identities (the per-subject animatable-NeRF baseline is fitted there, per identity
    and view count) → report (PSNR/SSIM on the body mask, mask IoU, by view count with bootstrap
    intervals; strips; turntable MP4 of a test identity walking). On a GPU the training and
    evaluation steps take one GPU each and put the models, rays and images on it.

    Run: ``paperline run pixelhuman`` · ``dvc repro pixelhuman`` ·
    ``dvc exp run -S pixelhuman.train.steps=3000`` · the ``pixelhuman-weekly`` deployment.
    """
    with res.steps(cpus=0):  # poses bodies with anny, then drives the Blender pool, whose actors hold the CPUs
        bodies = steps.bodies.submit(cfg, res.workers, res.threads_per_worker).result()
    general = [m for m in cfg.methods if m in steps.GENERALISABLE]
    with res.steps(cpus=1, gpu=True):
        trained = {m: steps.train.submit(cfg, bodies, m, use_gpu=res.use_gpu) for m in general}
        evals = {m: steps.evaluate.submit(cfg, bodies, trained.get(m), m, use_gpu=res.use_gpu) for m in cfg.methods}
        eval_dirs = {m: e.result() for m, e in evals.items()}
        train_dirs = {m: t.result() for m, t in trained.items()}
    with res.steps(cpus=1):
        report = steps.report.submit(cfg, bodies, eval_dirs, train_dirs).result()
    return FlowReport(table=(report / "table.md").read_text(), report=report, outputs={"report": report},
                      extra_md="Strips: `report/strips.png`; turntable: `report/turntable.mp4`.")
