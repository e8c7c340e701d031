"""Blender worker actors: a worker killed mid-run (a real SIGKILL) loses nothing and doubles nothing."""
from __future__ import annotations

import os
import signal
import threading

import pytest

from tasks.animeceleb.config import AnimeCelebConfig
from tasks.animeceleb.sampling import build_plan
from tasks.animeceleb.shards import is_done, merge_manifest, read_image

TINY = dict(identities=2, frames_per_identity=3, sequences_per_identity=0, resolution=32, samples=1, denoise=False,
            frames_per_shard=2)


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    from tasks.common.runner import ray_init_kwargs

    ray.shutdown()
    ray.init(**{**ray_init_kwargs(None), "num_cpus": 2})
    yield
    ray.shutdown()


def shards_of(plan):
    return {s: g.to_dict("records") for s, g in plan.groupby("shard", sort=False)}


def test_a_killed_worker_is_replaced_and_every_frame_lands_exactly_once(ray_cluster, tmp_path):
    from workers.blender import render_shards

    plan, _ = build_plan(AnimeCelebConfig(**TINY))
    shards = shards_of(plan)
    killed: list[int] = []

    def kill_soon(res, _actors):
        # After the first finished shard, SIGKILL that worker's process while it renders its next one.
        if not killed:
            killed.append(res["pid"])
            threading.Timer(0.5, os.kill, (res["pid"], signal.SIGKILL)).start()

    stats = render_shards(shards, tmp_path, workers=2, on_done=kill_soon)
    assert killed and stats["shards_redone"] >= 1 and stats["workers_replaced"] >= 1, stats
    manifest = merge_manifest(tmp_path, plan)  # raises on any missing or duplicated frame
    assert len(manifest) == len(plan) and manifest["frame_id"].is_unique
    assert stats["shards_rendered"] == len(shards)
    assert not list(tmp_path.glob(".*"))  # no temp files left behind
    assert read_image(tmp_path, manifest["shard"][0], manifest["member"][0]).shape == (32, 32, 3)


def test_a_rerun_renders_only_the_shards_that_are_missing(ray_cluster, tmp_path):
    from workers.blender import render_shards

    plan, _ = build_plan(AnimeCelebConfig(**TINY))
    shards = shards_of(plan)
    first = dict(list(shards.items())[:3])  # a run that "crashed" after three shards
    render_shards(first, tmp_path, workers=1)
    stamps = {s: (tmp_path / f"{s}.tar").stat().st_mtime_ns for s in first}
    stats = render_shards(shards, tmp_path, workers=2)
    assert stats["shards_skipped"] == 3 and stats["shards_rendered"] == len(shards) - 3
    assert {s: (tmp_path / f"{s}.tar").stat().st_mtime_ns for s in first} == stamps
    assert all(is_done(tmp_path, s) for s in shards)
    merge_manifest(tmp_path, plan)
