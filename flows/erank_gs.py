"""The ``erank_gs`` flow: 3DGS vs 3DGS + effective-rank regularisation, as a runbook."""
from __future__ import annotations

from flows.platform.scaffold import FlowReport, RunResources, paperline_flow
from tasks.erank_gs import steps
from tasks.erank_gs.config import ErankGSConfig


@paperline_flow("erank_gs", ErankGSConfig)
def erank_gs(cfg: ErankGSConfig, res: RunResources) -> FlowReport:
    """``erank_gs``: does effective-rank regularisation remove needle Gaussians and improve geometry?

    In: a procedural Blender scene (vase, chair, plant, textured box, or all four as
    ``still_life``) rendered with true depth, normals and mesh on the Blender worker pool, or a
    user's scene in the NeRF-synthetic / nerfstudio layout (``--set scene=/path``). Chain: scene →
    for every seed, each variant (vanilla 3DGS, + erank/thin regulariser, optionally the
    absolute-gradient densification) trained side by side from the same initial Gaussians
    (gsplat CUDA on a GPU, gsplat's torch projection + torch alpha-blend on CPU) → held-out
    evaluation (PSNR/SSIM, normal and depth error, Chamfer to the true mesh, needle fractions) →
    report. Out: ``data/erank_gs/`` (DVC outs), ``report/headline.json`` (DVC metrics),
    ``report/results.csv`` (DVC plots), ``report/erank_histograms.png``, per run
    ``train/<variant>_s<seed>/point_cloud.ply`` and ``eval/<variant>_s<seed>/turntable.mp4``.

    Run: ``paperline run erank_gs [--set scene=chair]`` · ``dvc repro erank_gs`` ·
    ``dvc exp run -S erank_gs.erank.lambda_erank=0.05`` · the ``erank_gs-weekly`` deployment.
    """
    with res.steps(cpus=0):  # only drives the Blender pool, whose actors hold the CPUs
        scene = steps.scene.submit(cfg, res.workers, res.threads_per_worker).result()
    # One training per CPU (or per GPU): the runs of a seed share its initial Gaussians and views.
    runs = [(v, s) for s in cfg.seeds for v in cfg.variants]
    with res.steps(cpus=1, gpu=True):
        trained = {(v, s): steps.train.submit(cfg, scene, v, s, use_gpu=res.use_gpu) for v, s in runs}
        evals = {steps.run_name(v, s): steps.evaluate.submit(cfg, scene, trained[v, s], v, s, use_gpu=res.use_gpu,
                                                             turntable=s == cfg.seeds[0]) for v, s in runs}
        eval_dirs = {name: e.result() for name, e in evals.items()}
    with res.steps(cpus=1):
        report = steps.report.submit(cfg, scene, eval_dirs, use_gpu=res.use_gpu).result()
    plys = [f"data/erank_gs/train/{steps.run_name(v, s)}/point_cloud.ply" for v, s in runs]
    return FlowReport(table=(report / "table.md").read_text(), report=report, outputs={"report": report},
                      extra_md="Histograms: `report/erank_histograms.png`; PLYs: " + ", ".join(f"`{p}`" for p in plys))
