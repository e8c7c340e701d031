"""The one prepared GPU check (`make gpu-check`): every GPU-vs-CPU test plus the Arctic-layer benchmark.

1. ``pytest -m gpu`` (tests/gpu/: each compares a flow's GPU path with its CPU reference on the
   same tiny input; skipped with the reason where no CUDA device is visible), its outcomes read
   from pytest's JUnit XML;
2. ``bench/stun_arctic_layer.py`` — the Arctic shape in bf16 on a GPU, the CPU scale elsewhere.

Writes ``gpu_check.json`` (machine, every test's outcome and reason, the benchmark's JSON) and
``gpu_check.md`` (the same as tables) into ``--out-dir`` and prints the tables. Exit status 1 when
a test fails or errors, when the benchmark fails, when either runs past its time limit, or — on a
machine with a CUDA device — when a GPU test was skipped (it then checked nothing); else 0.

Run:  .venv/bin/python bench/gpu_check.py [--out-dir bench/results] [--tests-timeout 360] [--bench-timeout 180]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    # Together ≤ 9 min: the whole check ends inside a 10-minute device slot even if something hangs.
    p.add_argument("--tests-timeout", type=int, default=360, help="seconds for the whole pytest run")
    p.add_argument("--bench-timeout", type=int, default=180, help="seconds for the benchmark")
    p.add_argument("--per-test-timeout", type=int, default=240, help="pytest-timeout for one test")
    p.add_argument("--skip-bench", action="store_true", help="run the tests only")
    p.add_argument("--bench-args", default="", help="extra arguments for stun_arctic_layer.py (quoted)")
    p.add_argument("--pytest-args", default="", help="extra arguments for pytest (quoted), e.g. '-k stun'")
    return p.parse_args(argv)


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "cpus": os.cpu_count(), "dry_run": os.environ.get("PAPERLINE_GPU_DRYRUN", "") not in ("", "0"),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpus=torch.cuda.device_count(), gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    capability=f"{p.major}.{p.minor}", bf16=torch.cuda.is_bf16_supported())
    for mod in ("deepspeed", "bpy", "ray", "transformers"):
        try:
            info[mod] = __import__(mod).__version__ if mod != "bpy" else __import__(mod).app.version_string
        except Exception as e:  # noqa: BLE001 — a missing stack piece is itself a finding
            info[mod] = f"unavailable: {type(e).__name__}: {e}"[:200]
    return info


def _run(cmd: list[str], timeout: int, log: Path) -> tuple[int | None, float]:
    """Run ``cmd`` with its output both on the console and in ``log``; rc None = timed out."""
    import threading

    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                f.write(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the whole process group: Ray and Blender children too
            proc.wait()
            rc = None
        reader.join(timeout=10)
    return rc, time.perf_counter() - t0


def junit_outcomes(path: Path) -> list[dict[str, Any]]:
    """Each test case of a pytest JUnit XML: id, outcome, seconds, message (skip reason / failure)."""
    if not path.is_file():
        return []
    out = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (el.get("message") or el.text or "").strip()
                break
        cls = case.get("classname", "")
        out.append({"test": f"{cls.replace('.', '/')}.py::{case.get('name')}" if cls else case.get("name"),
                    "outcome": outcome, "seconds": round(float(case.get("time", 0.0)), 2),
                    "message": message.splitlines()[0][:300] if message else ""})
    return out


def verdict(info: dict[str, Any], tests: list[dict[str, Any]], tests_rc: int | None,
            bench: dict[str, Any] | None) -> list[str]:
    """Reasons the check fails (empty: it passed)."""
    why = []
    if tests_rc is None:
        why.append("the GPU tests ran past their time limit")
    elif tests_rc not in (0, 1):
        why.append(f"pytest exited {tests_rc} (5: no GPU test collected; 2-4: usage or internal error)")
    if not tests:
        why.append("no GPU test outcome was recorded")
    for t in tests:
        if t["outcome"] in ("failed", "error"):
            why.append(f"{t['test']} {t['outcome']}: {t['message']}")
        elif t["outcome"] == "skipped" and info.get("cuda_available"):
            why.append(f"{t['test']} skipped on a CUDA machine, so it checked nothing: {t['message']}")
    if bench is not None and not bench.get("ok"):
        why.append(f"benchmark: {bench.get('error')}")
    return why


def tables(report: dict[str, Any]) -> str:
    from tasks.common.tables import markdown_table

    info = report["machine"]
    head = (f"GPU check on {info['host']}: {info.get('gpu') or 'no CUDA device'} "
            f"(torch {info['torch']}, CUDA {info['torch_cuda']}) — "
            + ("PASSED" if report["ok"] else "FAILED") + f" in {report['wall_s']:.0f} s")
    rows = [{"test": t["test"].replace("tests/gpu/", ""), "outcome": t["outcome"], "seconds": t["seconds"],
             "note": t["message"][:110]} for t in report["tests"]]
    parts = [head, "", markdown_table(rows)]
    b = report.get("benchmark")
    if b and b.get("ok"):
        r = b["result"]
        st = [{"stage": n, "seconds": round(v["seconds"], 3),
               "peak_gpu_gib": round(v["peak_gpu_gib"], 2) if "peak_gpu_gib" in v else "",
               "peak_rss_gib": round(v["peak_rss_gib"], 2)} for n, v in r["stages"].items()]
        pj = r["projection"]
        parts += ["", f"bench/stun_arctic_layer.py ({r['preset']} shape, {r['dtype']} on {r.get('gpu') or r['device']}):",
                  "", markdown_table(st), "",
                  f"35-layer projection: {pj['compute_hours']:.3f} h compute + {pj['io_seconds'] / 3600:.3f} h I/O at "
                  f"{pj['io_gbps']} GB/s; paper {pj['paper_hours_h100'][0]}–{pj['paper_hours_h100'][1]} h on one H100"
                  + ("" if pj["comparable"] else " (not comparable: scaled CPU shape)")]
    elif b:
        parts += ["", f"benchmark failed: {b.get('error')}"]
    if report["failures"]:
        parts += ["", "Failures:", *[f"- {w}" for w in report["failures"]]]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    t0 = time.perf_counter()
    a.out_dir.mkdir(parents=True, exist_ok=True)
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    junit = work / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-ra", "-p", "no:cacheprovider",
           f"--junitxml={junit}", f"--timeout={a.per_test_timeout}", *a.pytest_args.split()]
    print("$ " + " ".join(cmd), flush=True)
    tests_rc, tests_s = _run(cmd, a.tests_timeout, a.out_dir / "gpu_check_tests.log")
    tests = junit_outcomes(junit)

    bench: dict[str, Any] | None = None
    if not a.skip_bench:
        out = a.out_dir / "stun_arctic_layer.json"
        stale = out.with_suffix(".json.prev")
        if out.exists():
            out.replace(stale)  # never report a previous run's numbers as this one's
        bcmd = [sys.executable, str(ROOT / "bench" / "stun_arctic_layer.py"), "--out", str(out), *a.bench_args.split()]
        print("$ " + " ".join(bcmd), flush=True)
        rc, secs = _run(bcmd, a.bench_timeout, a.out_dir / "gpu_check_bench.log")
        if rc == 0 and out.is_file():
            bench = {"ok": True, "seconds": round(secs, 1), "result": json.loads(out.read_text())}
            stale.unlink(missing_ok=True)
        else:
            if stale.exists() and not out.exists():
                stale.replace(out)
            bench = {"ok": False, "seconds": round(secs, 1),
                     "error": "ran past its time limit" if rc is None else f"exited {rc} (see gpu_check_bench.log)"}

    failures = verdict(info, tests, tests_rc, bench)
    report = {
        "ok": not failures,
        "failures": failures,
        "machine": info,
        "summary": {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")},
        "tests_seconds": round(tests_s, 1),
        "tests": tests,
        "benchmark": bench,
        "wall_s": time.perf_counter() - t0,
    }
    (a.out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    md = tables(report)
    (a.out_dir / "gpu_check.md").write_text(md + "\n")
    print("\n" + md)
    print(f"\nwrote {a.out_dir / 'gpu_check.json'} and gpu_check.md")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
