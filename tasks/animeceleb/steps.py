"""The ``animeceleb`` flow's Prefect steps: plan → morph models → render shards → dataset.

Each step owns ``data/animeceleb/<step>/``. ``plan``, ``morph_models`` and ``dataset`` are
cached whole on (inputs, config, code); ``shards`` is resumable shard by shard: its folder
remembers the key it was rendered for, finished shards stay across crashes and reruns, and
only a changed key (a new resolution, say) clears it.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common.artifacts import cache_key, cached_step, is_complete, mark_complete, read_json, step_dir, write_json
from tasks.common.progress import Progress

from .config import AnimeCelebConfig

FLOW = "animeceleb"
STEP_OPTS: dict[str, Any] = dict(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2, persist_result=False)
HEAD_CODE = ["tasks/animeceleb/anime_head.py", "tasks/animeceleb/human_head.py", "tasks/animeceleb/meshkit.py",
             "tasks/animeceleb/morph_model.py", "tasks/animeceleb/morphs.py"]
RENDER_KEY_FILE = ".render_key.json"


@task(name="animeceleb.plan", **STEP_OPTS)
def plan(cfg: AnimeCelebConfig) -> Path:
    """Identities, frames and labels, the identity-disjoint split and the shard of each frame."""
    from .sampling import build_plan

    out = step_dir(FLOW, "plan")
    params = cfg.model_dump(mode="json", exclude={"workers", "threads_per_worker", "device", "contact_sheet_samples"})
    key = cache_key(step="plan", config=params, code=["tasks/animeceleb/sampling.py", "tasks/animeceleb/config.py",
                                                      "tasks/animeceleb/camera.py"])
    with cached_step(out, key) as tmp:
        if tmp is not None:
            frames, identities = build_plan(cfg)
            frames.to_parquet(tmp / "plan.parquet", index=False)
            write_json(tmp / "identities.json", identities)
            splits = {s: sorted(k for k, v in identities.items() if v["split"] == s) for s in ("train", "test")}
            write_json(tmp / "splits.json", splits)
    return out


@task(name="animeceleb.morph_models", **STEP_OPTS)
def morph_models(cfg: AnimeCelebConfig, plan_dir: Path) -> Path:
    """Per domain, the canonical head and every identity's head as ``.npz`` morph models."""
    from .anime_head import AnimeIdentity, build_anime_head
    from .shards import build_head

    out = step_dir(FLOW, "morph_models")
    key = cache_key(step="morph_models", config={"domains": cfg.domains}, inputs=[plan_dir], code=HEAD_CODE)
    with cached_step(out, key) as tmp:
        if tmp is not None:
            identities = read_json(Path(plan_dir) / "identities.json")
            for domain in cfg.domains:
                if domain == "anime":
                    canonical = build_anime_head(AnimeIdentity.canonical())
                else:
                    from .human_head import HumanIdentity, build_human_head

                    canonical = build_human_head(HumanIdentity.canonical())
                canonical.save(tmp / f"{domain}.npz")
                (tmp / domain).mkdir()
            for ident, info in identities.items():
                build_head(info["domain"], info["seed"]).save(tmp / info["domain"] / f"{ident}.npz")
    return out


def render_key(cfg: AnimeCelebConfig, plan_dir: Path) -> str:
    return cache_key(step="shards", config={}, inputs=[plan_dir],
                     code=HEAD_CODE + ["tasks/animeceleb/blender_scene.py", "tasks/animeceleb/shards.py"])


@task(name="animeceleb.render", **STEP_OPTS)
def render(cfg: AnimeCelebConfig, plan_dir: Path, workers: int, threads: int, num_gpus: float = 0) -> Path:
    """Render every shard of the plan on a pool of Blender workers; resumes shard by shard."""
    from workers.blender import render_shards

    out = step_dir(FLOW, "shards")
    key = render_key(cfg, plan_dir)
    if is_complete(out, key):
        return out
    _claim(out, key)
    frames = pd.read_parquet(Path(plan_dir) / "plan.parquet")
    shards = {s: g.to_dict("records") for s, g in frames.groupby("shard", sort=False)}
    progress = Progress("render shards", len(shards))
    done_before = sum(1 for s in shards if (out / f"{s}.tar").is_file())
    progress.update(done_before)
    stats = render_shards(shards, out, workers=workers, threads=threads, num_gpus=num_gpus,
                          on_done=lambda res, _actors: progress.update(1, fps=res["frames"] / max(res["seconds"], 1e-9)))
    progress.close()
    runs = read_json(out / "render_runs.json") if (out / "render_runs.json").is_file() else []
    write_json(out / "render_runs.json", runs + [{**stats, "finished_at": time.time()}])
    mark_complete(out, key, shards=len(shards))
    return out


def _claim(out: Path, key: str) -> None:
    """Keep finished shards of this key; clear shards rendered for another key."""
    marker = out / RENDER_KEY_FILE
    if out.exists() and (not marker.is_file() or read_json(marker).get("key") != key):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        write_json(marker, {"key": key})


@task(name="animeceleb.dataset", **STEP_OPTS)
def dataset(cfg: AnimeCelebConfig, plan_dir: Path, shards_dir: Path, models_dir: Path) -> Path:
    """The manifest (every label, checked: every frame once), splits, stats and contact sheets."""
    from .report import contact_sheet, label_stats
    from .shards import merge_manifest

    out = step_dir(FLOW, "dataset")
    key = cache_key(step="dataset", config={"n": cfg.contact_sheet_samples, "seed": cfg.seed},
                    inputs=[plan_dir, shards_dir, models_dir], code=["tasks/animeceleb/report.py", "tasks/animeceleb/shards.py"])
    with cached_step(out, key) as tmp:
        if tmp is not None:
            frames = pd.read_parquet(Path(plan_dir) / "plan.parquet")
            manifest = merge_manifest(shards_dir, frames)
            manifest.to_parquet(tmp / "manifest.parquet", index=False)
            shutil.copy(Path(plan_dir) / "splits.json", tmp / "splits.json")
            sheets = tmp / "contact_sheets"
            sheets.mkdir()
            names = []
            for (domain, style), g in manifest.groupby(["domain", "style"]):
                p = contact_sheet(g, shards_dir, sheets / f"{domain}_{style}.png", n=cfg.contact_sheet_samples, seed=cfg.seed)
                names.append(p.name)
            runs = read_json(Path(shards_dir) / "render_runs.json")
            last = runs[-1]
            stats = {
                **label_stats(manifest),
                "render": {
                    "wall_seconds": sum(r["wall_seconds"] for r in runs),
                    "frames_rendered": sum(r["frames"] for r in runs),
                    "frames_per_second": last["frames_per_second"],
                    "workers": last["workers"],
                    "per_worker": last["per_worker"],
                    "shards_redone_after_worker_loss": sum(r["shards_redone"] for r in runs),
                    "runs": len(runs),
                },
                "contact_sheets": names,
            }
            write_json(tmp / "stats.json", stats)
    return out
