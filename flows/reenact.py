"""The ``reenact`` flow: a human drives an anime head (EDTN + an Animo-style generator), as a runbook."""
from pathlib import Path

from flows.platform.scaffold import FlowReport, RunResources, paperline_flow
from tasks.reenact import steps
from tasks.reenact.config import ReenactConfig
from tasks.reenact.data import check_inputs


@paperline_flow("reenact", ReenactConfig)
def reenact(cfg: ReenactConfig, res: RunResources) -> FlowReport:
    """Cross-domain head reenactment — a human drives an anime character — trained on animeceleb.

    In: the ``animeceleb`` outputs (manifest, shards, ``.npz`` morph models; a DVC dependency, so
    ``dvc repro reenact`` renders them first). Chain: bridge B (anime morphs → human blendshapes,
    fitted on landmarks) → in parallel: EDTN (human ARKit coefficients → 17 anime morphs, geometric
    loss in human mesh space through B), the anime head generator (mapping / warping / editing
    nets + patch discriminator, self-reenactment pairs) and the morph regressor (the fidelity
    judge) → report (held-out identities and held-out expressions: EDTN vs the linear B⁻¹
    baseline, self-reenactment PSNR/SSIM/L1, expression fidelity; a human driving sequence →
    EDTN → generator as a PNG strip and an MP4). Training runs on the shared engine: plain torch
    on CPU, DeepSpeed ZeRO-2 bf16 on a GPU, Ray Train across GPUs. Out: ``data/reenact/`` (DVC
    outs), ``report/headline.json`` (DVC metrics; ``metrics.json`` in full), ``report/cross_domain.{png,mp4}``,
    ``report/self_reenactment.png``.

    Run: ``paperline run reenact --set generator.steps=1000`` · ``dvc repro reenact`` ·
    ``dvc exp run -S reenact.edtn.lr=1e-4`` · the ``reenact-weekly`` deployment.
    """
    check_inputs(cfg)  # a missing, mismatched or damaged animeceleb dataset fails here, naming the field
    with res.steps(cpus=1):
        bridge = steps.bridge.submit(cfg).result()
    # The three trainers are independent and run side by side: a GPU each when there are any,
    # and a third of the step CPUs each.
    per = max(1, res.cpus // 3)
    with res.steps(cpus=per, gpu=True):
        edtn = steps.edtn.submit(cfg, bridge, threads=per)
        gen = steps.generator.submit(cfg, threads=per)
        reg = steps.regressor.submit(cfg, threads=per)
        edtn, gen, reg = edtn.result(), gen.result(), reg.result()
    with res.steps(cpus=1):
        report = steps.report.submit(cfg, bridge, edtn, gen, reg).result()
    pics = [Path(report) / n for n in ("cross_domain.png", "cross_domain.mp4", "self_reenactment.png")]
    return FlowReport(table=(Path(report) / "table.md").read_text(), report=report,
                      outputs={"edtn": edtn, "generator": gen, "regressor": reg},
                      extra_md="Outputs: " + ", ".join(f"`{p}`" for p in pics))
