"""The stun config refuses bad input before any work, naming the field."""
from __future__ import annotations

import pytest

from tasks.common.config import ConfigError, load_config
from tasks.stun.config import StunConfig, unstructured_rate
from tasks.stun.sweep import sweep_variants


def _load(*overrides: str) -> StunConfig:
    return load_config("stun", StunConfig, overrides=list(overrides))


def test_a_missing_model_path_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"stun\.model: .*does not exist"):
        _load(f"model={tmp_path / 'nope'}")


def test_a_dense_model_is_refused_as_not_moe(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"stun\.model: .*not a Mixture-of-Experts"):
        _load(f"model={tmp_path}")


def test_a_folder_without_config_is_not_a_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match=r"stun\.model: .*no config\.json"):
        _load(f"model={tmp_path}")


def test_an_unknown_moe_layout_is_refused(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mixtral", "num_local_experts": 4}))
    cfg = _load(f"model={tmp_path}")  # a known family loads
    assert cfg.experts_and_top_k() == (4, 2)


@pytest.mark.parametrize("override, field", [
    ("keep_experts=9", "stun.keep_experts: keep_experts=9 is larger than the model's 8"),
    ("keep_experts=1", "stun.expert_fraction: .*fewer than the model's top-k=2"),
    ("expert_fraction=0.9", "expert_fraction=0.9"),
    ("sparsities=[-0.1]", "stun.sparsities"),
    ("sparsities=[1.0]", "stun.sparsities"),
    ("lambda1=0", "stun.lambda1: lambda1 and lambda2 are both 0"),
])
def test_budgets_and_sparsities_outside_the_model_are_refused(override, field):
    extra = ["lambda2=0"] if override == "lambda1=0" else []
    with pytest.raises(ConfigError, match=field.replace("[", r"\[")):
        _load(override, *extra)


def test_stun_split_keeps_the_total_sparsity():
    # (1 - x)(1 - u) = 1 - S
    for s, x in [(0.4, 0.25), (0.5, 0.25), (0.65, 0.25), (0.5, 0.5)]:
        u = unstructured_rate(s, x)
        assert (1 - x) * (1 - u) == pytest.approx(1 - s)
    with pytest.raises(ValueError, match="sparsities"):
        unstructured_rate(0.2, 0.25)


def test_the_default_sweep_has_every_method_at_every_level():
    cfg = _load()
    variants = sweep_variants(cfg, 8, 2)
    names = {v.name for v in variants}
    assert len(names) == len(variants)
    for tag in ("s40", "s50", "s65"):
        for m in ("stun-wanda", "stun-owl", "wanda", "owl", "naee", "frequency", "stun_experts"):
            assert f"{m}-{tag}" in names
    stun_owl_65 = next(v for v in variants if v.name == "stun-owl-s65")
    assert stun_owl_65.keep == 6 and stun_owl_65.rate == pytest.approx(1 - 0.35 / 0.75)
    naee_65 = next(v for v in variants if v.name == "naee-s65")
    assert naee_65.keep == 3  # round(8 · 0.35)


def test_nm_fixes_the_unstructured_rate_and_drops_owl():
    cfg = _load("nm=2:4", "export_method=wanda", "unstructured=[wanda, owl]")
    variants = sweep_variants(cfg, 8, 2)
    assert not any(v.unstructured == "owl" for v in variants)
    assert all(v.rate == 0.5 for v in variants if v.unstructured)
    with pytest.raises(ConfigError, match="stun.nm"):
        _load("nm=2:4")  # export_method defaults to owl
