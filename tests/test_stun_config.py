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


def _tiny_moe(path, *, experts: int = 4, top_k: int = 2):
    """A complete Mixtral-layout checkpoint folder: config, safetensors weights, tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, MixtralConfig

    from tasks.stun.tokenizer import train_bpe

    torch.manual_seed(0)
    cfg = MixtralConfig(vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=2, num_local_experts=experts,
                        num_experts_per_tok=top_k, max_position_embeddings=64)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    train_bpe(["to be or not to be", "1+2=3. #### 3"] * 20, 300).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory):
    return _tiny_moe(tmp_path_factory.mktemp("moe"))


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_a_complete_moe_folder_is_accepted(tiny_moe):
    cfg = _load(f"model={tiny_moe}")
    assert cfg.experts_and_top_k() == (4, 2)


def test_a_truncated_weight_file_is_refused_at_validation_in_milliseconds(tiny_moe, tmp_path):
    import time

    bad = _copy(tiny_moe, tmp_path / "m")
    w = bad / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"stun\.model: model\.safetensors is truncated"):
        _load(f"model={bad}")
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "config.json").write_text("{ not json"), r"config\.json is not valid JSON"),
    (lambda d: (d / "config.json").write_bytes(b"\xff\xfe\x00"), r"config\.json is not valid JSON"),
    (lambda d: (d / "config.json").write_text("[1, 2]"), r"must hold a JSON object"),
    (lambda d: (d / "model.safetensors").unlink(), r"no safetensors weights"),
    (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 4), r"too short for a safetensors file"),
    (lambda d: (d / "model.safetensors").write_bytes((10**9).to_bytes(8, "little") + b"{}"), r"not a safetensors file"),
    (lambda d: [(d / f).unlink() for f in ("tokenizer.json",)], r"has no tokenizer"),
])
def test_a_damaged_model_folder_is_refused_naming_stun_model(tiny_moe, tmp_path, damage, message):
    bad = _copy(tiny_moe, tmp_path / "m")
    damage(bad)
    with pytest.raises(ConfigError, match=r"stun\.model: .*" + message) as e:
        _load(f"model={bad}")
    assert "Traceback" not in str(e.value)


@pytest.mark.parametrize("edit, message", [
    ({"num_local_experts": 0}, r"num_local_experts=0"),
    ({"num_local_experts": 1}, r"num_local_experts=1"),
    ({"num_experts_per_tok": 0}, r"num_experts_per_tok=0 with 4 experts"),
    ({"num_experts_per_tok": 5}, r"num_experts_per_tok=5 with 4 experts"),
])
def test_inconsistent_expert_counts_are_blamed_on_stun_model_not_the_budget(tiny_moe, tmp_path, edit, message):
    import json

    bad = _copy(tiny_moe, tmp_path / "m")
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(ConfigError, match=r"stun\.model: .*" + message) as e:
        _load(f"model={bad}")
    assert "expert_fraction" not in str(e.value)


def test_pickled_weights_are_refused_with_the_reason(tiny_moe, tmp_path):
    bad = _copy(tiny_moe, tmp_path / "m")
    (bad / "model.safetensors").rename(bad / "pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"stun\.model: .*pickled weights"):
        _load(f"model={bad}")


@pytest.mark.parametrize("override, field", [
    ("lambda1=.inf", "stun.lambda1"),
    ("lambda2=.nan", "stun.lambda2"),
    ("owl_M=.inf", "stun.owl_M"),
    ("sparsities=[.nan]", "stun.sparsities"),
    ("zoo.lr=.inf", "stun.zoo.lr"),
    ("calib_samples=100000000", "stun.calib_samples"),
    ("calib_seq_len=100000000", "stun.calib_seq_len"),
    ("calib_samples=4096", "stun.calib_samples"),  # 4096 x 128 is fine, x 512 is not
    ("eval_ppl_tokens=1000000000", "stun.eval_ppl_tokens"),
    ("eval_problems=10000000", "stun.eval_problems"),
    ("naee_max_combinations=1000000000000", "stun.naee_max_combinations"),
    ("resources.workers=100000", "stun.resources.workers"),
    ("zoo.seq_len=1000000", "stun.zoo.seq_len"),
    ("zoo.threads=0", "stun.zoo.threads"),
    ("seeds=[-1]", "stun.seeds"),
    ("expert_fractions=[1.5]", "stun.expert_fractions"),
    ("calib_data=/no/such/file.txt", "stun.calib_data"),
])
def test_non_finite_and_runaway_values_are_refused_naming_the_field(override, field):
    extra = ["calib_seq_len=512"] if override == "calib_samples=4096" else []
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        _load(override, *extra)
    if extra:
        assert _load(override).calib_samples == 4096


def test_device_and_cpus_live_in_the_shared_resources_section():
    with pytest.raises(ConfigError, match=r"stun\.device"):
        _load("device=cpu")
    with pytest.raises(ConfigError, match=r"stun\.profile_workers"):
        _load("profile_workers=2")
    cfg = _load("resources.device=cpu", "resources.workers=3")
    assert (cfg.resources.device, cfg.resources.workers) == ("cpu", 3)


@pytest.mark.parametrize("override, field", [
    ("keep_experts=9", "stun.keep_experts: keep_experts=9 is larger than the model's 8"),
    ("keep_experts=1", "stun.expert_fraction: .*fewer than the model's top-k=2"),
    ("expert_fraction=0.9", "expert_fraction=0.9"),
    ("sparsities=[-0.1]", "stun.sparsities"),
    ("sparsities=[1.0]", "stun.sparsities"),
    ("lambda1=0", "stun.lambda1: lambda1 and lambda2 are both 0"),
    ("expert_fractions=[0, 0.25, 0.9]", "stun.expert_fractions: x=0.9 leaves 1 experts"),
    ("export_sparsity=0.1", "stun.export_sparsity: 0.1 has no STUN variant"),
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
    for tag in ("s40", "s50", "s65", "s75", "s80"):
        for m in ("stun-owl-k7", "stun-owl-k6", "owl", "stun_experts"):
            assert f"{m}-{tag}" in names  # x = 0, 1/8, 1/4 and experts alone to S: Figure 1's row
    for m in ("naee", "frequency", "stun_experts", "stun_experts-global", "stun_experts-coact_raw",
              "stun_experts-coact_normalised"):
        assert f"{m}-k6" in names  # the expert-only studies at x = 1/4
    stun_owl_65 = next(v for v in variants if v.name == "stun-owl-k6-s65")
    assert stun_owl_65.keep == 6 and stun_owl_65.rate == pytest.approx(1 - 0.35 / 0.75)
    assert stun_owl_65.validate  # an export candidate (export_sparsity 0.65)


def test_nm_fixes_the_unstructured_rate_and_drops_owl():
    cfg = _load("nm=2:4", "unstructured=[wanda, owl]")
    variants = sweep_variants(cfg, 8, 2)
    assert not any(v.unstructured == "owl" for v in variants)
    assert all(v.rate == 0.5 for v in variants if v.unstructured)
    with pytest.raises(ConfigError, match="stun.nm"):
        _load("nm=2:4")  # unstructured defaults to [owl]


def test_a_model_by_path_leaves_a_zoo_record_for_dvc(tiny_moe, tmp_path, monkeypatch):
    """`model=<path>`: the dense-model step writes zoo/source.json (path + fingerprint), so the
    DVC stage's `data/stun/zoo` out exists and changes when the user's weights do."""
    import json

    from tasks.stun import steps

    monkeypatch.setenv("PAPERLINE_DATA", str(tmp_path / "data"))
    cfg = _load(f"model={tiny_moe}", "calib_data=" + str(_write(tmp_path / "c.txt", "some text\n\nmore text\n")))
    out = steps.prepare_model.fn(cfg, tmp_path / "unused-corpus", 0)
    out = out.result() if hasattr(out, "result") else out
    assert out == tiny_moe.resolve()
    rec = json.loads((tmp_path / "data" / "stun" / "zoo" / "source.json").read_text())
    assert rec["model"] == str(tiny_moe.resolve()) and {f["name"] for f in rec["files"]} >= {"config.json"}


def _write(path, text):
    path.write_text(text)
    return path


def test_the_presets_load_and_the_fine_grained_zoo_keeps_the_active_width():
    from pathlib import Path

    from tasks.common.config import load_config

    presets = Path(__file__).resolve().parents[1] / "tasks" / "stun" / "presets"
    paper = load_config("stun", StunConfig, params_path=presets / "paper.yaml")
    assert paper.seeds == [0, 1, 2] and paper.sparsities == _load().sparsities
    fine = load_config("stun", StunConfig, params_path=presets / "fine_grained.yaml")
    base = _load().zoo
    assert (fine.zoo.experts, fine.zoo.top_k) == (32, 4)
    # the same active expert width per token (top-k x intermediate), more experts to choose from
    assert fine.zoo.top_k * fine.zoo.intermediate == base.top_k * base.intermediate
    assert "naee" not in fine.baselines  # C(32, 8) subsets per layer: past NAEE's budget
    assert [round(fine.zoo.experts * (1 - x)) for x in fine.expert_fractions] == [32, 28, 24]
