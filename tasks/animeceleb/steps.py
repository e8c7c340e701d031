"""The ``animeceleb`` flow's Prefect steps: plan → morph models → render shards → dataset.

Each step owns ``data/animeceleb/<step>/``. ``plan``, ``morph_models`` and ``dataset`` are
cached whole on (inputs, config, code). ``shards`` is a resumable step, shard by shard: each
finished shard is checked (its tar holds exactly the planned members) and recorded with its
files' sizes and hashes; a rerun re-renders every shard that is missing or no longer matches its
record (a truncated or deleted tar), keeps the rest, and only a changed key (a new plan or new
rendering code) clears the folder. A whole shard that was written but never recorded (the
step's process died in between) is checked member by member and adopted, not rendered twice. The render log (wall time, throughput, lost workers) is kept
beside it in ``render_log/``, outside the versioned shards: two runs that render the same shards
leave byte-identical shard folders.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.common.artifacts import cache_key, cached_step, read_json, step_dir, write_json
from tasks.common.config import DataError
from tasks.common.progress import Progress
from tasks.common.steps import MARKER_DIR, ResumableStep, step, step_logger

from .config import AnimeCelebConfig

FLOW = "animeceleb"
#: what every run of the render log must carry (the dataset's stats are summed from them)
RUN_FIELDS = ("key", "frames", "wall_seconds", "frames_per_second", "workers", "per_worker", "shards_redone")


@step("animeceleb.plan", run_name="plan[{cfg.identities} identities x {cfg.domains}]")
def plan(cfg: AnimeCelebConfig) -> Path:
    """Identities, frames and labels, the identity-disjoint split and the shard of each frame."""
    from .sampling import build_plan

    out = step_dir(FLOW, "plan")
    key = cache_key(step="plan", config=cfg.model_dump(mode="json", exclude={"resources", "contact_sheet_samples"}))
    with cached_step(out, key) as tmp:
        if tmp is not None:
            frames, identities = build_plan(cfg)
            frames.to_parquet(tmp / "plan.parquet", index=False)
            write_json(tmp / "identities.json", identities)
            splits = {s: sorted(k for k, v in identities.items() if v["split"] == s) for s in ("train", "test")}
            write_json(tmp / "splits.json", splits)
    return out


@step("animeceleb.morph_models", run_name="morph_models[{cfg.domains}]")
def morph_models(cfg: AnimeCelebConfig, plan_dir: Path) -> Path:
    """Per domain, the canonical head and every identity's head as ``.npz`` morph models."""
    from .anime_head import AnimeIdentity, build_anime_head
    from .human_head import HumanIdentity, build_human_head
    from .shards import build_head

    out = step_dir(FLOW, "morph_models")
    key = cache_key(step="morph_models", config={"domains": cfg.domains}, inputs=[plan_dir])
    with cached_step(out, key) as tmp:
        if tmp is not None:
            identities = read_json(Path(plan_dir) / "identities.json")
            for domain in cfg.domains:
                canonical = (build_anime_head(AnimeIdentity.canonical()) if domain == "anime"
                             else build_human_head(HumanIdentity.canonical()))
                canonical.save(tmp / f"{domain}.npz")
                (tmp / domain).mkdir()
            for ident, info in identities.items():
                build_head(info["domain"], info["seed"]).save(tmp / info["domain"] / f"{ident}.npz")
    return out


@step("animeceleb.render", run_name="render[{workers} workers x {threads} threads]")
def render(cfg: AnimeCelebConfig, plan_dir: Path, workers: int, threads: int, use_gpu: bool = False) -> Path:
    """Render every shard of the plan on a pool of Blender workers; resumes shard by shard."""
    from workers.blender import render_shards

    from .shards import check_shard, remove_shard, shard_files

    out = step_dir(FLOW, "shards")
    frames = pd.read_parquet(Path(plan_dir) / "plan.parquet")
    shards = {s: g.to_dict("records") for s, g in frames.groupby("shard", sort=False)}
    shards_step = ResumableStep(out, cache_key(step="shards", config={}, inputs=[plan_dir]))
    if shards_step.is_complete():
        return out
    shards_step.claim()
    todo: dict[str, list[dict[str, Any]]] = {}
    for s, rows in shards.items():
        recorded = (out / MARKER_DIR / f"{s}.json").is_file()
        if shards_step.done(s):  # recorded, and every recorded byte still there
            continue
        if not recorded and _whole(out, s, rows):
            # Written by a worker whose driver died before recording it: a complete pair with
            # exactly the planned members is adopted, never rendered twice.
            shards_step.record(s, shard_files(s))
            continue
        remove_shard(out, s)  # damaged since it was recorded, half a pair, or never finished
        todo[s] = rows
    if len(todo) < len(shards):
        step_logger().info("render: %d of %d shards already rendered and intact", len(shards) - len(todo), len(shards))

    progress = Progress("render shards", len(shards))
    progress.update(len(shards) - len(todo))

    def finished(res: dict[str, Any]) -> None:
        shard = res["shard"]
        check_shard(out, shard, [r["member"] for r in shards[shard]])  # exactly the planned members
        shards_step.record(shard, shard_files(shard))
        progress.update(1, fps=res["frames"] / max(res["seconds"], 1e-9))

    with progress:
        stats = render_shards(todo, out, workers=workers, threads=threads, num_gpus=1 if use_gpu else 0,
                              on_done=finished)
    lost = [s for s in shards if not shards_step.done(s)]
    if lost:
        raise RuntimeError(f"render: {len(lost)} shard(s) not rendered, e.g. {lost[0]}")
    append_render_log({**stats, "shards_skipped": len(shards) - len(todo), "key": shards_step.key,
                       "finished_at": time.time()})
    shards_step.complete(shards=len(shards))
    return out


def _whole(out: Path, shard: str, rows: list[dict[str, Any]]) -> bool:
    from .shards import DamagedShardError, check_shard

    try:
        check_shard(out, shard, [r["member"] for r in rows])
    except DamagedShardError:
        return False
    return True


def render_log_path() -> Path:
    return step_dir(FLOW, "render_log") / "runs.json"


def read_render_log(path: Path) -> list[dict[str, Any]]:
    """The render runs recorded so far (none when there is no log); a damaged log is a DataError."""
    if not path.is_file():
        return []
    try:
        runs = read_json(path)
    except ValueError as e:
        raise DataError(f"{path}: not JSON ({e}); delete it to start a new render log") from None
    if not isinstance(runs, list):
        raise DataError(f"{path}: expected a list of runs, got {type(runs).__name__}; delete it to start a new log")
    for i, run in enumerate(runs):
        missing = [k for k in RUN_FIELDS if not isinstance(run, dict) or k not in run]
        if missing:
            raise DataError(f"{path}: run {i} has no {missing[0]!r}; delete it to start a new render log")
    return runs


def append_render_log(run: dict[str, Any]) -> None:
    path = render_log_path()
    write_json(path, read_render_log(path) + [run])


@step("animeceleb.dataset", run_name="dataset[{cfg.resolution}px]")
def dataset(cfg: AnimeCelebConfig, plan_dir: Path, shards_dir: Path, models_dir: Path) -> Path:
    """The manifest (every label, checked: every frame once), splits, stats and contact sheets."""
    from .report import contact_sheet, headline, label_stats, render_stats, summary_table
    from .shards import merge_manifest

    out = step_dir(FLOW, "dataset")
    key = cache_key(step="dataset", config={"n": cfg.contact_sheet_samples, "seed": cfg.seed},
                    inputs=[plan_dir, shards_dir, models_dir])
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
            key_of_shards = read_json(Path(shards_dir) / ResumableStep.CLAIM)["key"]
            runs = [r for r in read_render_log(render_log_path()) if r["key"] == key_of_shards]
            stats = {**label_stats(manifest), "render": render_stats(runs), "contact_sheets": names}
            write_json(tmp / "stats.json", stats)
            write_json(tmp / "headline.json", headline(stats))
            (tmp / "table.md").write_text(summary_table(stats) + "\n")
    return out
