"""``animeceleb``: an AnimeCeleb-style head dataset rendered in Blender on a pool of Ray workers.

In: a config (how many identities, frames, styles, resolution). Chain: plan (identities,
labels, identity-disjoint split, shards) → morph models (``.npz`` per domain and identity) →
render (Blender worker actors, one ``bpy`` each; shard by shard, resumable) → dataset
(manifest checked against the plan, contact sheets, stats). Out: ``data/animeceleb/`` (DVC outs),
``data/animeceleb/dataset/stats.json`` (DVC metrics), ``dataset/contact_sheets/*.png``.

Run: ``paperline run animeceleb --set identities=8 frames_per_identity=16 resolution=128`` ·
``dvc repro animeceleb`` · the ``animeceleb`` deployment in the dashboard.
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from tasks.animeceleb import steps
from tasks.animeceleb.config import AnimeCelebConfig
from tasks.animeceleb.report import summary_table
from tasks.common.artifacts import read_json
from tasks.common.config import load_config
from tasks.common.locks import run_lock
from tasks.common.runner import cluster_resources, make_task_runner, step_options
from tasks.common.versioning import publish_report, record_outputs

PURPOSE = "AnimeCeleb-style data: procedural anime heads + anny human heads rendered by Blender workers"


# A step lost with its process (a killed Ray worker, a removed node) fails the run; one flow
# retry redoes only what the step cache and the shard files do not already hold.
@flow(name="animeceleb", task_runner=make_task_runner(), log_prints=True, retries=1, retry_delay_seconds=5)
def animeceleb(config: AnimeCelebConfig = load_config("animeceleb", AnimeCelebConfig)) -> dict:
    with run_lock("animeceleb"):
        cfg = config
        res = cluster_resources()
        gpus = 0 if cfg.device == "cpu" else int(res.get("GPU", 0))
        if gpus:
            workers, threads = cfg.workers or gpus, cfg.threads_per_worker
        else:
            threads = cfg.threads_per_worker
            workers = cfg.workers or max(1, int(res.get("CPU", 1)) // threads)

        with step_options(num_cpus=1):
            plan = steps.plan.submit(cfg).result()
            models = steps.morph_models.submit(cfg, plan)
        # The render step only hands out shards; its worker actors hold the CPUs/GPUs.
        with step_options(num_cpus=0):
            shards = steps.render.submit(cfg, plan, workers, threads, num_gpus=1 if gpus else 0).result()
        with step_options(num_cpus=1):
            data = steps.dataset.submit(cfg, plan, shards, models.result()).result()

        stats = read_json(Path(data) / "stats.json")
        table = summary_table(stats)
        dvc = record_outputs("animeceleb")
        sheets = ", ".join(f"`{Path(data) / 'contact_sheets' / n}`" for n in stats["contact_sheets"])
        publish_report("animeceleb", table, dvc, extra_md=f"Contact sheets: {sheets}")
        return {"table": table, "dataset": str(data), "shards": str(shards), "morph_models": str(models.result()),
                "contact_sheets": [str(Path(data) / "contact_sheets" / n) for n in stats["contact_sheets"]], "dvc": dvc}
