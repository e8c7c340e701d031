"""The stun steps as a specification: each says what it runs, registries name the methods, the
zoo step resumes after an interrupt and leaves no debris, the profiling pool's shards do not
depend on the worker count."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# a zoo model small enough that the step runs in seconds
TOY_ZOO = ["zoo.layers=2", "zoo.experts=4", "zoo.hidden=32", "zoo.intermediate=64", "zoo.heads=2", "zoo.kv_heads=2",
           "zoo.seq_len=64", "zoo.batch_size=8", "zoo.vocab_size=384", "zoo.n_train_problems=400",
           "zoo.n_heldout_problems=40", "zoo.threads=1", "eval_ppl_tokens=512", "eval_problems=4"]


def test_every_step_says_what_it_runs():
    from tasks.stun import steps

    names = {
        steps.build_corpus: ({}, "corpus"),
        steps.user_data: ({}, "data"),
        steps.prepare_model: ({"cfg": _cfg(), "seed": 1}, "model[zoo seed 1]"),
        steps.calibration: ({"cfg": _cfg(), "seed": 0}, "calibration[64x128 seed 0]"),
        steps.profile_experts: ({"workers": 2, "seed": 0}, "profile[2 workers seed 0]"),
        steps.prune_experts: ({"method": "stun", "keep_per_layer": 6, "tag": "", "seed": 0}, "experts[stun@k6 seed 0]"),
        steps.prune_unstructured: ({"name": "owl-s65", "method": "owl", "sparsity": 0.65, "seed": 1},
                                   "unstructured[owl-s65: owl@0.65 seed 1]"),
        steps.evaluate: ({"name": "stun-owl-k6-s50", "seed": 0}, "evaluate[stun-owl-k6-s50 seed 0]"),
        steps.report: ({}, "report"),
        steps.export_checkpoint: ({}, "export"),
    }
    for task, (params, expected) in names.items():
        assert task.task_run_name.format(**params) == expected, task.name
        assert task.name.startswith("stun.")
    # no hand-kept code lists survive: the code key is derived from the imports
    assert not any(hasattr(steps, n) for n in ("CODE_COMMON", "_code", "_threads", "_logger", "STEP_OPTS"))


def _cfg(*overrides: str):
    from tasks.common.config import load_config
    from tasks.stun.config import StunConfig

    return load_config("stun", StunConfig, overrides=list(overrides))


def test_expert_pruning_methods_come_from_one_registry():
    from tasks.stun.expert_methods import EXPERT_PRUNING_METHODS
    from tasks.stun.unstructured import PRUNING_METHODS

    assert EXPERT_PRUNING_METHODS.list() == ["frequency", "naee", "stun"]
    assert PRUNING_METHODS.list() == ["magnitude", "owl", "wanda"]
    assert EXPERT_PRUNING_METHODS.get("stun").budget("global") == "global"
    assert EXPERT_PRUNING_METHODS.get("naee").budget("global") == "uniform"  # NAEE is layer-wise by design
    with pytest.raises(KeyError, match="unknown expert pruning method 'nope'; known: frequency, naee, stun"):
        EXPERT_PRUNING_METHODS.get("nope")


def test_the_registry_dispatches_to_the_methods_it_names():
    """frequency through the registry keeps exactly the most-routed experts of each layer."""
    from transformers import AutoModelForCausalLM, MixtralConfig

    from tasks.stun.expert_methods import ExpertPruningSettings, prune_experts
    from tasks.stun.profiling import RouterProfile

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(MixtralConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)).eval()
    prof = RouterProfile.empty([4, 4])
    prof.frequency = [torch.tensor([5.0, 1.0, 9.0, 3.0]), torch.tensor([0.0, 7.0, 2.0, 8.0])]
    w_before = [b.mlp.experts.down_proj.detach().clone() for b in model.model.layers]
    info = prune_experts(model, "frequency", 2, budget="global", profile=prof, calib_ids=torch.zeros(1, 4, dtype=torch.long),
                         settings=ExpertPruningSettings())
    assert [layer["keep"] for layer in info["plan"]["layers"]] == [[0, 2], [1, 3]]
    for layer, before, keep in zip(model.model.layers, w_before, ([0, 2], [1, 3])):
        torch.testing.assert_close(layer.mlp.experts.down_proj, before[keep])
    with pytest.raises(ValueError, match="below the model's top-k=2"):
        prune_experts(model, "frequency", 1, budget="uniform", profile=prof, calib_ids=torch.zeros(1, 4),
                      settings=ExpertPruningSettings())


def test_profile_shards_are_whole_batches_whatever_the_worker_count():
    from tasks.stun.profiling import shard_calibration

    ids = torch.arange(21 * 3).reshape(21, 3)  # 21 sequences: batches of 8, 8, 5
    for workers in (1, 2, 3, 7):
        shards = shard_calibration(ids, workers, batch_size=8)
        assert torch.equal(torch.cat(list(shards.values())), ids)  # every row once, in order
        for name, rows in shards.items():
            first, stop = (int(x) for x in name.split("-")[1:])
            assert torch.equal(rows, ids[first * 8 : stop * 8])  # a shard's name says its rows
        assert len(shards) == min(workers, 3)


_STEP_CHILD = """
import json, sys
from tasks.common.config import load_config
from tasks.stun.config import StunConfig
from tasks.stun import steps
def run(task, *args):  # the step's function, outside Prefect (a reused step returns a Cached state)
    out = task.fn(*args)
    return out.result() if hasattr(out, "result") else out
cfg = load_config("stun", StunConfig, overrides=json.loads(sys.argv[1]))
out = run(steps.prepare_model, cfg, run(steps.build_corpus, cfg))
m = json.loads((out / "zoo_metrics.json").read_text())
print(json.dumps({"resumed_from_step": m["resumed_from_step"], "threads": m["threads"]}))
"""


def _zoo_step(data: Path, overrides: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PAPERLINE_DATA": str(data)}
    return subprocess.Popen([sys.executable, "-c", _STEP_CHILD, json.dumps(overrides)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_an_interrupted_zoo_step_leaves_no_temp_and_resumes_from_its_checkpoint(tmp_path):
    """Ctrl-C during training: the step's temp folder goes, its checkpoints stay (keyed); the
    rerun resumes from them, and once the model is saved no scratch or temp is left."""
    # a checkpoint every 50 steps: enough steps left after the first that a loaded machine's
    # polling cannot miss the window and see training finish before the Ctrl-C lands
    overrides = [*TOY_ZOO, "zoo.steps=300"]
    proc = _zoo_step(tmp_path, overrides)
    ckpts = tmp_path / "stun" / "zoo_train_seed0" / "checkpoints"
    deadline = time.monotonic() + 300
    while not (ckpts / "step_00000050" / "meta.json").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert not (tmp_path / "stun" / "zoo" / "seed0").exists()
    assert not list((tmp_path / "stun").rglob(".seed0.*.tmp"))  # Ctrl-C removed its temp folder
    assert list(ckpts.glob("step_*"))

    proc = _zoo_step(tmp_path, overrides)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    res = json.loads(out.strip().splitlines()[-1])
    assert 50 <= res["resumed_from_step"] < 300 and res["threads"] == 1
    assert (tmp_path / "stun" / "zoo" / "seed0" / "model.safetensors").is_file()
    assert not (tmp_path / "stun" / "zoo_train_seed0").exists()
    assert not [p for p in (tmp_path / "stun").rglob("*") if p.name.endswith((".tmp", ".old"))]
