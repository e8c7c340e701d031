"""The platform's contracts: atomic artifacts, the step cache, typed configs, CLI, deployments."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tasks.common.artifacts import (
    PROJECT_ROOT, atomic_path, cache_key, cached_step, is_complete, write_json,
)
from tasks.common.config import ConfigError, load_config, parse_overrides


# ----------------------------------------------------------------------------- artifacts


def test_atomic_path_leaves_nothing_behind_on_a_crash(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_an_old_version_whole(tmp_path):
    target = tmp_path / "step"
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "a").write_text("1")
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["step"]


def test_cached_step_runs_once_per_key_and_again_when_the_key_changes(tmp_path):
    runs = []

    def step(key):
        with cached_step(tmp_path / "s", key) as tmp:
            if tmp is not None:
                runs.append(key)
                (tmp / "x").write_text(key)

    step("k1"), step("k1"), step("k2")
    assert runs == ["k1", "k2"]
    assert is_complete(tmp_path / "s", "k2") and (tmp_path / "s" / "x").read_text() == "k2"


def test_a_crashed_step_is_redone_and_leaves_no_partial_output(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with cached_step(tmp_path / "s", "k") as tmp:
            (tmp / "partial").write_text("x")
            raise KeyboardInterrupt
    assert not (tmp_path / "s").exists()
    with cached_step(tmp_path / "s", "k") as tmp:
        assert tmp is not None


def test_cache_key_depends_on_config_inputs_and_code(tmp_path):
    f = tmp_path / "in.txt"
    f.write_text("a")
    base = cache_key(step="s", config={"a": 1}, inputs=[f], code="v1")
    assert base == cache_key(step="s", config={"a": 1}, inputs=[f], code="v1")
    assert base != cache_key(step="s", config={"a": 2}, inputs=[f], code="v1")
    assert base != cache_key(step="s", config={"a": 1}, inputs=[f], code="v2")
    f.write_text("b")
    assert base != cache_key(step="s", config={"a": 1}, inputs=[f], code="v1")


def test_cache_key_outside_a_step_must_name_its_code():
    with pytest.raises(RuntimeError, match="code="):
        cache_key(step="s", config={})


# ----------------------------------------------------------------------------- configs


def test_overrides_parse_yaml_values_and_nested_keys():
    assert parse_overrides(["a=1", "b=[0.4, 0.5]", "zoo.steps=7", "name=x"]) == {
        "a": 1, "b": [0.4, 0.5], "zoo": {"steps": 7}, "name": "x"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


def test_every_shipped_params_section_validates():
    from flows import FLOWS

    doc = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    for name, spec in FLOWS.items():
        assert name in doc, f"params.yaml lacks a '{name}' section"
        dumped = load_config(name, spec.load_config_class()).model_dump(mode="json")
        for key, value in doc[name].items():
            if isinstance(value, dict):
                assert {k: dumped[key][k] for k in value} == value
            else:
                assert dumped[key] == value, key


def _shipped_configs() -> list[tuple[str, str, str, object]]:
    """(where, flow, kind, payload) of every config this repository ships or tells people to
    type: params.yaml's sections, prefect.yaml's deployments, and each documented command's
    ``--set`` / ``dvc exp run -S`` overrides (README, Makefile, dvc.yaml)."""
    import re

    from flows import FLOWS

    found: list[tuple[str, str, str, object]] = [("params.yaml", f, "params", None) for f in FLOWS]
    for dep in yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]:
        path, fn = dep["entrypoint"].split(":")
        module = path.removesuffix(".py").replace("/", ".")
        flow = next((s.name for s in FLOWS.values() if (s.module, s.function) == (module, fn)), dep["entrypoint"])
        found.append((f"prefect.yaml:{dep['name']}", flow, "deployment", dep))
    value = r"[^\s`'\"]+"
    for doc in ("README.md", "Makefile", "dvc.yaml"):
        for lineno, line in enumerate((PROJECT_ROOT / doc).read_text().splitlines(), 1):
            for m in re.finditer(rf"paperline run (\w+)((?: --set(?: [\w.]+={value})+)+)", line):
                sets = re.findall(rf"[\w.]+={value}", m.group(2))
                found.append((f"{doc}:{lineno}", m.group(1), "overrides", sets))
            exp = re.findall(rf"-S (\w+)\.([\w.]+={value})", line)
            for flow in dict.fromkeys(f for f, _ in exp):
                found.append((f"{doc}:{lineno}", flow, "overrides", [kv for f, kv in exp if f == flow]))
    return found


def _subset(filed, dumped, where=""):
    """Every value written in the file is the value the config holds (no silent coercion)."""
    if isinstance(filed, dict):
        for k, v in filed.items():
            _subset(v, dumped[k], f"{where}.{k}")
    else:
        assert dumped == filed, where


@pytest.mark.parametrize("where, flow, kind, payload", _shipped_configs(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_shipped_config_validates(where, flow, kind, payload):
    """torchtune's rule: a config the repository ships (or its docs tell people to type) loads."""
    import inspect

    from flows import FLOWS

    assert flow in FLOWS, f"{where} names {flow!r}, which is not a flow"
    spec = FLOWS[flow]
    cls = spec.load_config_class()
    shipped = load_config(flow, cls)
    if kind == "params":
        _subset(yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())[flow], shipped.model_dump(mode="json"), flow)
    elif kind == "overrides":
        load_config(flow, cls, overrides=payload)
    else:
        prefect_flow = spec.load_flow()
        params = payload.get("parameters") or {}
        assert set(params) <= {"config"}, f"{where}: the flows take one parameter, config"
        if params:
            # Prefect hands the whole dict to the model: unset fields get the model's defaults,
            # not params.yaml's, so a deployment must spell out what differs from the code.
            assert isinstance(prefect_flow.validate_parameters(params)["config"], cls)
        # with no parameters the form opens on params.yaml's values
        assert inspect.signature(prefect_flow.fn).parameters["config"].default == shipped


@pytest.mark.parametrize(
    "override, field, hint",
    [
        ("sparsities=[0.5, 1.0]", "stun.sparsities", "[0, 1)"),
        ("expert_fraction=-0.1", "stun.expert_fraction", "greater than or equal to 0"),
        ("calib_samples=0", "stun.calib_samples", "greater than or equal to 1"),
        ("owl_lambda=0.7", "stun.owl_lambda", "less than 0.5"),
        ("zoo.experts=0", "stun.zoo.experts", "greater than"),
        ("nm=2-4", "stun.nm", "N:M"),
        ("bogus=1", "stun.bogus", "Extra inputs"),
    ],
)
def test_bad_values_fail_before_any_work_naming_the_field_and_range(override, field, hint):
    from tasks.stun.config import StunConfig

    with pytest.raises(ConfigError) as e:
        load_config("stun", StunConfig, overrides=[override])
    assert field in str(e.value) and hint in str(e.value)


# ----------------------------------------------------------------------------- CLI


def test_cli_command_table_matches_the_parser():
    from flows.cli import COMMANDS, build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)


def test_cli_list_and_show(capsys):
    from flows.cli import main

    assert main(["list"]) == 0
    assert "stun" in capsys.readouterr().out
    assert main(["show", "stun"]) == 0
    out = capsys.readouterr().out
    for field in ("sparsities", "expert_fraction", "lambda2", "zoo"):
        assert field in out


def test_cli_run_rejects_a_bad_value_with_exit_code_2(capsys):
    from flows.cli import main

    assert main(["run", "stun", "--set", "sparsities=[1.5]"]) == 2
    assert capsys.readouterr().err.startswith("stun.sparsities: ")


def test_cli_unknown_flow_is_a_clear_error(capsys):
    from flows.cli import main

    assert main(["show", "nope"]) == 2
    assert "unknown flow 'nope'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- DVC + Prefect files


def test_dvc_yaml_has_a_stage_per_flow_running_its_cli():
    from flows import FLOWS

    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    for name in FLOWS:
        st = stages[name]
        assert st["cmd"] == f"paperline run {name}"
        assert name in st["params"]
        assert any(f"flows/{name}.py" == d for d in st["deps"])
        assert any(next(iter(m)) .startswith(f"data/{name}/") for m in st["metrics"])


def test_prefect_yaml_has_a_deployment_per_flow_with_an_inactive_cron():
    from flows import FLOWS
    from flows.platform.deployments import read_deployments

    deps = read_deployments(PROJECT_ROOT / "prefect.yaml")
    entries = {d["entrypoint"] for d in deps}
    for spec in FLOWS.values():
        assert f"flows/{spec.name}.py:{spec.function}" in entries
    for d in deps:
        assert d["schedules"] and all(s["cron"] and s["active"] is False for s in d["schedules"])


def test_deployments_build_with_their_schedules():
    from flows.platform.deployments import load_deployments

    deps = load_deployments(PROJECT_ROOT / "prefect.yaml")
    assert {d.name for d in deps} >= {"stun-weekly"}
    sched = deps[0].schedules[0]
    assert sched.active is False


def test_write_json_is_readable(tmp_path):
    p = write_json(tmp_path / "m.json", {"x": Path("/a"), "y": 1.5})
    assert p.read_text().strip().startswith("{")
