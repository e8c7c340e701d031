"""Every registered MoE family: fused in-memory experts ⇄ per-expert keys on disk, one layer
built alone behaves like the same layer inside the model, and dense models are refused."""
from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForCausalLM, LlamaConfig, MixtralConfig, OlmoeConfig, Qwen2MoeConfig, Qwen3MoeConfig,
)

from tasks.stun.adapters import ADAPTERS, MoEModelError, ShardReader, adapter_for
from tasks.stun.checkpoint import load_checkpoint, save_checkpoint

KW = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
          num_experts_per_tok=2, eos_token_id=0, bos_token_id=0, pad_token_id=0)
CONFIGS = {
    "mixtral": lambda: MixtralConfig(num_local_experts=4, intermediate_size=8, **KW),
    "qwen2_moe": lambda: Qwen2MoeConfig(num_experts=4, moe_intermediate_size=8, shared_expert_intermediate_size=8,
                                        intermediate_size=8, **KW),
    "qwen3_moe": lambda: Qwen3MoeConfig(num_experts=4, moe_intermediate_size=8, intermediate_size=8, **KW),
    "olmoe": lambda: OlmoeConfig(num_experts=4, intermediate_size=8, **KW),
}


def test_the_registry_knows_the_four_families():
    assert ADAPTERS.list() == sorted(CONFIGS)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_a_layer_read_from_disk_equals_the_layer_in_memory(family, tmp_path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS[family]()).eval()
    model.save_pretrained(tmp_path)
    ad = adapter_for(model)
    assert ad.family == family
    disk = ShardReader(tmp_path).read("model.layers.1.")
    state = ad.disk_to_memory(1, disk)
    assert {k: v.shape for k, v in ad.memory_to_disk(state).items()} == {k: v.shape for k, v in disk.items()}
    layer = ad.decoder_layer(model.config, 1)
    layer.load_state_dict(state, strict=True)
    x = torch.randn(1, 5, 16)
    pos = torch.arange(5)[None]
    pe = ad.rotary_embedding(model.config)(x, pos)
    mask = torch.full((5, 5), float("-inf")).triu(1)[None, None]
    with torch.no_grad():
        ref = model.model.layers[1](x, position_embeddings=pe, attention_mask=mask, position_ids=pos)
        got = layer(x, position_embeddings=pe, attention_mask=mask, position_ids=pos)
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_variable_width_checkpoints_round_trip(family, tmp_path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS[family]()).eval()
    ad = adapter_for(model)
    b0, b1 = ad.moe_blocks(model)
    ad.keep_experts(b0, [0, 2, 3])
    ad.keep_experts(b1, [1, 3])
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        ref = model(ids).logits
    save_checkpoint(model, tmp_path)
    loaded, _ = load_checkpoint(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, ref)


def test_a_dense_model_is_refused():
    with pytest.raises(MoEModelError, match="not a Mixture-of-Experts"):
        adapter_for(LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2))


def test_an_unknown_moe_family_is_refused_with_the_known_ones():
    cfg = LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    cfg.model_type = "someones_moe"
    cfg.num_experts = 8
    with pytest.raises(MoEModelError, match="unknown MoE layout.*mixtral, olmoe, qwen2_moe, qwen3_moe"):
        adapter_for(cfg)
