"""STUN stage 2 at scale: Wanda / OWL / magnitude pruning streamed layer by layer from safetensors.

This is the Wanda/SparseGPT streaming skeleton (METHODS.md §1.3, "optimized to fit 480B on one
80GB GPU"): embed the calibration tokens once, then for each decoder layer read only that layer's
tensors from the shards, build it alone, run the calibration activations through it with hooks
that accumulate per-expert ‖X_j‖² (:class:`~tasks.stun.unstructured.ExpertInputStats`), prune
its MoE expert weights, re-run the *pruned* layer so its outputs feed the next layer, write it to
its own output shard and free it. Memory is one layer plus the calibration activations [N, T, H],
never the model. OWL needs every layer's outlier ratio before it can pick layer sparsities; as in
the OWL reference code, a first streaming pass computes LOD_l from Wanda scores with *dense*
propagation (no pruning), then the pruning pass runs with the chosen per-layer sparsities.
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import shutil
import struct
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from torch import Tensor, nn

from tasks.common.devices import compute_dtype, pick_device

from .adapters import MoEAdapter, MoEModelError, ShardReader, adapter_for, read_config
from .checkpoint import EXPERTS_PER_LAYER
from .unstructured import (
    PRUNING_METHODS,
    ExpertInputStats,
    block_outlier_ratio,
    check_nm,
    check_sparsity,
    count_zeros,
    magnitude_scores,
    make_mask,
    owl_from_lod,
    prunable_tensors,
    prune_block_experts,
    wanda_scores,
)

LAYER_PREFIX = "model.layers."
EMBED_KEY = "model.embed_tokens.weight"

# ---------------------------------------------------------------------------------- safetensors I/O

_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        _ST_DTYPES[_name] = getattr(torch, _attr)
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


def _write_safetensors(path: Path, specs: dict[str, tuple[torch.dtype, tuple[int, ...]]],
                       fetch: Callable[[str], Tensor]) -> int:
    """Write a safetensors file one tensor at a time; returns the bytes of tensor data.

    ``safetensors.torch.save_file`` refuses tensors that share storage (our per-expert views of
    the fused weights) and would need a copy of the whole layer; this writer streams each
    tensor's bytes straight from memory, so writing costs no extra layer.
    """
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for k, (dtype, shape) in specs.items():
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[k] = {"dtype": _ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # 8-byte alignment of the data section
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for k, (dtype, shape) in specs.items():
            t = fetch(k).detach()
            if t.dtype != dtype or tuple(t.shape) != tuple(shape):
                raise RuntimeError(f"{k}: got {t.dtype}{tuple(t.shape)}, header says {dtype}{tuple(shape)}")
            t = t.to("cpu").contiguous().reshape(-1)
            if t.numel():
                f.write(t.view(torch.uint8).numpy().data)
            del t
        f.flush()
        os.fsync(f.fileno())
    return offset


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """(safetensors header, byte offset of its data section)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def _disk_specs(reader: ShardReader, keys: list[str]) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """dtype and shape of stored tensors, from the shard headers (nothing is read)."""
    out: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    for fname, ks in _by_file(reader, keys).items():
        header, _ = _read_header(reader.path / fname)
        for k in ks:
            out[k] = (_ST_DTYPES[header[k]["dtype"]], tuple(header[k]["shape"]))
    return {k: out[k] for k in keys}


def _by_file(reader: ShardReader, keys: list[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for k in keys:
        groups.setdefault(reader.weight_map[k], []).append(k)
    return groups


def _read_into(reader: ShardReader, targets: dict[str, Tensor]) -> None:
    """Fill preallocated ``targets`` (key → tensor or view) from the shards.

    Contiguous CPU targets of the stored dtype are filled with ``readinto`` straight from the
    file — no mmap'd pages and no temporary copy, so loading a layer costs one layer of memory.
    Anything else goes through ``safe_open`` one tensor at a time.
    """
    for fname, ks in _by_file(reader, list(targets)).items():
        path = reader.path / fname
        header, data0 = _read_header(path)
        slow = []
        with open(path, "rb", buffering=0) as f:
            for k in sorted(ks, key=lambda k: header[k]["data_offsets"][0]):
                t, meta = targets[k], header[k]
                if (t.device.type != "cpu" or not t.is_contiguous() or _ST_DTYPES[meta["dtype"]] != t.dtype
                        or list(t.shape) != meta["shape"]):
                    slow.append(k)
                    continue
                b0, b1 = meta["data_offsets"]
                if b1 == b0:
                    continue
                buf = memoryview(t.reshape(-1).view(torch.uint8).numpy()).cast("B")
                f.seek(data0 + b0)
                got = 0
                while got < b1 - b0:
                    n = f.readinto(buf[got:])
                    if not n:
                        raise MoEModelError(f"model: {path.name} is truncated at {k}")
                    got += n
        if slow:
            with safe_open(path, "pt") as f:
                for k in slow:
                    targets[k].copy_(f.get_tensor(k))


def _read_tensor(reader: ShardReader, key: str) -> Tensor:
    """One stored tensor, read into fresh memory."""
    dtype, shape = _disk_specs(reader, [key])[key]
    t = torch.empty(shape, dtype=dtype)
    _read_into(reader, {key: t})
    return t


# ---------------------------------------------------------------------------------- one layer


def _layer_keys(reader: ShardReader, i: int) -> list[str]:
    return reader.keys(f"{LAYER_PREFIX}{i}.")


def _num_layers(reader: ShardReader, config: Any) -> int:
    n = int(config.num_hidden_layers)
    on_disk = 1 + max((int(k.split(".")[2]) for k in reader.keys(LAYER_PREFIX)), default=-1)
    if on_disk != n:
        raise MoEModelError(f"model: config has {n} layers but the shards hold {on_disk}")
    return n


def _experts_per_layer(ad: MoEAdapter, config: Any, n_layers: int) -> list[int]:
    counts = getattr(config, EXPERTS_PER_LAYER, None)
    if counts is None:
        return [ad.num_experts(config)] * n_layers
    if len(counts) != n_layers:
        raise MoEModelError(f"model: {EXPERTS_PER_LAYER} has {len(counts)} entries for {n_layers} layers")
    return [int(c) for c in counts]


def _prepare_config(config: Any, attn_implementation: str, device: torch.device) -> Any:
    """Kernels for layers built standalone (no PreTrainedModel sets them for us).

    Experts: ``grouped_mm`` on CUDA (fast); ``eager`` (one matmul per hit expert) on CPU, where
    the grouped kernel materialises a transposed copy of all experts' weights on every call — a
    second layer's worth of memory. The statistics hooks do not depend on this choice.
    """
    config._attn_implementation = attn_implementation
    grouped = hasattr(torch.nn.functional, "grouped_mm") or hasattr(torch, "_grouped_mm")
    config._experts_implementation = "grouped_mm" if grouped and device.type == "cuda" else "eager"
    return config


SCOPES = ("experts", "layer")
#: in-layer names of the linear weights the "layer" scope adds (attention projections, router)
OTHER_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate")


def is_prunable_disk_key(ad: MoEAdapter, rel_key: str, scope: str = "experts") -> bool:
    """Is a layer-relative on-disk key (``model.layers.{i}.`` stripped) in the prunable set?"""
    blk = ad.disk_block
    if rel_key.startswith(f"{blk}.experts.") or (
            rel_key.startswith(f"{blk}.shared_expert.") and rel_key.endswith(".weight")):
        return True
    if scope == "layer":
        return any(rel_key == f"{n.replace('mlp.', blk + '.', 1)}.weight" for n in OTHER_LINEARS)
    return False


def other_linears(layer: nn.Module) -> dict[str, nn.Module]:
    """name → module of the layer's non-expert linear weights that exist (``OTHER_LINEARS``)."""
    out = {}
    for name in OTHER_LINEARS:
        mod = layer
        for part in name.split("."):
            mod = getattr(mod, part, None)
            if mod is None:
                break
        if mod is not None and isinstance(getattr(mod, "weight", None), Tensor) and mod.weight.dim() == 2:
            out[name] = mod
    return out


class LinearInputStats:
    """Σ x_j² of each listed module's input over the calibration tokens (Wanda's ‖X_j‖²)."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.modules = modules
        self.sq = {n: torch.zeros(m.weight.shape[1], device=m.weight.device) for n, m in modules.items()}

    @contextlib.contextmanager
    def hooked(self) -> Any:
        def hook_for(name: str) -> Callable:
            def hook(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
                x = args[0] if args else next(iter(kwargs.values()))
                self.sq[name] += x.reshape(-1, x.shape[-1]).float().pow(2).sum(0)
            return hook

        handles = [m.register_forward_pre_hook(hook_for(n), with_kwargs=True) for n, m in self.modules.items()]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def numel(self) -> int:
        return sum(m.weight.numel() for m in self.modules.values())

    def _weight(self, name: str, mem: dict[str, Tensor] | None) -> Tensor:
        return mem[f"{name}.weight"] if mem is not None else self.modules[name].weight

    def scores(self, mem: dict[str, Tensor] | None = None, method: str = "wanda") -> list[Tensor]:
        return [wanda_scores(self._weight(n, mem).float(), self.sq[n].to(self._weight(n, mem).device))
                if method == "wanda" else magnitude_scores(self._weight(n, mem)) for n in self.modules]

    @torch.no_grad()
    def prune(self, sparsity: float, method: str, nm: tuple[int, int] | None, mem: dict[str, Tensor] | None) -> None:
        """Zero each weight's lowest-scoring entries per output row (and in ``mem``'s copy)."""
        for n, mod in self.modules.items():
            src = self._weight(n, mem)
            scores = (wanda_scores(src.float(), self.sq[n].to(src.device)) if method == "wanda"
                      else magnitude_scores(src))
            keep = make_mask(scores, sparsity, nm)
            mod.weight.masked_fill_(~keep.to(mod.weight.device), 0)
            if mem is not None:
                src.masked_fill_(~keep.to(src.device), 0)


class _LayerLoader:
    """Builds decoder layer i alone and loads it from the shards with ~one layer of memory."""

    def __init__(self, src: Path, device: torch.device, attn_implementation: str = "sdpa"):
        self.config = _prepare_config(read_config(src), attn_implementation, device)
        self.ad = adapter_for(self.config)
        self.reader = ShardReader(src)
        self.n_layers = _num_layers(self.reader, self.config)
        self.experts = _experts_per_layer(self.ad, self.config, self.n_layers)
        self.device = device
        self.dtype = compute_dtype(device)

    def load(self, i: int) -> tuple[nn.Module, dict[str, Tensor], bool]:
        """(layer on the compute device, its state in storage dtype on CPU, whether they share memory).

        The fused in-memory tensors are allocated once and every stored tensor is copied into its
        slice (the slices come from the adapter's own ``memory_to_disk``), so loading never holds
        the per-expert copies and the fused copies at the same time.
        """
        prefix = f"{LAYER_PREFIX}{i}."
        keys = _layer_keys(self.reader, i)
        specs = _disk_specs(self.reader, keys)
        meta = {k[len(prefix):]: torch.empty(shape, dtype=dt, device="meta") for k, (dt, shape) in specs.items()}
        mem_meta = self.ad.disk_to_memory(i, meta)  # in-memory keys and shapes, no data
        mem = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in mem_meta.items()}
        views = self.ad.memory_to_disk(mem)  # on-disk key → view into ``mem``
        _read_into(self.reader, {prefix + k: v for k, v in views.items()})
        del views, meta, mem_meta

        with torch.device("meta"):
            layer = self.ad.decoder_layer(self.config, i)
        block = layer.mlp
        n = self.experts[i]
        if hasattr(block, "experts") and block.experts.num_experts != n:
            self.ad.keep_experts(block, list(range(n)))  # variable-width (STUN stage 1 output)
        shared = self.device.type == "cpu" and all(v.dtype == self.dtype for v in mem.values() if v.is_floating_point())
        if shared:
            state = mem
        else:
            state = {k: v.to(self.device, self.dtype if v.is_floating_point() else v.dtype) for k, v in mem.items()}
        layer.load_state_dict(state, strict=True, assign=True)
        del state
        return layer.eval(), mem, shared


def _free() -> None:
    """Collect the freed layer and hand the memory back (CUDA cache; glibc heap via malloc_trim).

    A deleted layer is already freed by reference counting (it holds no cycles); the young-
    generation collection is a cheap safety net — a full ``gc.collect()`` costs ~0.1 s a call.
    """
    gc.collect(1)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc() -> Any:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()


# ---------------------------------------------------------------------------------- activations


def _check_ids(ids: Tensor | None, vocab: int, batch_size: int) -> None:
    if ids is None or not isinstance(ids, Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
        got = f"{ids.dtype}{tuple(ids.shape)}" if isinstance(ids, Tensor) else repr(type(ids).__name__)
        raise ValueError(f"calib_ids must be an integer tensor [N, T], got {got}")
    if ids.numel() == 0:
        raise ValueError("calib_ids is empty: Wanda/OWL need calibration tokens")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise ValueError(f"calib_ids has token ids outside [0, {vocab})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


class _Calibration:
    """Activations [N, T, H] on the compute device plus what every layer call needs."""

    def __init__(self, loader: _LayerLoader, ids: Tensor, batch_size: int, embedding: Tensor | None = None):
        _check_ids(ids, int(loader.config.vocab_size), batch_size)
        self.loader, self.batch_size = loader, batch_size
        cfg, dev = loader.config, loader.device
        self.ids = ids.long().cpu()  # the embedding lookup happens where the matrix is read: CPU
        self.acts = self.embed(embedding)  # [N, T, H]
        N, T = ids.shape
        self.position_ids = torch.arange(T, device=dev)[None]  # [1, T]
        rotary = loader.ad.rotary_embedding(cfg).to(dev)
        self.position_embeddings = rotary(self.acts[:1], self.position_ids)  # (cos, sin) [1, T, d]
        self._masks: dict[int | None, Tensor] = {}
        self.calls = 0

    def embed(self, embedding: Tensor | None = None) -> Tensor:
        """Layer-0 inputs [N, T, H]: only ``model.embed_tokens.weight`` is read (unless given)."""
        E = embedding if embedding is not None else _read_tensor(self.loader.reader, EMBED_KEY)  # [V, H]
        acts = nn.functional.embedding(self.ids, E).to(self.loader.device, self.loader.dtype)
        del E
        return acts

    def mask(self, i: int) -> Tensor:
        """Additive causal mask [1, 1, T, T] (0 / −inf), with the layer's sliding window if any."""
        cfg = self.loader.config
        types = getattr(cfg, "layer_types", None)
        if types is not None:
            window = cfg.sliding_window if types[i] == "sliding_attention" else None
        else:
            window = getattr(cfg, "sliding_window", None)
        window = int(window) if window else None
        if window not in self._masks:
            T = self.acts.shape[1]
            q = torch.arange(T, device=self.acts.device)[:, None]
            kv = torch.arange(T, device=self.acts.device)[None, :]
            blocked = kv > q
            if window:
                blocked |= kv <= q - window
            m = torch.zeros(T, T, dtype=self.acts.dtype, device=self.acts.device).masked_fill(blocked, float("-inf"))
            self._masks[window] = m[None, None]
        return self._masks[window]

    @torch.no_grad()
    def run(self, layer: nn.Module, i: int, *, write_back: bool) -> None:
        """One sweep of layer i over every calibration batch; outputs replace inputs if asked."""
        N = self.acts.shape[0]
        mask = self.mask(i)
        for b0 in range(0, N, self.batch_size):
            x = self.acts[b0 : b0 + self.batch_size]  # [B, T, H]
            out = layer(x, position_embeddings=self.position_embeddings,
                        attention_mask=mask.expand(x.shape[0], -1, -1, -1), position_ids=self.position_ids)
            out = out[0] if isinstance(out, tuple) else out
            if write_back:
                x.copy_(out)
            del out
            self.calls += 1

    @property
    def nbytes(self) -> int:
        return self.acts.numel() * self.acts.element_size()


# ---------------------------------------------------------------------------------- the pipeline


def _non_layer_keys(reader: ShardReader) -> list[str]:
    return sorted(k for k in reader.weight_map if not k.startswith(LAYER_PREFIX))


def _copy_side_files(src: Path, dst: Path) -> None:
    """config.json, tokenizer and generation files: every top-level file that is not weights."""
    skip_ext = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".ckpt")
    for p in src.iterdir():
        if p.is_file() and not p.name.endswith(skip_ext) and not p.name.endswith(".index.json"):
            shutil.copy2(p, dst / p.name)


def _zeros_of(tensors: dict[str, Tensor], keys: list[str]) -> tuple[int, int]:
    z = n = 0
    for k in keys:
        t = tensors[k]
        z += count_zeros(t)
        n += t.numel()
    return z, n


@torch.no_grad()
def _owl_lods(loader: _LayerLoader, calib: _Calibration, M: float,
              tick: Callable[[], None], scope: str = "experts") -> tuple[list[float], list[int]]:
    """OWL pass 1: every layer's outlier ratio from Wanda scores, with dense propagation."""
    lods, sizes = [], []
    for i in range(loader.n_layers):
        layer, mem, shared = loader.load(i)
        block = layer.mlp
        if hasattr(block, "experts"):
            stats = ExpertInputStats.for_block(block, device=loader.device)
            lin = LinearInputStats(other_linears(layer)) if scope == "layer" else None
            with stats.hooked(block), (lin.hooked() if lin else contextlib.nullcontext()):
                calib.run(layer, i, write_back=True)  # dense outputs feed layer i+1
            mirrors = None if shared else {n: mem["mlp." + n] for n in prunable_tensors(block)}
            extra = lin.scores(mem if not shared else None) if lin else []
            lods.append(block_outlier_ratio(block, stats, M, mirrors=mirrors, extra_scores=extra))
            sizes.append(sum(t.numel() for t in prunable_tensors(block).values())
                         + (lin.numel() if lin else 0))
            del stats, lin
        else:  # a dense MLP layer (Qwen2-MoE ``mlp_only_layers``): nothing prunable
            calib.run(layer, i, write_back=True)
            lods.append(0.0)
            sizes.append(0)
        del layer, block, mem
        _free()
        tick()
    return lods, sizes


def _passes(method: str) -> int:
    return 2 if PRUNING_METHODS.get(method).layerwise else 1


def pruning_steps(src: Path | str, method: str) -> int:
    """The total :func:`prune_checkpoint_streaming` reports progress against for ``src``: one
    step per layer, two for OWL (its outlier pass, then the pruning pass)."""
    return int(read_config(src).num_hidden_layers) * _passes(method)


@torch.no_grad()
def prune_checkpoint_streaming(
    src: Path | str,
    dst: Path | str,
    calib_ids: Tensor | None,
    *,
    method: str,
    sparsity: float,
    nm: tuple[int, int] | None = None,
    owl_M: float = 5.0,
    owl_lambda: float = 0.08,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
    attn_implementation: str = "sdpa",
    scope: str = "experts",
) -> dict[str, Any]:
    """Prune the MoE expert weights of the checkpoint folder ``src`` into ``dst``, layer by layer.

    ``scope="layer"`` prunes, besides the experts, every other linear weight of each decoder
    layer (attention projections, the router) with the same method and layer sparsity, per
    output row, its Wanda norms from the same calibration inputs — the released Wanda/OWL scope
    (``find_layers`` over a whole decoder layer); OWL's outlier ratio then counts them too.

    calib_ids [N, T]: calibration token ids (unused, may be None, for ``magnitude``). ``method``
    is a name in ``PRUNING_METHODS`` (wanda, owl, magnitude); ``sparsity`` the fraction of expert
    weights to zero (the mean over layers for OWL); ``nm=(n, m)`` for N:M instead of per-row
    (then ``sparsity`` must be n/m). On a GPU the layer runs in bf16, statistics in float32; the
    written weights keep the checkpoint's dtype. ``dst`` appears atomically (written into a temp
    folder beside it, then renamed). Returns a report: per-layer asked/reached sparsity counted
    from the bytes written (over the prunable set), OWL's LODs, layer evaluations, peak
    activation bytes, wall time.

    The last layer's pruned outputs feed nothing, so it is not re-run: Wanda costs 2L − 1 layer
    evaluations over the calibration set, OWL 3L − 1, magnitude 0.
    """
    t0 = time.perf_counter()
    sparsity = check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    spec = PRUNING_METHODS.get(method)
    nm = check_nm(nm, sparsity if nm is not None else None)
    if nm is not None and spec.layerwise:
        raise ValueError("nm: OWL chooses a sparsity per layer, an N:M pattern fixes it at n/m; use method='wanda'")
    if not owl_lambda >= 0:
        raise ValueError(f"owl_lambda must be >= 0, got {owl_lambda}")
    src, dst = Path(src), Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not overwrite:
        raise FileExistsError(f"dst: {dst} exists and is not empty (pass overwrite=True to replace it)")
    dev = pick_device(str(device))
    loader = _LayerLoader(src, dev, attn_implementation)
    ad, reader, L = loader.ad, loader.reader, loader.n_layers
    if spec.needs_calibration:
        _check_ids(calib_ids, int(loader.config.vocab_size), batch_size)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    total_steps = L * _passes(method)
    step = 0

    def tick() -> None:
        nonlocal step
        step += 1
        if progress is not None:
            progress(step, total_steps)

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would survive the rename
    try:
        n_files = L + 1
        fname = lambda k: f"model-{k:05d}-of-{n_files:05d}.safetensors"  # noqa: E731
        weight_map: dict[str, str] = {}
        total_size = 0
        calib: _Calibration | None = None
        evaluations = 0

        # Non-layer tensors (embeddings, final norm, lm_head) are copied unchanged, one at a
        # time; the embedding matrix, read once for that, also embeds the calibration tokens.
        def fetch(k: str) -> Tensor:
            nonlocal calib
            t = _read_tensor(reader, k)
            if k == EMBED_KEY and spec.needs_calibration:
                calib = _Calibration(loader, calib_ids, batch_size, embedding=t)
            return t

        keys = _non_layer_keys(reader)
        if spec.needs_calibration and EMBED_KEY not in keys:
            raise MoEModelError(f"model: no {EMBED_KEY} in the shards")
        total_size += _write_safetensors(tmp / fname(1), _disk_specs(reader, keys), fetch)
        weight_map.update({k: fname(1) for k in keys})
        act_bytes = calib.nbytes if calib is not None else 0

        # OWL pass 1 (dense propagation) → per-layer sparsities S_l
        lods: list[float] | None = None
        asked = [sparsity] * L
        if spec.layerwise:
            lods, sizes = _owl_lods(loader, calib, owl_M, tick, scope)
            evaluations += L
            asked = owl_from_lod(lods, sparsity, lam=owl_lambda, sizes=sizes)
            calib.acts = torch.empty(0)  # drop layer-L outputs before re-embedding
            calib.acts = calib.embed()  # fresh layer-0 inputs for the pruning pass (2nd read)

        # pruning pass
        layers_report = []
        for i in range(L):
            layer, mem, shared = loader.load(i)
            block = layer.mlp
            prefix = f"{LAYER_PREFIX}{i}."
            if hasattr(block, "experts"):
                stats = None
                lin = LinearInputStats(other_linears(layer)) if scope == "layer" else None
                if spec.needs_calibration:
                    stats = ExpertInputStats.for_block(block, device=dev)
                    with stats.hooked(block), (lin.hooked() if lin else contextlib.nullcontext()):
                        calib.run(layer, i, write_back=False)
                    evaluations += 1
                mirrors = None if shared else {n: mem["mlp." + n] for n in prunable_tensors(block)}
                prune_block_experts(block, stats, asked[i], spec.score, nm, mirrors=mirrors)
                if lin is not None:
                    lin.prune(asked[i], spec.score, nm, None if shared else mem)
                del stats, mirrors, lin
            if calib is not None and i < L - 1:
                calib.run(layer, i, write_back=True)  # pruned outputs feed layer i+1
                evaluations += 1
            del layer, block
            disk = ad.memory_to_disk(mem)  # views into ``mem``
            prunable = [k for k in disk if is_prunable_disk_key(ad, k, scope)]
            z, n = _zeros_of(disk, prunable)
            specs = {prefix + k: (v.dtype, tuple(v.shape)) for k, v in disk.items()}
            total_size += _write_safetensors(tmp / fname(i + 2), specs, lambda k: disk[k[len(prefix):]])
            weight_map.update({prefix + k: fname(i + 2) for k in disk})
            layers_report.append({"layer": i, "experts": loader.experts[i], "asked": asked[i],
                                  "reached": z / n if n else 0.0, "zeros": z, "total": n,
                                  **({"lod": lods[i]} if lods is not None else {})})
            del disk, mem
            _free()
            tick()

        calls = calib.calls if calib is not None else 0
        del calib
        _free()
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        _copy_side_files(src, tmp)
        _publish(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    zeros = sum(r["zeros"] for r in layers_report)
    total = sum(r["total"] for r in layers_report)
    report: dict[str, Any] = {
        "src": str(src), "dst": str(dst), "method": method, "family": ad.family,
        "sparsity_target": sparsity, "nm": list(nm) if nm else None,
        "owl": {"M": owl_M, "lambda": owl_lambda, "lod": lods} if spec.layerwise else None,
        "layer_sparsities_asked": asked,
        "layers": layers_report,
        "total": {"zeros": zeros, "total": total, "sparsity": zeros / total if total else 0.0},
        "sparsity_reached": zeros / total if total else 0.0,
        "forward_passes": evaluations,  # layer evaluations over the whole calibration set
        "layer_forward_calls": calls,  # the same counted in batches
        "peak_activation_bytes": act_bytes,  # the resident [N, T, H] activation tensor
        "calibration": list(calib_ids.shape) if (calib_ids is not None and spec.needs_calibration) else None,
        "device": str(dev), "compute_dtype": str(loader.dtype).replace("torch.", ""),
        "wall_s": time.perf_counter() - t0,
    }
    if dev.type == "cuda":
        report["peak_device_bytes"] = int(torch.cuda.max_memory_allocated(dev))
    return report


def _publish(tmp: Path, dst: Path) -> None:
    """Rename the finished temp folder onto ``dst`` (an old ``dst`` is moved aside, then removed)."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.{os.getpid()}.old")  # ".old": a crash's leftover is swept at start
        os.replace(dst, old)
    os.replace(tmp, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


# ---------------------------------------------------------------------------------- post-conditions


@torch.no_grad()
def measure_sparsity(model_or_path: nn.Module | Path | str) -> dict[str, Any]:
    """Zeros / total over the prunable set (routed + shared expert weights), per layer and in total.

    A path is read one tensor at a time (never the model); a module is measured in memory.
    """
    layers: list[dict[str, Any]] = []
    if isinstance(model_or_path, nn.Module):
        ad = adapter_for(model_or_path)
        from .adapters import decoder_layers

        for i, layer in enumerate(decoder_layers(model_or_path)):
            block = layer.mlp
            z = n = 0
            if hasattr(block, "experts"):
                z, n = _zeros_of(prunable_tensors(block), list(prunable_tensors(block)))
            layers.append({"layer": i, "zeros": z, "total": n, "sparsity": z / n if n else 0.0})
    else:
        path = Path(model_or_path)
        config = read_config(path)
        ad = adapter_for(config)
        reader = ShardReader(path)
        for i in range(_num_layers(reader, config)):
            prefix = f"{LAYER_PREFIX}{i}."
            keys = [k for k in _layer_keys(reader, i) if is_prunable_disk_key(ad, k[len(prefix):])]
            z = n = 0
            for k in keys:
                t = _read_tensor(reader, k)
                z += count_zeros(t)
                n += t.numel()
                del t
            layers.append({"layer": i, "zeros": z, "total": n, "sparsity": z / n if n else 0.0})
    zeros = sum(r["zeros"] for r in layers)
    total = sum(r["total"] for r in layers)
    return {"layers": layers, "zeros": zeros, "total": total, "sparsity": zeros / total if total else 0.0}


@torch.no_grad()
def streaming_logits(src: Path | str, input_ids: Tensor, *, device: str | torch.device = "cpu",
                     batch_size: int = 8, attn_implementation: str = "sdpa") -> Tensor:
    """Logits [N, T, V] (float32, CPU) of a checkpoint folder computed layer by layer.

    Uses the very code path of the pruning pass (embedding, layer loader, masks, rotary), so
    agreement with the in-memory model's logits proves the skeleton feeds layers correctly; it
    also evaluates checkpoints too large to load whole.
    """
    dev = pick_device(str(device))
    loader = _LayerLoader(Path(src), dev, attn_implementation)
    calib = _Calibration(loader, input_ids, batch_size)
    for i in range(loader.n_layers):
        layer, mem, _ = loader.load(i)
        calib.run(layer, i, write_back=True)
        del layer, mem
        _free()
    reader, cfg = loader.reader, loader.config
    norm = loader.ad.final_norm(cfg)
    norm.load_state_dict({"weight": _read_tensor(reader, "model.norm.weight")})
    norm = norm.to(dev, loader.dtype)
    head_key = "lm_head.weight" if "lm_head.weight" in reader.weight_map else EMBED_KEY
    head = _read_tensor(reader, head_key).to(dev, loader.dtype)  # [V, H]
    return nn.functional.linear(norm(calib.acts), head).float().cpu()
