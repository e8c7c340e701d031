"""The s3nas classifier and supernet search as recipes on the shared training engine: their
first losses are pinned (a silent change in the maths or the data order fails here), and both
resume after a kill exactly where an unbroken run would be — in the recipe and in the step."""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tasks.common.training import TrainingConfig, checkpoints, latest_checkpoint, load_weights, train
from tasks.s3nas.config import S3NASConfig, SupernetConfig
from tasks.s3nas.scaling import finish
from tasks.s3nas.search import SupernetSearchRecipe
from tasks.s3nas.space import random_arch
from tasks.s3nas.train import ClassifierRecipe, EpochBatches

ROOT = Path(__file__).resolve().parents[1]
SN = SupernetConfig(resolution=16, stem_channels=8, stages=[(1, 8, 1), (1, 16, 2)], head_channels=16)
ENGINE = TrainingConfig(backend="torch", checkpoint_every=1, keep_checkpoints=100, grad_clip=10, log_every=1).on("cpu")


def images(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)


def tiny_classifier(epochs: int = 2) -> ClassifierRecipe:
    x, y = images()
    arch = finish(random_arch(SN, random.Random(0)), 0.25)  # SE + h-swish + dropout: every random part
    return ClassifierRecipe(arch, x, y, epochs=epochs, lr=3e-3, batch_size=32, label_smoothing=0.1, seed=0)


def toy_latency(slot, branches) -> float:
    return float(sum(b.kernel * b.expansion for b in branches))


def tiny_search_config(**kw) -> S3NASConfig:
    return S3NASConfig(supernet=SN, n_train=96, batch_size=32, search_epochs=2, warmup_epochs=1,
                       target_latency_us=50.0, threshold_lr=0.5, **kw)


def tiny_search() -> SupernetSearchRecipe:
    x, y = images()
    return SupernetSearchRecipe(tiny_search_config(), x, y, toy_latency, 5.0, lambda a: 0.0)


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)  # the pinned numbers are single-threaded CPU float32


# ----------------------------------------------------------------------------- pinned losses

# Recorded from this code on x86_64 CPU, one thread. Regenerate only for an intended change of the
# maths or the data order, and say which in the commit.
CLASSIFIER_LOSSES = [2.27906, 2.31707, 2.33537, 2.27569, 2.23266, 2.27604]
# (cross-entropy, expected latency µs, warm-up?) per step: the latency loss pulls the expected
# latency from 57 to 23 µs (search target 30 µs) at the first threshold update. Re-pinned for
# issue 14's change of the thresholds' optimiser from Adam to SGD (Adam went to 11 µs: every
# threshold moved alike); the warm-up steps are unchanged.
SEARCH_CE_LAT = [(2.32538, 57.0, 1.0), (2.3374, 57.0, 1.0), (2.3279, 57.0, 1.0),
                 (2.3213, 57.0, 0.0), (2.28743, 23.0, 0.0), (2.28813, 23.0, 0.0)]


def test_classifier_first_losses_are_pinned(tmp_path):
    res = train(tiny_classifier(), ENGINE, tmp_path)
    got = [h["net/loss"] for h in res.history]
    assert got == pytest.approx(CLASSIFIER_LOSSES, abs=1e-4)


def test_the_adam_threshold_search_keeps_its_old_pinned_losses(tmp_path):
    """``threshold_optimizer='adam'`` is the search as it was before issue 14, number for number."""
    x, y = images()
    recipe = SupernetSearchRecipe(tiny_search_config(threshold_optimizer="adam"), x, y, toy_latency, 5.0, lambda a: 0.0)
    got = [(h["supernet/ce"], h["supernet/lat_us"]) for h in train(recipe, ENGINE, tmp_path).history]
    assert got == [pytest.approx(v, abs=1e-4) for v in [(2.32538, 57.0), (2.3374, 57.0), (2.3279, 57.0), (2.3213, 57.0),
                                                       (2.29387, 11.0), (2.30757, 11.0)]]


def test_search_first_losses_are_pinned_through_both_phases(tmp_path):
    res = train(tiny_search(), ENGINE, tmp_path)
    got = [(h["supernet/ce"], h["supernet/lat_us"], h["supernet/warmup"]) for h in res.history]
    assert [g[2] for g in got] == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]  # warm-up epoch, then the latency phase
    assert [ce for ce, _, _ in got] == pytest.approx([ce for ce, _, _ in SEARCH_CE_LAT], abs=1e-4)
    assert [lat for _, lat, _ in got] == pytest.approx([lat for _, lat, _ in SEARCH_CE_LAT], abs=1e-3)


def test_batches_are_a_pure_function_of_seed_and_step():
    x, y = images(100)
    a, b = EpochBatches(x, y, 32, seed=3), EpochBatches(x, y, 32, seed=3)
    assert a.per_epoch == 4
    seen = torch.cat([a.indices(s) for s in range(4)])
    assert sorted(seen.tolist()) == list(range(100))  # one epoch visits every image once
    assert torch.equal(b.indices(6), a.indices(6)) and torch.equal(b.indices(1), a.indices(1))  # any order of asking
    assert not torch.equal(a.indices(0), a.indices(4))  # a new permutation each epoch
    assert not torch.equal(EpochBatches(x, y, 32, seed=4).indices(0), a.indices(0))


# ----------------------------------------------------------------------------- resume after a kill


def _same_weights(ckpt_a: Path, ckpt_b: Path, name: str) -> None:
    a, b = load_weights(ckpt_a, name), load_weights(ckpt_b, name)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("make, name", [(tiny_classifier, "net"), (tiny_search, "supernet")])
def test_resuming_from_any_checkpoint_ends_exactly_where_the_unbroken_run_does(make, name, tmp_path):
    unbroken = train(make(), ENGINE, tmp_path / "unbroken")
    for k in (2, 3, 4):  # in the warm-up, at the phase switch, in the latency phase
        resumed_dir = tmp_path / f"from{k}"
        shutil.copytree(checkpoints(tmp_path / "unbroken")[k - 1], resumed_dir / f"step_{k:08d}")
        resumed = train(make(), ENGINE, resumed_dir)
        assert resumed.start_step == k
        _same_weights(Path(resumed.checkpoint), Path(unbroken.checkpoint), name)
        assert [h["step"] for h in resumed.history] == [h["step"] for h in unbroken.history]


_CHILD = """
import sys, time; sys.path[:0] = [{tests!r}, {root!r}]
import torch; torch.set_num_threads(1)
from test_s3nas_training import ENGINE, tiny_search
from tasks.common.training import train
recipe = tiny_search()
batch = recipe.batch
def slow(step, rank, device):
    time.sleep(0.4)
    return batch(step, rank, device)
recipe.batch = slow
train(recipe, ENGINE, {ckpt!r})
"""


def _kill_after(code: str, ready, timeout: float = 120) -> int:
    """Run ``code`` in a fresh interpreter; SIGKILL it once ``ready()`` holds."""
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + timeout
        while not ready():
            assert proc.poll() is None, "the child ended before it could be killed"
            assert time.time() < deadline, "the child never got far enough"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_search_resumes_after_a_real_kill_and_matches_an_unbroken_run(tmp_path):
    ckpt = tmp_path / "killed"
    rc = _kill_after(_CHILD.format(tests=str(ROOT / "tests"), root=str(ROOT), ckpt=str(ckpt)),
                     lambda: (latest_checkpoint(ckpt) is not None and int(latest_checkpoint(ckpt).name[5:]) >= 2))
    assert rc == -signal.SIGKILL
    saved = int(latest_checkpoint(ckpt).name[5:])
    assert 2 <= saved < 6
    resumed = train(tiny_search(), ENGINE, ckpt)
    assert resumed.start_step == saved
    unbroken = train(tiny_search(), ENGINE, tmp_path / "unbroken")
    _same_weights(Path(resumed.checkpoint), Path(unbroken.checkpoint), "supernet")


# ----------------------------------------------------------------------------- the steps resume too


def _inputs(root: Path, cfg: S3NASConfig) -> tuple[Path, Path]:
    """A data folder (synthetic images) and a latency table (cycles = MACs / 64, no simulator)."""
    from tasks.common.artifacts import write_json
    from tasks.s3nas.data import save_splits
    from tasks.s3nas.lut import table_layers

    data_dir, lut_dir = root / "in" / "data", root / "in" / "lut"
    data_dir.mkdir(parents=True)
    x, y = images(96 + 32 + 32)
    save_splits({"train_x": x[:96], "train_y": y[:96], "val_x": x[96:128], "val_y": y[96:128],
                 "test_x": x[128:], "test_y": y[128:]}, data_dir / "fashion_mnist.safetensors")
    layers, _ = table_layers(cfg)
    write_json(lut_dir / "lut.json", {"npu": cfg.npu.model_dump(),
                                      "layers": {k: {"cycles": max(1, l.macs // 64), "layer": l.to_dict()}
                                                 for k, l in layers.items()}})
    return data_dir, lut_dir


_STEP_CHILD = """
import sys, time; sys.path[:0] = [{tests!r}, {root!r}]
import torch; torch.set_num_threads(1)
from pathlib import Path
from test_s3nas_training import tiny_search_config
from tasks.s3nas import search, steps
batch = search.SupernetSearchRecipe.batch
def slow(self, step, rank, device):
    time.sleep(0.4)
    return batch(self, step, rank, device)
search.SupernetSearchRecipe.batch = slow
steps.search.fn(tiny_search_config(), Path({data!r}), Path({lut!r}))
"""


def test_the_search_step_resumes_its_training_after_a_kill(tmp_path, monkeypatch):
    from tasks.common.artifacts import read_json
    from tasks.s3nas import steps

    cfg = tiny_search_config()
    data_dir, lut_dir = _inputs(tmp_path, cfg)
    monkeypatch.setenv("PAPERLINE_DATA", str(tmp_path / "killed"))
    ckpts = tmp_path / "killed" / "s3nas" / ".checkpoints" / "search-s3nas"
    code = _STEP_CHILD.format(tests=str(ROOT / "tests"), root=str(ROOT), data=str(data_dir), lut=str(lut_dir))
    rc = _kill_after(code, lambda: latest_checkpoint(ckpts) is not None and int(latest_checkpoint(ckpts).name[5:]) >= 2)
    assert rc == -signal.SIGKILL
    saved = int(latest_checkpoint(ckpts).name[5:])
    out = steps.search.fn(cfg, data_dir, lut_dir)
    info = read_json(out / "search.json")
    assert info["resumed_from"] == saved >= 2
    assert not ckpts.exists()  # checkpoints go once the step's outputs are complete

    monkeypatch.setenv("PAPERLINE_DATA", str(tmp_path / "unbroken"))
    ref = steps.search.fn(cfg, data_dir, lut_dir)
    assert read_json(ref / "search.json")["resumed_from"] == 0
    assert read_json(out / "arch.json") == read_json(ref / "arch.json")
    assert read_json(out / "search.json")["supernet_val_acc"] == read_json(ref / "search.json")["supernet_val_acc"]
