"""The ``animeceleb`` flow: an AnimeCeleb-style head dataset rendered in Blender, as a runbook."""
from pathlib import Path

from flows.platform.scaffold import FlowReport, RunResources, paperline_flow
from tasks.animeceleb import steps
from tasks.animeceleb.config import AnimeCelebConfig


@paperline_flow("animeceleb", AnimeCelebConfig)
def animeceleb(cfg: AnimeCelebConfig, res: RunResources) -> FlowReport:
    """AnimeCeleb-style heads (procedural anime + anny human) rendered by a pool of Blender workers.

    In: a config (how many identities, frames, styles, resolution; ``resources.workers`` Blender
    actors of ``resources.threads_per_worker`` Cycles threads, on GPUs when the cluster has them).
    Chain: plan (identities, labels, identity-disjoint split, shards) → morph models (``.npz`` per
    domain and identity) → render (Blender worker actors, one ``bpy`` each; shard by shard,
    resumable, every reused shard verified) → dataset (manifest checked against the plan,
    contact sheets, stats). Out: ``data/animeceleb/`` (DVC outs),
    ``dataset/headline.json`` (DVC metrics; ``stats.json`` in full), ``dataset/contact_sheets/*.png``.

    Run: ``paperline run animeceleb --set identities=8 frames_per_identity=16 resolution=128`` ·
    ``dvc repro animeceleb`` · the ``animeceleb`` deployment in the dashboard.
    """
    with res.steps(cpus=1):
        plan = steps.plan.submit(cfg).result()
        models = steps.morph_models.submit(cfg, plan)
    with res.steps(cpus=0):  # only hands out shards: its Blender actors hold the CPUs/GPUs
        shards = steps.render.submit(cfg, plan, res.workers, res.threads_per_worker, use_gpu=res.use_gpu).result()
    with res.steps(cpus=1):
        data = steps.dataset.submit(cfg, plan, shards, models.result()).result()
    sheets = sorted((Path(data) / "contact_sheets").glob("*.png"))
    return FlowReport(table=(Path(data) / "table.md").read_text(), report=data,
                      outputs={"shards": shards, "morph_models": models.result(), "contact_sheets": [str(p) for p in sheets]},
                      extra_md="Contact sheets: " + ", ".join(f"`{p}`" for p in sheets))
