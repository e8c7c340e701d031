"""The s3nas config refuses bad input before any work, naming the field."""
from __future__ import annotations

import pytest

from tasks.common.config import ConfigError, load_config
from tasks.s3nas.config import S3NASConfig

SMALL = ["supernet.resolution=16", "supernet.stem_channels=8", "supernet.stages=[[1, 8, 1], [1, 16, 2]]",
         "supernet.head_channels=32"]


@pytest.fixture(autouse=True)
def _npu_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PAPERLINE_NPU_CACHE", str(tmp_path_factory.getbasetemp() / "npu_cache"))


def _load(*overrides: str) -> S3NASConfig:
    return load_config("s3nas", S3NASConfig, overrides=list(overrides))


def test_a_target_below_the_smallest_network_is_refused_with_its_floor():
    with pytest.raises(ConfigError, match=r"s3nas\.target_latency_us: .*below the smallest network of the search space, [0-9.]+ µs"):
        _load(*SMALL, "target_latency_us=5")


def test_the_search_target_counts_too():
    from tasks.s3nas.npu import SimCache, network_cycles
    from tasks.s3nas.space import network_layers, smallest_arch

    cfg = _load(*SMALL, "target_latency_us=1000")
    floor = network_cycles(network_layers(smallest_arch(cfg.supernet)), SimCache.default(cfg.npu)) / cfg.npu.clock_mhz
    assert _load(*SMALL, f"target_latency_us={1.5 * floor}", "search_target_ratio=1.0").search_target_us == 1.5 * floor
    with pytest.raises(ConfigError, match=r"s3nas\.target_latency_us: .*search_target_ratio 0.5 "):
        _load(*SMALL, f"target_latency_us={1.5 * floor}", "search_target_ratio=0.5")


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
])
def test_bad_values_name_their_field(override, field):
    with pytest.raises(ConfigError, match=field):
        _load(*SMALL, override)


def test_params_yaml_section_is_the_model_defaults():
    import yaml

    from tasks.common.config import default_params_path

    section = yaml.safe_load(default_params_path().read_text())["s3nas"]
    defaults = S3NASConfig.model_construct().model_dump(mode="json")
    assert section == defaults
    cfg = _load()  # the shipped defaults validate, feasibility included
    assert cfg.search_target_us < cfg.target_latency_us
