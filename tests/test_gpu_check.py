"""The GPU check on a CPU machine: the Arctic-layer benchmark's code at a tiny scale, the GPU
tests' marker and skip reason, and the check's verdict (what makes `make gpu-check` exit non-zero)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TINY = ["--preset", "cpu", "--device", "cpu", "--experts", "10", "--hidden", "64", "--expert-hidden", "48",
        "--heads", "2", "--kv-heads", "1", "--vocab", "512", "--calib-n", "4", "--calib-t", "64",
        "--batch-size", "2", "--threads", "1"]


def test_scaled_arctic_layer_benchmark_runs_every_stun_stage_and_projects_35_layers(tmp_path):
    bench = _load("stun_arctic_layer")
    out = tmp_path / "r.json"
    assert bench.main([*TINY, "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["stages"]) == {"build", "profiling", "expert_pruning", "owl_outlier_pass", "owl_prune_pass",
                                "owl_propagate"}
    assert all(v["seconds"] > 0 for v in r["stages"].values())
    # profiling: one forward per batch over every calibration token, one counted pair per token (top-2)
    assert r["profile"] == {"tokens": 256, "forward_passes": 2, "pairs_counted": 256.0}
    # STUN keeps round(10 · 0.8) = 8 experts; OWL's rate makes the total expert sparsity S = 0.4
    assert r["experts_kept"] == 8 and r["expert_fraction"] == pytest.approx(0.2)
    assert r["unstructured_rate"] == pytest.approx(1 - 0.6 / 0.8)
    assert r["total_expert_sparsity"] == pytest.approx(0.4, abs=0.005)
    # the planted families are what STUN merges (random merging would rarely stay inside one)
    c = r["clusters"]
    assert c["multi_member"] >= 1 and c["within_family"] >= c["multi_member"] / 2
    s = {k: v["seconds"] for k, v in r["stages"].items()}
    per_layer = sum(s[k] for k in s if k != "build")
    assert r["per_layer_seconds"] == pytest.approx(per_layer)
    assert r["projection"]["compute_seconds"] == pytest.approx(35 * per_layer - s["owl_propagate"])
    assert r["projection"]["io_bytes"] == 35 * 4 * r["layer_bytes"]
    assert r["projection"]["comparable"] is False and r["peak_gpu_gib"] is None
    assert r["dtype"] == "float32" and r["device"] == "cpu"


def test_arctic_preset_is_arctics_shape():
    bench = _load("stun_arctic_layer")
    a = bench.PRESETS["arctic"]
    assert (a["experts"], a["hidden"], a["expert_hidden"], a["top_k"]) == (128, 7168, 4864, 2)
    assert a["calib_n"] * a["calib_t"] == 128 * 2048 and bench.ARCTIC_LAYERS == 35


def test_every_gpu_test_module_carries_the_gpu_marker():
    mods = sorted((ROOT / "tests" / "gpu").glob("test_*.py"))
    assert len(mods) >= 4  # stun, reenact, animeceleb, s3nas
    for path in mods:
        spec = importlib.util.spec_from_file_location(f"_gpu_{path.stem}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        marks = getattr(mod, "pytestmark", [])
        marks = marks if isinstance(marks, list) else [marks]
        assert any(m.name == "gpu" for m in marks), f"{path.name}: no `pytestmark = pytest.mark.gpu`"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the GPU tests run instead of skipping")
def test_without_cuda_every_gpu_test_skips_with_the_reason():
    res = subprocess.run([sys.executable, "-m", "pytest", "tests/gpu", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in os.environ.items() if k != "PAPERLINE_GPU_DRYRUN"})
    assert res.returncode == 0, res.stdout[-3000:]
    tail = res.stdout.strip().splitlines()[-1]
    assert " skipped" in tail and "passed" not in tail and "failed" not in tail, tail
    assert "no CUDA device visible" in res.stdout


def _junit(tmp_path: Path, cases: str) -> Path:
    p = tmp_path / "j.xml"
    p.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest">{cases}</testsuite></testsuites>')
    return p


def test_gpu_check_verdict(tmp_path):
    gc = _load("gpu_check")
    skipped = _junit(tmp_path, '<testcase classname="tests.gpu.test_gpu_stun" name="test_a" time="0.1">'
                               '<skipped type="pytest.skip" message="no CUDA device visible: x"/></testcase>')
    tests = gc.junit_outcomes(skipped)
    assert tests == [{"test": "tests/gpu/test_gpu_stun.py::test_a", "outcome": "skipped", "seconds": 0.1,
                      "message": "no CUDA device visible: x"}]
    bench_ok = {"ok": True}
    assert gc.verdict({"cuda_available": False}, tests, 0, bench_ok) == []  # a CPU machine: skipping is right
    assert "checked nothing" in gc.verdict({"cuda_available": True}, tests, 0, bench_ok)[0]
    failed = gc.junit_outcomes(_junit(tmp_path, '<testcase classname="tests.gpu.t" name="b" time="1">'
                                                '<failure message="assert 0.9 &gt;= 0.98">tb</failure></testcase>'))
    assert failed[0]["outcome"] == "failed" and gc.verdict({"cuda_available": True}, failed, 1, bench_ok)
    passed = gc.junit_outcomes(_junit(tmp_path, '<testcase classname="tests.gpu.t" name="c" time="2"/>'))
    assert gc.verdict({"cuda_available": True}, passed, 0, bench_ok) == []
    assert gc.verdict({"cuda_available": True}, passed, None, bench_ok)  # timed out
    assert gc.verdict({"cuda_available": True}, passed, 0, {"ok": False, "error": "exited 1"})
    assert gc.verdict({"cuda_available": True}, [], 5, bench_ok)  # nothing collected
