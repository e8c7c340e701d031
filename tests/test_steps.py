"""Step plumbing as a specification: cache keys follow the code a step really runs, a reused
output is verified before it is trusted, outputs are readable by the group and whole."""
from __future__ import annotations

import os
import stat
import sys
import textwrap
import time

import pytest

from tasks.common import codehash
from tasks.common.artifacts import (atomic_path, cache_key, cached_step, fingerprint_path, is_complete, mark_complete,
                                    sweep_temps)
from tasks.common.steps import ResumableStep


# --------------------------------------------------------------------------- derived code keys

@pytest.fixture
def toy_package(tmp_path, monkeypatch):
    """``toypkg``: two steps; ``step_a`` reaches ``deep`` only through ``middle``."""
    pkg = tmp_path / "toypkg"
    pkg.mkdir()
    files = {
        "__init__.py": "",
        "deep.py": "SCALE = 2\n",
        "middle.py": "from .deep import SCALE\n\ndef f(x):\n    return SCALE * x\n",
        "other.py": "def g(x):\n    return x + 1\n",
        "steps.py": textwrap.dedent("""
            FLOW = "toy"

            def _helper(x):
                from .middle import f
                return f(x)

            def step_a(x):
                return _helper(x)

            def step_b(x):
                from toypkg.other import g
                return g(x)

            def step_c(x):
                return step_a(x) * 10   # downstream of step_a's code: calls it
        """),
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    monkeypatch.setattr(codehash, "SOURCE_ROOT", tmp_path)
    monkeypatch.setattr(codehash, "PROJECT_PACKAGES", ("toypkg",))
    monkeypatch.syspath_prepend(str(tmp_path))
    for m in [m for m in sys.modules if m.startswith("toypkg")]:
        del sys.modules[m]
    import toypkg.steps as steps

    yield pkg, steps
    for m in [m for m in sys.modules if m.startswith("toypkg")]:
        del sys.modules[m]


def _keys(steps) -> dict[str, str]:
    return {n: codehash.code_fingerprint(getattr(steps, n)) for n in ("step_a", "step_b", "step_c")}


def test_editing_a_module_imported_only_transitively_changes_exactly_the_steps_that_reach_it(toy_package):
    pkg, steps = toy_package
    before = _keys(steps)
    time.sleep(0.01)
    (pkg / "deep.py").write_text("SCALE = 3\n")
    after = _keys(steps)
    assert after["step_a"] != before["step_a"]  # steps → _helper → middle → deep
    assert after["step_c"] != before["step_c"]  # calls step_a
    assert after["step_b"] == before["step_b"]  # never reaches deep


def test_editing_an_unrelated_module_changes_only_its_step(toy_package):
    pkg, steps = toy_package
    before = _keys(steps)
    (pkg / "other.py").write_text("def g(x):\n    return x + 2\n")
    after = _keys(steps)
    assert after["step_b"] != before["step_b"]
    assert after["step_a"] == before["step_a"] and after["step_c"] == before["step_c"]


def test_the_real_steps_reach_the_modules_the_issue_found_missing():
    """The hand lists missed these; the derived closure cannot."""
    stun = codehash.module_closure(["tasks.stun.evaluate"])
    assert "tasks.stun.corpus" in stun
    sampling = codehash.module_closure(["tasks.animeceleb.sampling"])
    assert any(m.endswith("morphs") for m in sampling)


# --------------------------------------------------------------------------- verified reuse

def test_a_truncated_output_makes_its_step_redo(data_root):
    out = data_root / "flow" / "step"
    key = cache_key(step="s", config={"a": 1}, code="v1")
    with cached_step(out, key) as tmp:
        (tmp / "weights.bin").write_bytes(b"x" * 1000)
    assert is_complete(out, key)
    with open(out / "weights.bin", "r+b") as f:
        f.truncate(500)
    assert not is_complete(out, key)
    with cached_step(out, key) as tmp:
        assert tmp is not None, "a damaged output must not be reused"
        (tmp / "weights.bin").write_bytes(b"x" * 1000)
    assert is_complete(out, key)


def test_a_flipped_byte_of_the_same_size_is_caught_too(data_root):
    out = data_root / "f" / "s"
    with cached_step(out, "k") as tmp:
        (tmp / "a.bin").write_bytes(b"abc" * 100)
    data = bytearray((out / "a.bin").read_bytes())
    data[7] ^= 1
    (out / "a.bin").write_bytes(bytes(data))
    assert not is_complete(out, "k")


def test_fingerprint_is_content_not_marker(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"w" * 4096)
    mark_complete(model, "some-key")
    intact = fingerprint_path(model)
    with open(model / "model.safetensors", "r+b") as f:
        f.truncate(2048)
    assert fingerprint_path(model) != intact, "a truncated model beside an intact marker must not look the same"


def test_resumable_step_redoes_only_the_piece_that_was_damaged(data_root):
    out = data_root / "f" / "shards"
    step = ResumableStep(out, "k1").claim()
    for i in range(3):
        with atomic_path(out / f"s{i}.tar") as tmp:
            tmp.write_bytes(bytes([i]) * 100)
        step.record(f"s{i}", [f"s{i}.tar"])
    assert all(step.done(f"s{i}") for i in range(3))
    with open(out / "s1.tar", "r+b") as f:
        f.truncate(10)
    (out / "s2.tar").unlink()
    resumed = ResumableStep(out, "k1").claim()
    assert [resumed.done(f"s{i}") for i in range(3)] == [True, False, False]
    other = ResumableStep(out, "k2").claim()  # a folder made for another key is cleared
    assert not (out / "s0.tar").exists() and not other.done("s0")


# --------------------------------------------------------------------------- readable and whole

def test_outputs_have_normal_permissions(data_root):
    old = os.umask(0o022)
    try:
        with atomic_path(data_root / "f" / "dir", is_dir=True) as tmp:
            (tmp / "x").write_text("1")
        with atomic_path(data_root / "f" / "file.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((data_root / "f" / "dir").stat().st_mode) == 0o755
    assert stat.S_IMODE((data_root / "f" / "file.json").stat().st_mode) == 0o644


def test_an_interrupted_write_leaves_nothing_and_the_sweep_removes_older_leftovers(data_root):
    final = data_root / "f" / "report"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(final, is_dir=True) as tmp:
            (tmp / "table.md").write_text("half")
            raise KeyboardInterrupt
    assert not final.exists() and not list(final.parent.glob(".report.*"))
    (final.parent / ".zoo.abc.tmp").mkdir()  # left by a SIGKILL, which no finally survives
    (final.parent / ".model.safetensors.x.tmp").write_text("half")
    gone = sweep_temps(data_root / "f")
    assert len(gone) == 2 and not list((data_root / "f").glob(".*"))
