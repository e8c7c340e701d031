"""STUN on one Arctic-shaped MoE layer: time per stage, peak memory, and the 35-layer projection.

STUN's cost claim (METHODS.md §1.5: STUN + OWL on Arctic-480B in about 1.12 h, "about two
hours" in the abstract, on one H100) is checked here on one layer of Arctic's shape — 128
experts, hidden 7168, expert hidden 4864, top-2, bf16 — run through the repository's own code:

1. **profiling** — :func:`tasks.stun.profiling.profile_router`, one forward pass per batch of
   the 128 × 2048 calibration tokens, router hooks counting co-activations a_ij;
2. **expert pruning** — :func:`tasks.stun.expert_pruning.plan_expert_pruning` (distances from
   router rows and a_ij, greedy clustering, representatives) and ``apply_plan``, removing 20 % of
   the experts (Arctic's release: 3570 of 4480 kept);
3. **OWL** — what :func:`tasks.stun.streaming.prune_checkpoint_streaming` does per layer, in
   memory: pass 1 accumulates per-expert ‖X_j‖² (``ExpertInputStats``) over the calibration set
   and computes the layer's outlier ratio (``block_outlier_ratio``); pass 2 accumulates them
   again and prunes (``prune_block_experts``) at u = 1 − (1 − 0.4)/(1 − x) ≈ 25 %, so the total
   expert-weight sparsity is the paper's 40 %; then the pruned layer's outputs are propagated.

The weights are random but shaped like a trained router's: experts come in planted families
(most experts alone, some in twos to fours) whose router rows and expert weights are close, so
co-activation and router distance carry the redundancy STUN looks for; a few hidden channels of
the embeddings carry massive activations, as trained LLMs' residual streams do (what OWL's
outlier ratio keys on). Calibration tokens are random ids with a Zipf frequency profile. The
benchmark measures cost, not quality; ``clusters_within_family`` only checks that STUN recovered
the planted families.

Projection to Arctic's 35 layers: profiling is one forward of the full model (35 × the layer's
profiling time), expert pruning is per layer, OWL per layer is pass 1 + pass 2 + propagation
(the last layer is not propagated). Disk I/O of the streamed checkpoint is not measured: it is
reported separately as bytes (each layer read three times — profiling, OWL's two passes — and
written once) and as seconds at ``--io-gbps``.

On a CUDA machine the default is the Arctic shape in bf16 (peak GPU memory ≈ 50 GB, see the
README's GPU check section); elsewhere ``--preset auto`` picks a scaled shape (16 experts,
hidden 256, expert hidden 176, 8 × 256 tokens, fp32 on CPU) that runs the same code in seconds.

Run:  .venv/bin/python bench/stun_arctic_layer.py [--preset auto|arctic|cpu] [--device auto|cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GiB = 2**30

#: shapes: Arctic's MoE layer (Snowflake Arctic 480B: 35 layers, 56 heads, 8 KV heads, vocab 32000)
#: and a CPU scale with the same proportions (expert hidden / hidden ≈ 0.68, top-2, GQA 4:1)
PRESETS: dict[str, dict[str, Any]] = {
    "arctic": dict(experts=128, hidden=7168, expert_hidden=4864, heads=56, kv_heads=8, top_k=2, vocab=32000,
                   calib_n=128, calib_t=2048, batch_size=8),
    "cpu": dict(experts=16, hidden=256, expert_hidden=176, heads=4, kv_heads=1, top_k=2, vocab=4096,
                calib_n=8, calib_t=256, batch_size=4),
}
#: the paper's wall time for STUN + OWL on Arctic-480B, one H100 (METHODS.md §1.5)
PAPER_HOURS = (1.12, 2.0)
ARCTIC_LAYERS = 35


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="auto", choices=["auto", *PRESETS],
                   help="auto = arctic on a CUDA device, cpu otherwise")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (bf16 on CUDA, fp32 on CPU)")
    for k in ("experts", "hidden", "expert_hidden", "heads", "kv_heads", "top_k", "vocab", "calib_n", "calib_t",
              "batch_size"):
        p.add_argument(f"--{k.replace('_', '-')}", dest=k, type=int, default=None, help=f"override the preset's {k}")
    p.add_argument("--expert-fraction", type=float, default=0.2, help="x: experts removed (Arctic release: 20%%)")
    p.add_argument("--sparsity", type=float, default=0.4, help="S: total expert-weight sparsity (paper: 40%%)")
    p.add_argument("--lambda1", type=float, default=1.0, help="weight of the router-row distance")
    p.add_argument("--lambda2", type=float, default=1.0, help="weight of the co-activation term (needs profiling)")
    p.add_argument("--layers", type=int, default=ARCTIC_LAYERS, help="layers of the projection (Arctic: 35)")
    p.add_argument("--io-gbps", type=float, default=2.0, help="assumed disk bandwidth (GB/s) for the I/O estimate")
    p.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stun_arctic_layer.json")
    return p.parse_args(argv)


def resolve(a: argparse.Namespace) -> tuple[dict[str, Any], Any, str]:
    import torch

    from tasks.common.devices import pick_device

    dev = pick_device(a.device)
    preset = a.preset if a.preset != "auto" else ("arctic" if dev.type == "cuda" else "cpu")
    shape = dict(PRESETS[preset])
    for k in shape:
        if getattr(a, k) is not None:
            shape[k] = int(getattr(a, k))
    if shape["hidden"] % shape["heads"] or shape["heads"] % shape["kv_heads"]:
        raise SystemExit(f"--heads/--kv-heads: hidden {shape['hidden']} must split into {shape['heads']} heads, "
                         f"and those into {shape['kv_heads']} KV groups")
    if a.threads:
        torch.set_num_threads(a.threads)
    return shape, dev, preset


# ---------------------------------------------------------------------------------- the layer


def family_sizes(n: int, g) -> list[int]:
    """Planted expert families: about 60 % of experts alone, the rest in families of 2–4."""
    import torch

    sizes: list[int] = []
    left = n
    while left > 0:
        s = int(torch.multinomial(torch.tensor([0.6, 0.2, 0.12, 0.08]), 1, generator=g)) + 1
        s = min(s, left)
        sizes.append(s)
        left -= s
    return sizes


def build_layer(shape: dict[str, Any], dev, dtype, seed: int):
    """A one-layer Mixtral-layout model (embeddings, one decoder layer, norm, head) on ``dev`` in
    ``dtype``, with router-trained-shaped weights. Returns (model, family id per expert)."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    H, I, E = shape["hidden"], shape["expert_hidden"], shape["experts"]
    cfg = MixtralConfig(vocab_size=shape["vocab"], hidden_size=H, intermediate_size=I, num_hidden_layers=1,
                        num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
                        num_local_experts=E, num_experts_per_tok=shape["top_k"],
                        max_position_embeddings=max(4096, shape["calib_t"]), rope_theta=10000.0,
                        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    # grouped_mm on CUDA; on CPU it copies every expert's weights per call, the per-expert loop does not
    cfg._experts_implementation = "grouped_mm" if dev.type == "cuda" else "eager"
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(dev):  # allocated (and initialised) where it runs: no host copy of the layer
            model = MixtralForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(old)
    g = torch.Generator(device=dev).manual_seed(seed)
    gcpu = torch.Generator().manual_seed(seed)
    sizes = family_sizes(E, gcpu)
    family = [f for f, s in enumerate(sizes) for _ in range(s)]
    perm = torch.randperm(E, generator=gcpu).tolist()  # families are not contiguous expert ids
    family = [family[perm.index(e)] for e in range(E)]

    def randn(*size):
        return torch.randn(*size, generator=g, device=dev, dtype=dtype)

    with torch.no_grad():
        emb = model.model.embed_tokens.weight  # [V, H]
        emb.copy_(randn(*emb.shape))
        outl = torch.randperm(H, generator=gcpu)[: max(2, H // 1000)].to(dev)
        emb[:, outl] *= 20.0  # massive-activation channels of the residual stream
        block = model.model.layers[0].mlp
        router = block.gate.weight  # [E, H]; logits of a normalised token have std ≈ 2, like trained routers
        gu, down = block.experts.gate_up_proj, block.experts.down_proj  # [E, 2I, H], [E, H, I]
        rho = 0.8  # within-family correlation of expert weights
        for f in range(len(sizes)):
            members = [e for e in range(E) if family[e] == f]
            centre = randn(H) * (2.0 / math.sqrt(H))
            base_gu, base_dn = randn(2 * I, H), randn(H, I)
            for e in members:
                own = rho if len(members) > 1 else 0.0
                router[e] = centre + randn(H) * (0.35 * 2.0 / math.sqrt(H))
                w = gu[e]
                w.normal_(generator=g).mul_(math.sqrt(1 - own**2)).add_(base_gu, alpha=own).mul_(1 / math.sqrt(H))
                w = down[e]
                w.normal_(generator=g).mul_(math.sqrt(1 - own**2)).add_(base_dn, alpha=own).mul_(1 / math.sqrt(I))
            del base_gu, base_dn
    return model, family


def calibration(shape: dict[str, Any], dev, seed: int):
    """Token ids [N, T] with a Zipf(1) frequency profile over the vocabulary."""
    import torch

    V = shape["vocab"]
    g = torch.Generator().manual_seed(seed + 1)
    p = 1.0 / (torch.arange(V, dtype=torch.float64) + 2.7)
    rank_to_id = torch.randperm(V, generator=g)
    n, t = shape["calib_n"], shape["calib_t"]
    ids = rank_to_id[torch.multinomial(p, n * t, replacement=True, generator=g)].reshape(n, t)
    return ids.to(dev)


# ---------------------------------------------------------------------------------- measuring


class Stages:
    """Wall time and peak memory of named stages (CUDA: allocator peak per stage; CPU: peak RSS)."""

    def __init__(self, dev):
        self.dev = dev
        self.rows: dict[str, dict[str, float]] = {}

    def _sync(self) -> None:
        import torch

        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        import torch

        self._sync()
        if self.dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.dev)
        t0 = time.perf_counter()
        yield
        self._sync()
        row = {"seconds": time.perf_counter() - t0}
        if self.dev.type == "cuda":
            row["peak_gpu_gib"] = torch.cuda.max_memory_allocated(self.dev) / GiB
        row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB  # so far
        self.rows[name] = row


def _forward_all(model, batches) -> None:
    import torch

    from tasks.stun.profiling import decoder_stack

    backbone = decoder_stack(model)  # no LM head: the [B, T, V] logits are not part of the method
    with torch.no_grad():
        for b in batches:
            backbone(input_ids=b, use_cache=False)


def run(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from tasks.common.devices import compute_dtype
    from tasks.stun.config import unstructured_rate
    from tasks.stun.expert_pruning import apply_plan, plan_expert_pruning
    from tasks.stun.profiling import profile_router
    from tasks.stun.unstructured import (
        ExpertInputStats,
        block_outlier_ratio,
        count_zeros,
        owl_from_lod,
        prunable_tensors,
        prune_block_experts,
    )

    shape, dev, preset = resolve(a)
    dtype = compute_dtype(dev)
    E, k = shape["experts"], shape["top_k"]
    keep = round(E * (1.0 - a.expert_fraction))
    if not k <= keep <= E:
        raise SystemExit(f"--expert-fraction: keeps {keep} of {E} experts; it must keep at least top-k={k}")
    x = 1.0 - keep / E
    u = unstructured_rate(a.sparsity, x)
    st = Stages(dev)

    with st.stage("build"):
        model, family = build_layer(shape, dev, dtype, a.seed)
        ids = calibration(shape, dev, a.seed)
    B = shape["batch_size"]
    batches = [ids[i : i + B] for i in range(0, len(ids), B)]
    block = model.model.layers[0].mlp
    layer_bytes = sum(p.numel() * p.element_size() for p in model.model.layers[0].parameters())
    dense_expert_weights = sum(t.numel() for t in prunable_tensors(block).values())

    # 1. co-activation profiling: one forward per batch
    with st.stage("profiling"):
        prof = profile_router(model, batches, pair_k=2)

    # 2. STUN expert pruning
    with st.stage("expert_pruning"):
        plan = plan_expert_pruning(model, keep_per_layer=keep, profile=prof, lambda1=a.lambda1, lambda2=a.lambda2)
        apply_plan(model, plan)
    block = model.model.layers[0].mlp
    clusters = plan.layers[0].clusters
    multi = [c for c in clusters if len(c) > 1]
    within = sum(len({family[e] for e in c}) == 1 for c in multi)

    # 3. OWL, as the streaming pruner runs it per layer
    with st.stage("owl_outlier_pass"):
        stats = ExpertInputStats.for_block(block)
        with stats.hooked(block):
            _forward_all(model, batches)
        lod = block_outlier_ratio(block, stats)
        sizes = [sum(t.numel() for t in prunable_tensors(block).values())]
        asked = owl_from_lod([lod], u, sizes=sizes)[0]  # one layer: OWL's allocation is u itself
        del stats
    with st.stage("owl_prune_pass"):
        stats = ExpertInputStats.for_block(block)
        with stats.hooked(block):
            _forward_all(model, batches)
        prune_block_experts(block, stats, asked, "wanda")
        del stats
    with st.stage("owl_propagate"):
        _forward_all(model, batches)

    zeros = sum(count_zeros(t) for t in prunable_tensors(block).values())
    kept_weights = sum(t.numel() for t in prunable_tensors(block).values())
    total_sparsity = 1.0 - (kept_weights - zeros) / dense_expert_weights

    s = {n: r["seconds"] for n, r in st.rows.items()}
    per_layer = s["profiling"] + s["expert_pruning"] + s["owl_outlier_pass"] + s["owl_prune_pass"] + s["owl_propagate"]
    L = a.layers
    projected = L * per_layer - s["owl_propagate"]  # the last layer's outputs feed nothing
    io_bytes = L * layer_bytes * 4  # read for profiling, OWL pass 1 and pass 2; written once
    io_s = io_bytes / (a.io_gbps * 1e9)
    peak_gpu = max((r.get("peak_gpu_gib", 0.0) for r in st.rows.values()), default=0.0)
    gpu_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    return {
        "preset": preset,
        "shape": shape,
        "device": str(dev),
        "gpu": gpu_name,
        "dtype": str(dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "host": platform.node(),
        "threads": torch.get_num_threads(),
        "calibration_tokens": int(ids.numel()),
        "layer_bytes": int(layer_bytes),
        "expert_fraction": x,
        "experts_kept": keep,
        "unstructured_rate": u,
        "owl_lod": lod,
        "owl_layer_sparsity": asked,
        "total_expert_sparsity": total_sparsity,
        "lambda1": a.lambda1,
        "lambda2": a.lambda2,
        "profile": {"tokens": prof.tokens, "forward_passes": prof.forward_passes,
                    "pairs_counted": float(prof.coactivation[0].sum() / 2)},
        "clusters": {"multi_member": len(multi), "within_family": within,
                     "largest": max((len(c) for c in clusters), default=0)},
        "stages": st.rows,
        "per_layer_seconds": per_layer,
        "projection": {
            "layers": L,
            "compute_seconds": projected,
            "compute_hours": projected / 3600,
            "io_bytes": int(io_bytes),
            "io_gbps": a.io_gbps,
            "io_seconds": io_s,
            "total_hours": (projected + io_s) / 3600,
            "paper_hours_h100": list(PAPER_HOURS),
            "comparable": preset == "arctic" and dev.type == "cuda",
        },
        "peak_gpu_gib": peak_gpu if dev.type == "cuda" else None,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB,
    }


def table(r: dict[str, Any]) -> str:
    from tasks.common.tables import markdown_table

    rows = []
    for name, row in r["stages"].items():
        rows.append({"stage": name, "seconds": round(row["seconds"], 3),
                     "peak_gpu_gib": round(row["peak_gpu_gib"], 2) if "peak_gpu_gib" in row else "-",
                     "peak_rss_gib": round(row["peak_rss_gib"], 2)})
    pj = r["projection"]
    lines = [
        f"STUN on one {r['preset']}-shaped MoE layer ({r['shape']['experts']} experts, hidden {r['shape']['hidden']}, "
        f"expert hidden {r['shape']['expert_hidden']}, top-{r['shape']['top_k']}, {r['dtype']}, "
        f"{r['calibration_tokens']} calibration tokens) on {r['gpu'] or r['device']}",
        "",
        markdown_table(rows),
        "",
        f"experts kept {r['experts_kept']}/{r['shape']['experts']}, OWL at {r['owl_layer_sparsity']:.4f} → total expert "
        f"sparsity {r['total_expert_sparsity']:.4f}; multi-member clusters {r['clusters']['multi_member']}, "
        f"within a planted family {r['clusters']['within_family']}",
        f"per layer {r['per_layer_seconds']:.2f} s → {pj['layers']} layers: {pj['compute_hours']:.3f} h compute "
        f"+ {pj['io_seconds'] / 3600:.3f} h I/O at {pj['io_gbps']} GB/s = {pj['total_hours']:.3f} h "
        f"(paper: {PAPER_HOURS[0]}–{PAPER_HOURS[1]} h on one H100"
        + ("" if pj["comparable"] else "; not comparable: scaled shape, not on a GPU") + ")",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    t0 = time.perf_counter()
    r = run(a)
    r["wall_s"] = time.perf_counter() - t0
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(r, indent=2) + "\n")
    print(table(r))
    print(f"wrote {a.out} ({r['wall_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
