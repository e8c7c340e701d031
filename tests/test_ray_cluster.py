"""The same flow on a multi-node Ray cluster (started here with ``ray.cluster_utils.Cluster``)
through ``RAY_ADDRESS``: steps and workers land on several nodes, and losing a node mid-flow
costs only the shards it was rendering."""
from __future__ import annotations

import json
import threading
import time

import pandas as pd
import pytest

from ops_helpers import TINY_ANIMECELEB

pytestmark = pytest.mark.slow  # a 3-node cluster and real flow runs: ~1-2 min each on 2 cores

RUN = {**TINY_ANIMECELEB, "identities": 3, "frames_per_identity": 5, "frames_per_shard": 2, "test_fraction": 0.34,
       "resources": {**TINY_ANIMECELEB["resources"], "workers": 3}}


@pytest.fixture
def cluster(prefect_server, tmp_path, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    monkeypatch.setenv("RAY_ADDRESS", c.address)
    monkeypatch.setenv("PAPERLINE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("PAPERLINE_NO_DVC", "1")
    yield c, workers
    ray.shutdown()
    c.shutdown()


def run_flow():
    from flows.animeceleb import animeceleb
    from tasks.animeceleb.config import AnimeCelebConfig
    from flows.platform.runner import make_task_runner

    return animeceleb.with_options(task_runner=make_task_runner())(config=AnimeCelebConfig(**RUN))


def outputs(tmp_path):
    out = tmp_path / "data" / "animeceleb"
    manifest = pd.read_parquet(out / "dataset" / "manifest.parquet")
    plan = pd.read_parquet(out / "plan" / "plan.parquet")
    assert manifest["frame_id"].is_unique and set(manifest["frame_id"]) == set(plan["frame_id"])
    return json.loads((out / "render_log" / "runs.json").read_text()), out


def test_a_flow_spreads_its_blender_workers_over_the_cluster_nodes(cluster, tmp_path):
    c, _ = cluster
    run_flow()
    log, _ = outputs(tmp_path)
    assert len(c.list_all_nodes()) == 3
    assert len(log[-1]["nodes"]) >= 2, log[-1]  # one worker per node's CPU: three workers on three nodes


def test_removing_a_node_mid_flow_redoes_only_its_shards(cluster, tmp_path):
    c, workers = cluster
    shards = tmp_path / "data" / "animeceleb" / "shards"
    removed = []

    def remove_a_node():
        t0 = time.monotonic()
        while len(list(shards.glob("*.tar"))) < 2 and time.monotonic() - t0 < 300:
            time.sleep(0.2)
        removed.append(len(list(shards.glob("*.tar"))))
        c.remove_node(workers[1])

    t = threading.Thread(target=remove_a_node, daemon=True)
    t.start()
    t0 = time.perf_counter()
    run_flow()
    wall = time.perf_counter() - t0
    t.join(timeout=10)
    log, out = outputs(tmp_path)
    assert removed
    n_shards = len(list(shards.glob("*.tar")))
    assert n_shards == 9
    # Each shard is on disk once. The render log holds the pass that finished the step: the
    # shards it rendered, and those it rendered twice because a worker was lost mid-shard.
    rendered, lost = log[-1]["shards_rendered"], log[-1]["shards_redone"]
    if rendered == n_shards:
        # The render step lived on another node: its pool re-rendered only what was in flight on
        # the lost node.
        how = "the pool replaced the lost workers"
        assert lost <= 1, log
    else:
        # The lost node ran the render step itself: the flow's retry rendered only what was not
        # already finished (one shard whose files were landing as the node went may be redone).
        how = "the flow's retry resumed"
        assert 0 < rendered <= n_shards - removed[0] + 1 and lost <= 1, (removed, log)
    print(f"\nremove node mid-flow: {removed[0]} shards done at removal; {how}: {rendered} of {n_shards} "
          f"shards rendered in the last pass, {lost} redone, {log[-1].get('workers_replaced', 0)} worker(s) "
          f"replaced, flow wall {wall:.1f} s")
