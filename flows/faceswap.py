"""The ``faceswap`` flow: SAMAE self-reconstruction swapping vs baselines, judged against true swaps."""
from __future__ import annotations

from flows.platform.scaffold import FlowReport, RunResources, paperline_flow
from tasks.faceswap import steps
from tasks.faceswap.config import FaceswapConfig


@paperline_flow("faceswap", FaceswapConfig)
def faceswap(cfg: FaceswapConfig, res: RunResources) -> FlowReport:
    """``faceswap``: does training by masked self-reconstruction (SAMAE) beat target-oriented training?

    In: nothing — the faces are rendered here: anny heads (identity = face shape) with a new
    skin tone, hair, key light and backdrop, expression and pose per frame, on the Blender worker
    pool, with the exact face mask, landmarks and every label, and for each test pair (source,
    target) the ground-truth swap: the source's shape rendered in the target's frame. Chain:
    faces → identity encoder (ArcFace) + attribute regressor, checked on held-out identities →
    every method in ``methods`` trained with one budget (SAMAE, its ablations without perforation
    and without mesh scaling, a SimSwap-like target-oriented swapper, warp-and-blend; RobustSwap
    when registered) → each scored on the test pairs against the ground truth → report.
    Out: ``data/faceswap/`` (DVC outs), ``report/headline.json`` (DVC metrics), ``report/results.csv``
    (DVC plots), ``report/table.md``, ``report/paired.md``, ``report/strip_all.png``, ``report/strips/``,
    ``faces/contact_sheet.png``.

    Run: ``paperline run faceswap [--set methods=[samae,simswap]]`` · ``dvc repro faceswap`` ·
    ``dvc exp run -S faceswap.budget.steps=2000`` · the ``faceswap-weekly`` deployment.
    """
    with res.steps(cpus=0):  # only drives the Blender pool, whose actors hold the CPUs
        faces = steps.faces.submit(cfg, res.workers, res.threads_per_worker).result()
    with res.steps(cpus=res.cpus, gpu=True):
        tools = steps.tools.submit(cfg, faces, use_gpu=res.use_gpu, threads=res.cpus).result()
    with res.steps(cpus=1, gpu=True):  # one training per CPU (or per GPU)
        trained = {m: steps.train.submit(cfg, faces, tools, m, use_gpu=res.use_gpu) for m in cfg.methods}
        refs = steps.references.submit(cfg, faces, tools)
        evals = {m: steps.evaluate.submit(cfg, faces, tools, trained[m], m, use_gpu=res.use_gpu) for m in cfg.methods}
        eval_dirs = {m: e.result() for m, e in evals.items()}
        refs_dir = refs.result()
    with res.steps(cpus=1):
        report = steps.report.submit(cfg, faces, tools, refs_dir, eval_dirs).result()
    return FlowReport(table=(report / "table.md").read_text(), report=report, outputs={"report": report, "faces": faces},
                      extra_md="Strips: `report/strip_all.png`, `report/strips/<method>.png`; data: `faces/contact_sheet.png`")
