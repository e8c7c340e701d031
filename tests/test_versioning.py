"""DVC records are true: a run is filed under the parameters it was made with, in the
repository that holds its outputs, or it is not filed at all (and the run says why)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.platform.versioning import record_outputs
from tasks.common.config import FlowConfig, load_config

DVC = str(Path(sys.executable).with_name("dvc"))


class ToyConfig(FlowConfig):
    steps: int = 3
    lr: float = 0.1


def sh(*args: str, cwd: Path) -> str:
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump({"toy": {"steps": 5, "lr": 0.1}}))
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"toy": {
        "cmd": "paperline run toy", "params": ["toy"], "outs": [{"data/toy/out": {"persist": True}}]}}}))
    sh("git", "init", "-q", cwd=root)
    sh("git", "config", "user.email", "t@t", cwd=root)
    sh("git", "config", "user.name", "t", cwd=root)
    sh(DVC, "init", "-q", cwd=root)
    sh(DVC, "config", "core.autostage", "true", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "init", cwd=root)
    out = root / "data" / "toy" / "out"
    out.mkdir(parents=True)
    (out / "weights.bin").write_bytes(b"\x01" * 64)
    monkeypatch.setenv("PAPERLINE_DATA", str(root / "data"))
    monkeypatch.delenv("PAPERLINE_NO_DVC", raising=False)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    return root


def test_a_run_with_params_yaml_values_is_committed_and_dvc_lock_staged(repo):
    cfg = load_config("toy", ToyConfig, params_path=repo / "params.yaml")
    info = record_outputs("toy", cfg)
    assert info["recorded"] and info["recorded_by"] == "dvc commit"
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["toy"]["params"]["params.yaml"]["toy"] == {"steps": 5, "lr": 0.1}
    assert info["outs"]["data/toy/out"].endswith(".dir")
    assert "dvc.lock" in sh("git", "diff", "--cached", "--name-only", cwd=repo).split()  # autostage kept
    assert "up to date" in sh(DVC, "status", "toy", cwd=repo).lower() or sh(DVC, "status", "toy", cwd=repo).strip() == ""


def test_a_run_with_overrides_is_not_filed_under_params_yaml(repo):
    cfg = load_config("toy", ToyConfig, params_path=repo / "params.yaml", overrides=["steps=2"])
    info = record_outputs("toy", cfg)
    assert not info["recorded"]
    assert "toy.steps" in info["recorded_by"] and "dvc exp run -S 'toy.steps=2' toy" in info["recorded_by"]
    assert not (repo / "dvc.lock").exists()


def test_a_data_root_outside_the_repository_records_nothing(repo, tmp_path, monkeypatch):
    monkeypatch.setenv("PAPERLINE_DATA", str(tmp_path / "elsewhere"))
    cfg = load_config("toy", ToyConfig, params_path=repo / "params.yaml")
    info = record_outputs("toy", cfg)
    assert not info["recorded"] and "not inside a DVC repository" in info["recorded_by"]


def test_under_dvc_repro_the_flow_leaves_recording_to_dvc(repo, monkeypatch):
    monkeypatch.setenv("DVC_STAGE", "toy")
    info = record_outputs("toy", load_config("toy", ToyConfig, params_path=repo / "params.yaml"))
    assert info["recorded"] and "dvc repro" in info["recorded_by"]
    assert not (repo / "dvc.lock").exists()
