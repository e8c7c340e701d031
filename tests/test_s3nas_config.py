"""The s3nas config refuses bad input before any work, naming the field; validating it (and
importing the flow, whose form default is the validated params.yaml section) does no work."""
from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

import pytest

from tasks.common.artifacts import PROJECT_ROOT
from tasks.common.config import ConfigError, load_config, validate
from tasks.s3nas.config import S3NASConfig

SMALL = ["supernet.resolution=16", "supernet.stem_channels=8", "supernet.stages=[[1, 8, 1], [1, 16, 2]]",
         "supernet.head_channels=32"]


class SimulatorCalled(AssertionError):
    pass


@pytest.fixture
def no_simulator(monkeypatch):
    """Any SCALE-Sim run (through the cache or directly) fails the test."""
    import scalesim.scale_sim

    from tasks.s3nas import npu

    def refuse(*a, **k):
        raise SimulatorCalled("the simulator ran")

    monkeypatch.setattr(npu, "run_scalesim", refuse)
    monkeypatch.setattr(npu.SimCache, "simulate_fn", staticmethod(refuse))
    monkeypatch.setattr(scalesim.scale_sim, "scalesim", refuse)


def _load(*overrides: str) -> S3NASConfig:
    return load_config("s3nas", S3NASConfig, overrides=list(overrides))


def _snapshot(root: Path) -> dict[str, int]:
    if not root.exists():
        return {}
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")} | {str(root): root.stat().st_mtime_ns}


def test_importing_the_flow_and_validating_its_config_writes_nothing_and_simulates_nothing(
        no_simulator, tmp_path, monkeypatch):
    data = tmp_path / "data"
    cache = tmp_path / "npu_cache"
    monkeypatch.setenv("PAPERLINE_DATA", str(data))
    monkeypatch.setenv("PAPERLINE_NPU_CACHE", str(cache))
    repo_data = _snapshot(PROJECT_ROOT / "data")
    t0 = time.perf_counter()
    if "flows.s3nas" in sys.modules:  # import it afresh: the form default is validated at import
        importlib.reload(sys.modules["flows.s3nas"])
    else:
        importlib.import_module("flows.s3nas")
    default = sys.modules["flows.s3nas"].s3nas.parameters  # the dashboard form's schema, built at import
    assert "config" in default.properties
    cfg = _load()
    again = validate(S3NASConfig, cfg.model_dump(mode="json"))
    small = _load(*SMALL, "target_latency_us=0.001")  # even an unreachable target validates: it needs the simulator
    assert again == cfg and small.target_latency_us == 0.001
    assert time.perf_counter() - t0 < 30
    assert not data.exists() and not cache.exists()
    assert _snapshot(PROJECT_ROOT / "data") == repo_data


def _floor(cfg, cache):
    from tasks.s3nas.lut import smallest_network_us

    return smallest_network_us(cfg, cache)


def test_a_target_below_the_smallest_network_is_refused_at_flow_start_with_its_floor(tmp_path):
    from tasks.s3nas.lut import check_target_reachable
    from tasks.s3nas.npu import SimCache

    cfg = _load(*SMALL, "target_latency_us=5")
    cache = SimCache(tmp_path, cfg.npu)
    with pytest.raises(ConfigError, match=r"s3nas\.target_latency_us: .*below the smallest network of the search space, [0-9.]+ µs"):
        check_target_reachable(cfg, cache)
    floor = _floor(cfg, cache)
    # the search target counts, not the final one
    ok = _load(*SMALL, f"target_latency_us={1.5 * floor}", "search_target_ratio=1.0")
    assert check_target_reachable(ok, cache) == pytest.approx(floor)
    with pytest.raises(ConfigError, match=r"s3nas\.target_latency_us: .*search_target_ratio 0.5 "):
        check_target_reachable(_load(*SMALL, f"target_latency_us={1.5 * floor}", "search_target_ratio=0.5"), cache)


def test_an_unknown_dataflow_names_the_nested_field():
    with pytest.raises(ConfigError, match=r"s3nas\.npu\.dataflow: .*'ws', 'os' or 'is'.*\(got 'systolic'\)"):
        _load(*SMALL, "npu.dataflow=systolic")


@pytest.mark.parametrize("override, field", [
    ("supernet.branch_kernels=[4, 5]", r"s3nas\.supernet\.branch_kernels"),
    ("supernet.branch_expansions=[2]", r"s3nas\.supernet\.branch_expansions"),
    ("warmup_epochs=5", r"s3nas\.warmup_epochs: .*no latency phase"),
    ("supernet.resolution=30", r"s3nas\.supernet\.resolution"),
    ("npu.array_rows=1", r"s3nas\.npu\.array_rows"),
    ("width_choices=[]", r"s3nas\.width_choices"),
    ("bogus=1", r"s3nas\.bogus"),
    ("device=cuda", r"s3nas\.device"),  # moved to the shared resources section
    ("lut_workers=2", r"s3nas\.lut_workers"),
    ("resources.device=gpu", r"s3nas\.resources\.device"),
])
def test_bad_values_name_their_field(override, field):
    with pytest.raises(ConfigError, match=field):
        _load(*SMALL, override)


@pytest.mark.parametrize("values, field", [
    # sizes that allocated (the probes: validation itself grew to 95 GiB)
    ({"supernet": {"stem_channels": 100_000_000}}, r"s3nas\.supernet\.stem_channels: .*less than or equal to 512"),
    ({"npu": {"dram_bw_words": 10**12}}, r"s3nas\.npu\.dram_bw_words: .*less than or equal to 1024"),
    ({"npu": {"ifmap_sram_kb": 10**9}}, r"s3nas\.npu\.ifmap_sram_kb"),
    ({"supernet": {"stages": [[1, 16, 1], [10**6, 24, 2]]}}, r"s3nas\.supernet\.stages"),
    ({"supernet": {"head_channels": 10**7}}, r"s3nas\.supernet\.head_channels"),
    ({"supernet": {"branch_kernels": [9, 9, 9, 9], "branch_expansions": [16, 16, 16, 16], "expansion_step": 1}},
     r"s3nas\.supernet\.branch_kernels: .*joint choices per block"),
    ({"n_train": 10**9}, r"s3nas\.n_train"),
    ({"n_train": 59_000, "n_val": 5_000}, r"s3nas\.n_val: .*exceeds the 60000 training images"),
    ({"heldout_networks": 10**7}, r"s3nas\.heldout_networks"),
    ({"resources": {"workers": 10**7}}, r"s3nas\.resources\.workers"),
    ({"batch_size": 10**7}, r"s3nas\.batch_size"),
    ({"final_epochs": 10**9}, r"s3nas\.final_epochs"),
    ({"width_choices": [1.0, 1e6]}, r"s3nas\.width_choices"),
    ({"target_latency_us": 1e300}, r"s3nas\.target_latency_us"),
    # integers given as floats are refused, not truncated
    ({"supernet": {"stem_channels": 1e8}}, r"s3nas\.supernet\.stem_channels: Input should be a valid integer"),
    ({"n_train": 4000.0}, r"s3nas\.n_train: Input should be a valid integer"),
    ({"supernet": {"stages": [[1, 16.0, 1]]}}, r"s3nas\.supernet\.stages\.0\.1: Input should be a valid integer"),
    # every float is finite
    ({"lr": float("inf")}, r"s3nas\.lr: Input should be a finite number"),
    ({"latency_lambda": float("nan")}, r"s3nas\.latency_lambda: Input should be a finite number"),
    ({"npu": {"clock_mhz": float("inf")}}, r"s3nas\.npu\.clock_mhz"),
    ({"depth_choices": [1.0, float("nan")]}, r"s3nas\.depth_choices"),
])
def test_sizes_are_bounded_integers_integral_and_floats_finite_without_any_work(values, field, no_simulator, tmp_path,
                                                                               monkeypatch):
    monkeypatch.setenv("PAPERLINE_DATA", str(tmp_path / "data"))
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=field):
        validate(S3NASConfig, values, flow="s3nas")
    assert time.perf_counter() - t0 < 1.0
    assert not (tmp_path / "data").exists()


def test_the_cli_form_of_the_probes_is_refused_too():
    # '1e8' on the command line is YAML for the string "1e8", not a number
    with pytest.raises(ConfigError, match=r"s3nas\.supernet\.stem_channels"):
        _load("supernet.stem_channels=1e8")
    with pytest.raises(ConfigError, match=r"s3nas\.npu\.dram_bw_words"):
        _load("npu.dram_bw_words=1000000000000")


def test_params_yaml_section_is_the_model_defaults(no_simulator):
    import yaml

    from tasks.common.config import default_params_path

    section = yaml.safe_load(default_params_path().read_text())["s3nas"]
    defaults = S3NASConfig.model_construct().model_dump(mode="json")
    assert section == defaults
    assert "device" not in section and "lut_workers" not in section and "resources" in section
    cfg = _load()  # the shipped defaults validate, with no simulator
    assert cfg.search_target_us < cfg.target_latency_us


def test_the_shipped_target_is_reachable_on_the_shipped_npu(tmp_path):
    from tasks.s3nas.lut import check_target_reachable
    from tasks.s3nas.npu import SimCache

    cfg = _load()
    floor = check_target_reachable(cfg, SimCache(tmp_path, cfg.npu))
    assert 0 < floor < cfg.search_target_us
    assert os.listdir(tmp_path)  # the check simulated into the cache it was given, nowhere else
