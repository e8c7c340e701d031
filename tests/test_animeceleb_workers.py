"""Worker pools: the generic replace-a-dead-actor pool (``workers/pool.py``, on tiny actors) and the
Blender render pool on it — a worker killed mid-run (a real SIGKILL) loses nothing and doubles
nothing, and leaves no Blender temp folder behind."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tasks.animeceleb.config import AnimeCelebConfig
from tasks.animeceleb.sampling import build_plan
from tasks.animeceleb.shards import is_done, merge_manifest, read_image

TINY = dict(identities=2, frames_per_identity=3, sequences_per_identity=0, resolution=32, samples=1, denoise=False,
            frames_per_shard=2)


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    from flows.platform.runner import ray_init_kwargs

    ray.shutdown()
    # "pool_slot": a custom resource the pool tests hand out to their actors (two exist)
    ray.init(**{**ray_init_kwargs(None), "num_cpus": 2, "resources": {"pool_slot": 2}})
    yield
    ray.shutdown()


# ------------------------------------------------------------------------ the generic pool


def _squarer():
    import ray

    @ray.remote(max_restarts=0, max_task_retries=0, num_cpus=0)
    class Squarer:
        """Squares numbers; ``die_once`` (a marker path) kills the process the first time, ``"always"`` every time."""

        def run(self, x: int, die_once: str | None, delay: float) -> tuple[int, int]:
            if die_once == "always":
                os.kill(os.getpid(), signal.SIGKILL)
            if die_once and not Path(die_once).exists():
                Path(die_once).write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            if x < 0:
                raise ValueError(f"negative input {x}")
            time.sleep(delay)
            return x * x, os.getpid()

    return Squarer


def _alive(pids) -> set[int]:
    import psutil

    time.sleep(1.0)  # ray.kill is asynchronous
    return {p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}


def test_pool_redoes_the_job_of_a_killed_actor_on_a_replacement(ray_cluster, tmp_path):
    from workers.pool import run_pool

    Squarer = _squarer()
    marker = tmp_path / "j3.died"
    jobs = {f"j{i}": i for i in range(8)}
    done_order = []
    res = run_pool(lambda: Squarer.options(resources={"pool_slot": 1}).remote(), jobs,
                   lambda a, name, x: a.run.remote(x, str(marker) if name == "j3" else None, 0.05),
                   size=2, on_done=lambda name, v: done_order.append(name))
    killed_pid = int(marker.read_text())
    assert {k: v[0] for k, v in res.results.items()} == {f"j{i}": i * i for i in range(8)}
    assert sorted(done_order) == sorted(jobs) and len(done_order) == 8  # every job exactly once
    assert res.results["j3"][1] != killed_pid  # redone by another process
    assert res.replaced == 1 and len(res.failures) == 1 and res.failures[0].startswith("j3: ")
    assert sum(s.actors for s in res.per_slot) == 3 and sum(len(s.jobs) for s in res.per_slot) == 8
    assert {res.slot_of[k] for k in jobs} <= {0, 1}
    assert not _alive({pid for _, pid in res.results.values()}), "the pool left actors running"


def test_a_replacement_waiting_for_room_does_not_hold_up_the_other_slot(ray_cluster, tmp_path):
    from workers.pool import run_pool

    Squarer = _squarer()
    started = []

    def start():
        # The first two actors get the cluster's two pool slots; the replacement asks for a
        # resource no node has, like a node that is gone and a cluster that is full.
        started.append(1)
        opts = {"pool_slot": 1} if len(started) <= 2 else {"no_such_node": 1}
        return Squarer.options(resources=opts).remote()

    marker = tmp_path / "j0.died"
    jobs = {f"j{i}": i for i in range(6)}
    t0 = time.perf_counter()
    res = run_pool(start, jobs, lambda a, name, x: a.run.remote(x, str(marker) if name == "j0" else None, 0.05), size=2)
    assert {k: v[0] for k, v in res.results.items()} == {f"j{i}": i * i for i in range(6)}
    assert len(started) == 3 and res.replaced == 1
    # j0 went to whichever slot answered first; the other slot did all the work, j0 included,
    # while the replacement of the one that died still waits for room
    died = next(s.slot for s in res.per_slot if s.actors == 2)
    survivor = 1 - died
    assert {res.slot_of[k] for k in jobs} == {survivor} and res.per_slot[died].jobs == []
    assert time.perf_counter() - t0 < 60


def test_a_job_that_keeps_killing_its_worker_fails_the_pool_after_max_attempts(ray_cluster):
    from workers.pool import PoolError, run_pool

    Squarer = _squarer()
    with pytest.raises(PoolError, match=r"job bad lost its worker 2 times"):
        run_pool(lambda: Squarer.options(resources={"pool_slot": 1}).remote(), {"ok": 2, "bad": 3},
                 lambda a, name, x: a.run.remote(x, "always" if name == "bad" else None, 0.0), size=2, max_attempts=2)


def test_a_job_error_is_raised_as_its_own_type_and_no_actor_is_left(ray_cluster):
    import ray

    from workers.pool import run_pool

    Squarer = _squarer()
    handles = []

    def start():
        handles.append(Squarer.options(resources={"pool_slot": 1}).remote())
        return handles[-1]

    with pytest.raises(ValueError, match="negative input -4"):  # a data error stays a ValueError
        run_pool(start, {"a": 1, "b": -4}, lambda a, name, x: a.run.remote(x, None, 0.0), size=2)
    time.sleep(1.0)
    for h in handles:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(h.run.remote(1, None, 0.0), timeout=30)


# ------------------------------------------------------------------------ the Blender pool


def shards_of(plan):
    return {s: g.to_dict("records") for s, g in plan.groupby("shard", sort=False)}


def test_a_killed_worker_is_replaced_and_every_frame_lands_exactly_once(ray_cluster, tmp_path):
    from workers.blender import render_shards, scratch_dir

    plan, _ = build_plan(AnimeCelebConfig(**TINY))
    shards = shards_of(plan)
    out = tmp_path / "shards"
    killed: list[int] = []
    blender_temps: set[Path] = set()

    def kill_soon(res):
        # Blender's session temp folders live in the pool's scratch, not in /tmp
        blender_temps.update(scratch_dir(out).glob("worker-*/blender_*"))
        # After the first finished shard, SIGKILL that worker's process while it renders its next one.
        if not killed:
            killed.append(res["pid"])
            threading.Timer(0.5, os.kill, (res["pid"], signal.SIGKILL)).start()

    stats = render_shards(shards, out, workers=2, on_done=kill_soon)
    assert killed and stats["shards_redone"] >= 1 and stats["workers_replaced"] >= 1, stats
    manifest = merge_manifest(out, plan)  # raises on any missing or duplicated frame
    assert len(manifest) == len(plan) and manifest["frame_id"].is_unique
    assert stats["shards_rendered"] == len(shards)
    assert not list(out.glob(".*"))  # no temp files left behind, even by the killed worker
    assert blender_temps and not any(p.exists() for p in blender_temps)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]  # the scratch is gone too
    assert read_image(out, manifest["shard"][0], manifest["member"][0]).shape == (32, 32, 3)


def test_a_blender_worker_keeps_its_temp_files_in_the_scratch_folder(ray_cluster, tmp_path):
    import ray

    from workers.blender import BlenderWorker

    scratch = tmp_path / ".shards.workers.tmp"
    w = BlenderWorker.remote(1, "cpu", str(scratch))
    try:
        temp = Path(ray.get(w.tempdir.remote()))
        assert temp.is_dir() and scratch in temp.parents and temp.name.startswith("blender_")
    finally:
        ray.kill(w, no_restart=True)


def test_a_rerun_renders_only_the_shards_that_are_missing(ray_cluster, tmp_path):
    from workers.blender import render_shards

    plan, _ = build_plan(AnimeCelebConfig(**TINY))
    shards = shards_of(plan)
    out = tmp_path / "shards"
    first = dict(list(shards.items())[:3])  # a run that "crashed" after three shards
    render_shards(first, out, workers=1)
    stamps = {s: (out / f"{s}.tar").stat().st_mtime_ns for s in first}
    stats = render_shards(shards, out, workers=2)
    assert stats["shards_skipped"] == 3 and stats["shards_rendered"] == len(shards) - 3
    assert {s: (out / f"{s}.tar").stat().st_mtime_ns for s in first} == stamps
    assert all(is_done(out, s) for s in shards)
    merge_manifest(out, plan)
