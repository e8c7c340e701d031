"""Cost of STUN's expert stage vs. NAEE's enumeration as the number of experts grows (METHODS.md §1.2, §1.5).

STUN (ACL 2025) claims its structured stage needs O(1) forward passes — one calibration sweep for
the co-activation counts, whatever the number of experts n — while NAEE (Lu et al., 2024) tries
C(n, r) expert subsets per layer, O(kⁿ/√n). This benchmark measures both on the same randomly
initialised Mixtral-style model (random weights are fine: only cost is measured) and the same
calibration batches, pruning ~25% of the experts of every layer:

* STUN: ``profile_router`` sweep + distances + greedy clustering + global τ search + representatives;
* NAEE: the catch pass (X, Z of every block) + per layer the [E, N, H] expert-output precompute and
  the enumeration. Where C(n, r) exceeds ``--naee-limit`` the enumeration is not run: its time is
  extrapolated from the measured per-subset cost on a sample of subsets at that n (marked ``*``).

    python bench/stun_cost.py --experts 8 16 32 64 --out bench/results/stun_cost.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

from tasks.stun.adapters import adapter_for  # noqa: E402
from tasks.stun.baselines import NaeeLayerSearch, catch_block_io  # noqa: E402
from tasks.stun.expert_pruning import plan_expert_pruning  # noqa: E402
from tasks.stun.profiling import profile_router  # noqa: E402


def build_model(n_experts: int, args: argparse.Namespace) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, MixtralConfig

    torch.manual_seed(args.seed)
    cfg = MixtralConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=max(128, args.seq_len), num_local_experts=n_experts, num_experts_per_tok=2,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # a router with some spread, so that routing is not near-uniform
        for b in adapter_for(model).moe_blocks(model):
            b.gate.weight.normal_(0, 0.5)
    return model


def sample_subsets(n: int, r: int, count: int, seed: int) -> torch.Tensor:  # [count, r]
    rng = random.Random(seed)
    return torch.tensor([sorted(rng.sample(range(n), r)) for _ in range(count)], dtype=torch.long)


def run_stun(model: torch.nn.Module, batches: list[torch.Tensor], budget: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    prof = profile_router(model, batches)
    t1 = time.perf_counter()
    plan = plan_expert_pruning(model, expert_budget=budget, profile=prof, lambda1=1.0, lambda2=1.0)
    t2 = time.perf_counter()
    assert sum(plan.experts_kept) == budget
    return {
        "forward_passes": prof.forward_passes,
        "block_evaluations": 0,
        "profile_s": t1 - t0,
        "cluster_search_s": t2 - t1,
        "total_s": t2 - t0,
        "tau_evaluations": plan.meta["tau_evaluations"],
        "fixup_undone": plan.meta["fixup_undone"],
        "experts_kept": plan.experts_kept,
    }


def run_naee(model: torch.nn.Module, batches: list[torch.Tensor], keep: int, args: argparse.Namespace) -> dict[str, Any]:
    ad = adapter_for(model)
    blocks = ad.moe_blocks(model)
    n = int(ad.router_weight(blocks[0]).shape[0])
    combos = math.comb(n, keep)
    t0 = time.perf_counter()
    xs, zs, passes = catch_block_io(model, batches)
    catch_s = time.perf_counter() - t0
    measured = combos <= args.naee_limit
    precompute_s = enum_s = 0.0
    sampled = 0
    for i, (b, x, z) in enumerate(zip(blocks, xs, zs)):
        t = time.perf_counter()
        search = NaeeLayerSearch(b, x, z)  # every expert on every token, once: O(E)
        precompute_s += time.perf_counter() - t
        if measured:
            subsets = torch.tensor(list(itertools.combinations(range(n), keep)), dtype=torch.long)
        else:
            subsets = sample_subsets(n, keep, args.naee_sample, args.seed + i)
        t = time.perf_counter()
        search.losses(subsets)
        enum_s += time.perf_counter() - t
        sampled += int(subsets.shape[0])
    per_subset = enum_s / sampled
    enum_total = enum_s if measured else per_subset * combos * len(blocks)
    return {
        "forward_passes": passes,
        "combinations_per_layer": combos,
        "block_evaluations": combos * len(blocks),
        "catch_s": catch_s,
        "precompute_s": precompute_s,
        "enumerate_s": enum_total,
        "per_subset_s": per_subset,
        "subsets_timed": sampled,
        "total_s": catch_s + precompute_s + enum_total,
        "extrapolated": not measured,
    }


def human_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.2f} s"
    for unit, size in (("yr", 365.25 * 86400), ("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.3g} {unit}"
    return f"{s:.3g} s"


def print_table(rows: list[dict[str, Any]]) -> None:
    headers = ["experts", "keep/layer", "STUN fwd passes", "STUN profile", "STUN cluster+τ", "STUN total",
               "NAEE fwd passes", "NAEE subsets/layer", "NAEE block evals", "NAEE total"]
    body = []
    for r in rows:
        s, n = r["stun"], r["naee"]
        mark = "*" if n["extrapolated"] else ""
        body.append([
            str(r["experts"]), str(r["keep_per_layer"]), str(s["forward_passes"]), f"{s['profile_s']:.2f} s",
            f"{s['cluster_search_s']:.2f} s", f"{s['total_s']:.2f} s", str(n["forward_passes"]),
            f"{n['combinations_per_layer']:.3g}" if n["combinations_per_layer"] >= 1e6 else str(n["combinations_per_layer"]),
            f"{n['block_evaluations']:.3g}" if n["block_evaluations"] >= 1e6 else str(n["block_evaluations"]),
            human_seconds(n["total_s"]) + mark,
        ])
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="STUN expert stage vs NAEE enumeration (* = extrapolated from measured per-subset cost)")
        for h in headers:
            table.add_column(h, justify="right")
        for row in body:
            table.add_row(*row)
        Console(width=max(150, Console().width)).print(table)
    except ImportError:
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(headers)]
        print(" | ".join(h.rjust(w) for h, w in zip(headers, widths)))
        for row in body:
            print(" | ".join(c.rjust(w) for c, w in zip(row, widths)))
        print("* = extrapolated from measured per-subset cost")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experts", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stun_cost.json")
    p.add_argument("--prune-fraction", type=float, default=0.25, help="fraction of each layer's experts removed")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--intermediate", type=int, default=64)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--naee-limit", type=int, default=20_000, help="largest C(n, r) actually enumerated")
    p.add_argument("--naee-sample", type=int, default=512, help="subsets timed per layer when extrapolating")
    p.add_argument("--seed", type=int, default=0)
    # 1 thread: timings stay comparable on a small shared machine; 0 keeps torch's default
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(args.seed)
    batches = [torch.randint(3, args.vocab, (args.batch_size, args.seq_len), generator=g) for _ in range(args.batches)]
    rows = []
    for n in args.experts:
        keep = n - max(1, round(args.prune_fraction * n))
        model = build_model(n, args)
        with torch.no_grad():  # warm-up (allocator, kernel dispatch); not counted for either method
            for _ in range(2):
                model.model(input_ids=batches[0], use_cache=False)
        stun = run_stun(model, batches, budget=keep * args.layers)
        naee = run_naee(model, batches, keep, args)
        rows.append({"experts": n, "keep_per_layer": keep, "layers": args.layers,
                     "tokens": args.batches * args.batch_size * args.seq_len, "stun": stun, "naee": naee})
        print(f"E={n}: STUN {stun['total_s']:.2f} s ({stun['forward_passes']} passes); NAEE "
              f"{human_seconds(naee['total_s'])}{' (extrapolated)' if naee['extrapolated'] else ''} "
              f"({naee['forward_passes']} passes + {naee['block_evaluations']:.3g} block evaluations)", flush=True)
    print_table(rows)
    result = {
        "benchmark": "stun_cost",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
