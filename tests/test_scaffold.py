"""The flow scaffold as a specification: one body, and around it the lock, the temp sweep, the
device rule, a retry only for a lost step, the DVC record and a dict the CLI can print."""
from __future__ import annotations

from pathlib import Path

import pytest

from flows.platform.scaffold import FlowReport, RunResources, paperline_flow
from tasks.common.config import ConfigError, FlowConfig, Resources


class ToyConfig(FlowConfig):
    steps: int = 2


CALLS: list[str] = []


def _toy_flow(fail_with: list[BaseException]):
    @paperline_flow("toyflow", ToyConfig)
    def toyflow(cfg: ToyConfig, res: RunResources) -> FlowReport:
        """A toy runbook."""
        CALLS.append("body")
        if fail_with:
            raise fail_with.pop(0)
        out = Path(res_dir()) / "report"
        out.mkdir(parents=True, exist_ok=True)
        return FlowReport(table="| a |\n|---|\n| 1 |", report=out, outputs={"n": cfg.steps})

    return toyflow


def res_dir() -> Path:
    from tasks.common.artifacts import data_root

    return data_root() / "toyflow"


@pytest.fixture
def toy_env(data_root, monkeypatch, ray_local):
    monkeypatch.setenv("PAPERLINE_NO_DVC", "1")
    CALLS.clear()
    return data_root


def test_the_flow_is_one_pydantic_parameter_with_params_defaults(toy_env):
    flow = _toy_flow([])
    assert list(flow.parameters.properties) == ["config"]
    out = flow(config=ToyConfig(steps=3))
    assert out["n"] == 3 and out["table"].startswith("| a |") and out["dvc"]["recorded"] is False
    assert "PAPERLINE_NO_DVC" in out["dvc"]["recorded_by"]


def test_leftover_temps_are_swept_under_the_lock(toy_env):
    (toy_env / "toyflow").mkdir(parents=True)
    (toy_env / "toyflow" / ".zoo.abc.tmp").mkdir()
    _toy_flow([])(config=ToyConfig())
    assert not (toy_env / "toyflow" / ".zoo.abc.tmp").exists()


def test_a_lost_step_is_retried_once_a_config_error_never(toy_env):
    _toy_flow([RuntimeError("worker died")])(config=ToyConfig())
    assert CALLS == ["body", "body"]
    CALLS.clear()
    with pytest.raises(ConfigError, match="bad field"):
        _toy_flow([ConfigError("toyflow.steps: bad field")])(config=ToyConfig())
    assert CALLS == ["body"]


def test_a_gpu_the_cluster_lacks_is_refused_naming_the_field(toy_env):
    with pytest.raises(ConfigError, match=r"^toyflow.resources.device: .cuda:3."):
        _toy_flow([])(config=ToyConfig(resources=Resources(device="cuda:3")))
    assert CALLS == []


def test_run_resources_follow_the_config():
    res = RunResources.resolve(Resources(device="cpu", cpus_per_step=1))
    assert res.cpus == 1 and res.gpus == 0 and not res.use_gpu


def test_an_error_is_classified_through_the_wrappers_it_travelled_in():
    from tasks.common.config import DataError
    from tasks.common.steps import is_transient

    class RemoteWrapper(RuntimeError):  # the shape of Ray's RayTaskError: the step's error as .cause
        def __init__(self, cause):
            super().__init__("remote traceback …")
            self.cause = cause

    assert not is_transient(RemoteWrapper(DataError("shard anime-000: truncated")))
    assert is_transient(RemoteWrapper(ConnectionError("node gone")))
