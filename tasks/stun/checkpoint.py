"""Saving and loading (pruned) MoE checkpoints as safetensors Hugging Face folders.

A per-layer-uniform expert budget is a plain config change (``num_local_experts`` /
``num_experts``), so its checkpoint loads in stock transformers. A global budget leaves layers
with different expert counts (STUN's variable-width MoE); stock transformers cannot build
that, so the counts are recorded in ``config.json`` under ``paperline_experts_per_layer`` and
:func:`load_checkpoint` rebuilds the model before loading the weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapters import ShardReader, adapter_for, read_config

EXPERTS_PER_LAYER = "paperline_experts_per_layer"


def experts_per_layer(model: nn.Module) -> list[int]:
    ad = adapter_for(model)
    return [int(b.experts.num_experts) for b in ad.moe_blocks(model)]


def save_checkpoint(model: nn.Module, out_dir: Path | str, tokenizer: Any | None = None) -> Path:
    """``save_pretrained`` (safetensors) with the config made true to the pruned shapes."""
    out_dir = Path(out_dir)
    ad = adapter_for(model)
    counts = experts_per_layer(model)
    cfg = model.config
    if len(set(counts)) == 1:
        ad.set_num_experts(cfg, counts[0])
        if hasattr(cfg, EXPERTS_PER_LAYER):
            delattr(cfg, EXPERTS_PER_LAYER)
    else:
        ad.set_num_experts(cfg, max(counts))
        setattr(cfg, EXPERTS_PER_LAYER, counts)
    cfg.num_experts_per_tok = min(cfg.num_experts_per_tok, min(counts))
    model.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir


def load_checkpoint(
    path: Path | str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[nn.Module, Any]:
    """Model (eval mode) and tokenizer of a checkpoint folder, uniform or variable-width."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    config = read_config(path)
    tokenizer = AutoTokenizer.from_pretrained(path) if (path / "tokenizer_config.json").is_file() else None
    counts = getattr(config, EXPERTS_PER_LAYER, None)
    # On CPU the per-expert loop beats grouped_mm, which copies every expert's weights per call.
    impl = {"experts_implementation": "eager"} if torch.device(device).type == "cpu" else {}
    if counts is None:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, trust_remote_code=False, **impl)
    else:
        model = load_variable_width(path, config, **impl)
        if dtype is not None:
            model = model.to(dtype)
    return model.to(device).eval(), tokenizer


def load_variable_width(path: Path, config: Any, **model_kwargs: Any) -> nn.Module:
    from transformers import AutoModelForCausalLM

    ad = adapter_for(config)
    counts = list(getattr(config, EXPERTS_PER_LAYER))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False, **model_kwargs)
    for block, n in zip(ad.moe_blocks(model), counts):
        ad.keep_experts(block, list(range(n)))
    reader = ShardReader(path)
    state: dict[str, torch.Tensor] = {}
    layer_prefixes = set(reader.layer_prefixes())
    for i, prefix in enumerate(sorted(layer_prefixes, key=lambda p: int(p.split(".")[2]))):
        for k, v in ad.disk_to_memory(i, reader.read(prefix)).items():
            state[prefix + k] = v
    for k, v in reader.read("", strip=False).items():
        if not any(k.startswith(p) for p in layer_prefixes):
            state[k] = v
    if getattr(config, "tie_word_embeddings", False) and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers (rotary inv_freq) were created on meta: rebuild them on CPU.
    for name, mod in model.named_modules():
        if hasattr(mod, "inv_freq") and mod.inv_freq.is_meta:
            fresh = type(mod)(config)
            mod.inv_freq = fresh.inv_freq
            if hasattr(mod, "original_inv_freq"):
                mod.original_inv_freq = fresh.original_inv_freq
    return model


def copy_checkpoint(src: Path | str, dst: Path | str) -> Path:
    """Copy a checkpoint folder's files (not its hidden bookkeeping) into ``dst``."""
    import shutil

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(Path(src).iterdir()):
        if f.is_file() and not f.name.startswith("."):
            shutil.copy2(f, dst / f.name)
    return dst
