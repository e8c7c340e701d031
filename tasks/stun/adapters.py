"""Family adapters for Hugging Face Mixture-of-Experts models (STUN works on any of them).

Each adapter knows where a family keeps its router and experts — in memory (transformers 5.x
fuses the experts of a layer into 3-D tensors ``gate_up_proj [E, 2I, H]`` and ``down_proj
[E, H, I]``) and on disk (``save_pretrained`` writes classic per-expert keys) — and how to
build one decoder layer on its own, which is what lets pruning stream a model layer by layer
from its safetensors shards. Families register themselves by name, timm-style.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from tasks.common.registry import Registry


class MoEModelError(ValueError):
    """The model (or path) given as ``model`` cannot be pruned by STUN; the message says why."""


@dataclass(frozen=True)
class MoEAdapter:
    family: str
    #: transformers module holding the family's classes, e.g. ``transformers.models.mixtral``
    module: str
    #: class-name prefix inside that module, e.g. ``Mixtral``
    prefix: str
    #: config attribute holding the number of routed experts per layer
    num_experts_attr: str
    #: config attribute holding one routed expert's intermediate width
    intermediate_attr: str
    #: on-disk name of the MoE block inside a decoder layer
    disk_block: str
    #: on-disk names of one expert's (gate, up, down) projections
    disk_proj: tuple[str, str, str]
    has_shared_expert: bool = False

    # ------------------------------------------------------------------ config level
    def num_experts(self, config: Any) -> int:
        return int(getattr(config, self.num_experts_attr))

    def set_num_experts(self, config: Any, n: int) -> None:
        setattr(config, self.num_experts_attr, int(n))

    def top_k(self, config: Any) -> int:
        return int(config.num_experts_per_tok)

    def _cls(self, suffix: str) -> type:
        mod = importlib.import_module(f"{self.module}.modeling_{self.module.rsplit('.', 1)[-1]}")
        return getattr(mod, f"{self.prefix}{suffix}")

    def decoder_layer(self, config: Any, layer_idx: int) -> nn.Module:
        """A freshly initialised decoder layer of this family (weights to be loaded)."""
        return self._cls("DecoderLayer")(config, layer_idx)

    def rotary_embedding(self, config: Any) -> nn.Module:
        return self._cls("RotaryEmbedding")(config)

    def final_norm(self, config: Any) -> nn.Module:
        return self._cls("RMSNorm")(config.hidden_size, eps=config.rms_norm_eps)

    # ------------------------------------------------------------------ module level
    def moe_blocks(self, model: nn.Module) -> list[nn.Module]:
        """The MoE block of every decoder layer, in order."""
        layers = _decoder_layers(model)
        blocks = [layer.mlp for layer in layers]
        if not all(hasattr(b, "experts") and hasattr(b, "gate") for b in blocks):
            raise MoEModelError(f"{self.family}: some decoder layers have no MoE block (mixed dense/MoE stacks are not supported)")
        return blocks

    @staticmethod
    def router_weight(block: nn.Module) -> torch.Tensor:
        return block.gate.weight  # W [E, H]; row i is expert i's router vector

    @staticmethod
    def expert_tensors(block: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        return block.experts.gate_up_proj, block.experts.down_proj  # [E, 2I, H], [E, H, I]

    def expert_vectors(self, block: nn.Module) -> torch.Tensor:
        """Each expert's weights (w1, w3, w2) flattened into one row: [E, 3·I·H]."""
        gu, down = self.expert_tensors(block)
        return torch.cat([gu.flatten(1), down.flatten(1)], dim=1)

    @staticmethod
    def expert_activation(block: nn.Module) -> Any:
        return block.experts.act_fn

    @torch.no_grad()
    def keep_experts(self, block: nn.Module, keep: list[int], merged: dict[int, list[int]] | None = None) -> None:
        """Shrink a block to the experts ``keep`` (in that order).

        ``merged`` maps a kept expert to the cluster whose mean replaces it (selective
        reconstruction): its weights and router row become the members' means.
        """
        gu, down = self.expert_tensors(block)
        w = self.router_weight(block)
        idx = torch.as_tensor(keep, dtype=torch.long, device=w.device)
        new_gu, new_down, new_w = gu.data[idx].clone(), down.data[idx].clone(), w.data[idx].clone()
        for pos, e in enumerate(keep):
            members = (merged or {}).get(e)
            if members and len(members) > 1:
                m = torch.as_tensor(members, dtype=torch.long, device=w.device)
                new_gu[pos], new_down[pos], new_w[pos] = gu.data[m].mean(0), down.data[m].mean(0), w.data[m].mean(0)
        block.experts.gate_up_proj = nn.Parameter(new_gu, requires_grad=False)
        block.experts.down_proj = nn.Parameter(new_down, requires_grad=False)
        block.gate.weight = nn.Parameter(new_w, requires_grad=False)
        block.experts.num_experts = len(keep)
        block.gate.num_experts = len(keep)
        # A layer with fewer experts than top-k would route to non-existent experts.
        block.gate.top_k = min(block.gate.top_k, len(keep))

    # ------------------------------------------------------------------ disk level
    def disk_to_memory(self, layer_idx: int, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """On-disk keys of one layer (prefix ``model.layers.{i}.`` stripped) → in-memory keys."""
        out: dict[str, torch.Tensor] = {}
        experts: dict[int, dict[str, torch.Tensor]] = {}
        g, u, d = self.disk_proj
        blk = self.disk_block
        for k, v in tensors.items():
            if k.startswith(f"{blk}.experts."):
                e, proj = k[len(f"{blk}.experts.") :].split(".", 1)
                experts.setdefault(int(e), {})[proj.split(".")[0]] = v
            elif k.startswith(f"{blk}."):
                out["mlp." + k[len(blk) + 1 :]] = v
            else:
                out[k] = v
        if experts:
            ids = sorted(experts)
            if ids != list(range(len(ids))):
                raise MoEModelError(f"layer {layer_idx}: expert indices on disk are not contiguous: {ids}")
            out["mlp.experts.gate_up_proj"] = torch.stack([torch.cat([experts[e][g], experts[e][u]], 0) for e in ids])
            out["mlp.experts.down_proj"] = torch.stack([experts[e][d] for e in ids])
        return out

    def memory_to_disk(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Inverse of :meth:`disk_to_memory` for one layer's state dict."""
        g, u, d = self.disk_proj
        blk = self.disk_block
        out: dict[str, torch.Tensor] = {}
        for k, v in state.items():
            if k == "mlp.experts.gate_up_proj":
                inter = v.shape[1] // 2
                for e in range(v.shape[0]):
                    out[f"{blk}.experts.{e}.{g}.weight"] = v[e, :inter].contiguous()
                    out[f"{blk}.experts.{e}.{u}.weight"] = v[e, inter:].contiguous()
            elif k == "mlp.experts.down_proj":
                for e in range(v.shape[0]):
                    out[f"{blk}.experts.{e}.{d}.weight"] = v[e].contiguous()
            elif k.startswith("mlp."):
                out[f"{blk}.{k[4:]}"] = v
            else:
                out[k] = v
        return out


ADAPTERS: Registry[MoEAdapter] = Registry("MoE family")
_BY_MODEL_TYPE: dict[str, str] = {}


def register_adapter(adapter: MoEAdapter, model_types: tuple[str, ...]) -> MoEAdapter:
    ADAPTERS.register(adapter.family)(adapter)
    for t in model_types:
        _BY_MODEL_TYPE[t] = adapter.family
    return adapter


register_adapter(
    MoEAdapter("mixtral", "transformers.models.mixtral", "Mixtral", "num_local_experts", "intermediate_size",
               "block_sparse_moe", ("w1", "w3", "w2")),
    ("mixtral",),
)
register_adapter(
    MoEAdapter("qwen2_moe", "transformers.models.qwen2_moe", "Qwen2Moe", "num_experts", "moe_intermediate_size",
               "mlp", ("gate_proj", "up_proj", "down_proj"), has_shared_expert=True),
    ("qwen2_moe",),
)
register_adapter(
    MoEAdapter("qwen3_moe", "transformers.models.qwen3_moe", "Qwen3Moe", "num_experts", "moe_intermediate_size",
               "mlp", ("gate_proj", "up_proj", "down_proj")),
    ("qwen3_moe",),
)
register_adapter(
    MoEAdapter("olmoe", "transformers.models.olmoe", "Olmoe", "num_experts", "intermediate_size",
               "mlp", ("gate_proj", "up_proj", "down_proj")),
    ("olmoe",),
)

_DENSE_HINT = ("llama", "mistral", "qwen2", "qwen3", "gpt2", "olmo", "phi", "gemma", "bert")


def adapter_for(config_or_model: Any) -> MoEAdapter:
    """The adapter of a config/model; clear errors for dense models and unknown layouts."""
    config = getattr(config_or_model, "config", config_or_model)
    mt = getattr(config, "model_type", None)
    if mt in _BY_MODEL_TYPE:
        return ADAPTERS.get(_BY_MODEL_TYPE[mt])
    n_exp = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None)
    if not n_exp or mt in _DENSE_HINT:
        raise MoEModelError(
            f"model_type {mt!r} is not a Mixture-of-Experts model (no experts in its config); "
            f"STUN prunes MoE models: {', '.join(ADAPTERS.list())}"
        )
    raise MoEModelError(
        f"unknown MoE layout model_type={mt!r}; supported families: {', '.join(ADAPTERS.list())} "
        "(register a new MoEAdapter in tasks/stun/adapters.py)"
    )


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise MoEModelError(f"{type(model).__name__} has no decoder layers at .model.layers")
    return layers


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return _decoder_layers(model)


# ---------------------------------------------------------------------- checkpoints on disk


def read_config(path: Path | str) -> Any:
    """The HF config of a checkpoint folder, validated as a supported MoE."""
    from transformers import AutoConfig

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model: checkpoint path does not exist: {path}")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise MoEModelError(f"model: {path} is not a Hugging Face checkpoint folder (no config.json)")
    try:
        raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MoEModelError(f"model: {cfg_file} is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise MoEModelError(f"model: {cfg_file} must hold a JSON object, got {type(raw).__name__}")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except Exception as e:  # transformers raises ValueError/KeyError/OSError/TypeError for a bad config
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MoEModelError(f"model: {cfg_file} is not a config transformers can read: {first}") from None
    adapter_for(config)
    return config


#: files any of which makes a folder's tokenizer loadable by ``AutoTokenizer`` (fast, sentencepiece, BPE)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
#: bytes per element of the safetensors dtypes
_ST_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
#: a safetensors header larger than this is not a header (the format caps it at 100 MB)
_MAX_HEADER = 100 * 2**20


def check_safetensors(file: Path) -> int:
    """Read a safetensors file's header and check the file holds exactly the bytes it declares.

    Cheap (the header only, never the tensors), so a truncated or mangled weight file is refused
    in milliseconds rather than when a worker loads it. Returns the number of tensors.
    """
    size = file.stat().st_size
    if size < 8:
        raise MoEModelError(f"model: {file.name} has {size} bytes, too short for a safetensors file")
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > min(size - 8, _MAX_HEADER):
            raise MoEModelError(f"model: {file.name} is not a safetensors file or is truncated "
                                f"(header of {n} bytes in a {size}-byte file)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise MoEModelError(f"model: {file.name}: its safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise MoEModelError(f"model: {file.name}: its safetensors header is not a JSON object")
    end = 0
    tensors = 0
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = (int(x) for x in spec["data_offsets"])
            count = 1
            for d in spec["shape"]:
                count *= int(d)
            itemsize = _ST_ITEMSIZE[spec["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise MoEModelError(f"model: {file.name}: tensor {name!r} has a malformed header entry") from None
        if stop - begin != count * itemsize:
            raise MoEModelError(f"model: {file.name}: tensor {name!r} spans {stop - begin} bytes, "
                                f"its shape and dtype need {count * itemsize}")
        end = max(end, stop)
        tensors += 1
    if 8 + n + end != size:
        what = "truncated" if 8 + n + end > size else "longer than its header declares"
        raise MoEModelError(f"model: {file.name} is {what}: the header declares {8 + n + end} bytes, "
                            f"the file has {size}")
    return tensors


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder (from its index when sharded)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise MoEModelError(f"model: {index} is not a valid safetensors index") from None
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise MoEModelError(f"model: {path} lacks weight shards listed in its index: {', '.join(missing[:5])}")
        return [path / n for n in names]
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise MoEModelError(f"model: {path} holds pickled weights (.bin/.pt); only safetensors are loaded "
                            "(convert with save_pretrained(safe_serialization=True))")
    raise MoEModelError(f"model: no safetensors weights in {path}")


def check_model_folder(path: Path | str) -> Any:
    """A user's checkpoint folder, checked before any work starts; returns its HF config.

    ``config.json`` parses and names a supported MoE family; its expert count and top-k are
    consistent (at least two experts, 1 <= top-k <= experts); every safetensors file exists and
    holds exactly the bytes its header declares; a tokenizer is present. Each failure is a
    :class:`MoEModelError` (or ``FileNotFoundError``) starting with ``model:``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MoEModelError(f"model: {path} is a file; give the checkpoint's folder")
    config = read_config(path)
    ad = adapter_for(config)
    try:
        n, k = ad.num_experts(config), ad.top_k(config)
    except (AttributeError, TypeError, ValueError):
        raise MoEModelError(f"model: {path}/config.json lacks {ad.num_experts_attr} or num_experts_per_tok") from None
    if n < 2:
        raise MoEModelError(f"model: {path}/config.json has {ad.num_experts_attr}={n}; STUN prunes experts of a "
                            "Mixture-of-Experts model with at least 2 per layer")
    if not 1 <= k <= n:
        raise MoEModelError(f"model: {path}/config.json has num_experts_per_tok={k} with {n} experts per layer")
    for f in weight_files(path):
        check_safetensors(f)
    if not any((path / t).is_file() for t in TOKENIZER_FILES):
        raise MoEModelError(f"model: {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})")
    return config


class ShardReader:
    """Reads tensors of a safetensors checkpoint by key prefix, one shard file open at a time."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            self.weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        elif (self.path / "model.safetensors").is_file():
            from safetensors import safe_open

            with safe_open(self.path / "model.safetensors", "pt") as f:
                self.weight_map = {k: "model.safetensors" for k in f.keys()}
        else:
            raise MoEModelError(f"model: no safetensors weights in {self.path}")

    def keys(self, prefix: str = "") -> list[str]:
        return [k for k in self.weight_map if k.startswith(prefix)]

    def read(self, prefix: str, *, strip: bool = True) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        by_file: dict[str, list[str]] = {}
        for k in self.keys(prefix):
            by_file.setdefault(self.weight_map[k], []).append(k)
        out: dict[str, torch.Tensor] = {}
        for fname, keys in by_file.items():
            with safe_open(self.path / fname, "pt") as f:
                for k in keys:
                    out[k[len(prefix) :] if strip else k] = f.get_tensor(k)
        return out

    def layer_prefixes(self) -> Iterator[str]:
        n = 1 + max(int(k.split(".")[2]) for k in self.keys("model.layers."))
        for i in range(n):
            yield f"model.layers.{i}."
