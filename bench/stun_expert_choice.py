"""Which expert of each STUN cluster survives, and what that choice costs (issue 12, question 2).

STUN's expert stage alone (x = 1/4: 6 of 8 experts kept per layer) keeps perplexity on the zoo but
loses most of its exact match (README, stun section). This probe takes one seed of a finished
``stun`` run — its dense zoo model, router profile and corpus — and prints, per MoE layer, each
expert's routing share, router-row norm, the clusters STUN forms and their members' distances to
the cluster centroid; then it evaluates (test split: the first 16k held-out tokens, the held-out
problems minus the last ``--val`` validation ones, as the flow does) STUN's plan next to variants
that change only which member of each cluster is kept, the released global budget, the paper's
mean-merge of small clusters, frequency drop, and STUN applied to one layer at a time:

    python bench/stun_expert_choice.py data/stun --seed 0 [--keep 6]

It reads the run's outputs and writes nothing. About 20 evaluations: a few minutes on two idle
cores (each one greedy-decodes every test problem).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tasks.stun.adapters import adapter_for  # noqa: E402
from tasks.stun.baselines import frequency_drop_plan  # noqa: E402
from tasks.stun.checkpoint import load_checkpoint  # noqa: E402
from tasks.stun.corpus import load_corpus  # noqa: E402
from tasks.stun.evaluate import exact_match, split_heldout, stream_perplexity, token_stream  # noqa: E402
from tasks.stun.expert_pruning import (  # noqa: E402
    ExpertPlan,
    LayerPlan,
    _member_vectors,
    apply_plan,
    layer_distances,
    plan_expert_pruning,
)
from tasks.stun.profiling import RouterProfile  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="a stun run's folder (data/stun, or <PAPERLINE_DATA>/stun)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=int, default=6, help="experts kept per layer (6 of 8 = x 1/4)")
    ap.add_argument("--val", type=int, default=50, help="validation problems left out (the flow's val_problems)")
    ap.add_argument("--tokens", type=int, default=16384, help="held-out tokens for perplexity (eval_ppl_tokens)")
    ap.add_argument("--seq-len", type=int, default=256, help="perplexity window (the run's zoo.seq_len)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    root, keep = args.root, args.keep
    dense, tok = load_checkpoint(root / "zoo" / f"seed{args.seed}")
    prof = RouterProfile.load(root / "profile" / f"seed{args.seed}" / "profile")
    corpus = load_corpus(root / "corpus")
    test, _ = split_heldout(corpus, args.val)
    stream = token_stream(tok, corpus.heldout_text, args.tokens)
    seq_len = args.seq_len
    ad = adapter_for(dense)
    blocks = ad.moe_blocks(dense)

    def score(model) -> tuple[float, float]:
        return stream_perplexity(model, stream, seq_len=seq_len), exact_match(model, tok, test)["exact_match"]

    def run(name: str, plan: ExpertPlan) -> None:
        m = copy.deepcopy(dense)
        apply_plan(m, plan)
        t = time.time()
        ppl, em = score(m)
        print(f"{name:34s} ppl {ppl:7.2f}  EM {em:.3f}  keep {[lp.keep for lp in plan.layers]}  ({time.time() - t:.0f} s)",
              flush=True)

    ppl, em = score(dense)
    print(f"seed {args.seed}: dense ppl {ppl:.2f}, EM {em:.3f} on {len(test)} test problems", flush=True)
    plan = plan_expert_pruning(dense, keep_per_layer=keep, lambda1=1.0, lambda2=0.0)
    ds = layer_distances(dense, None)
    for i, (lp, b) in enumerate(zip(plan.layers, blocks)):
        f = prof.frequency[i]
        share = (f / f.sum()).tolist()
        vecs = _member_vectors(ad, b)
        norms = ad.router_weight(b).detach().double().norm(dim=1).tolist()
        print(f"layer {i}: routing share {[round(s, 3) for s in share]}, router-row norms {[round(x, 2) for x in norms]}")
        for c, k in zip(lp.clusters, lp.keep):
            if len(c) > 1:
                v = vecs(c).double()
                dist = torch.linalg.vector_norm(v - v.mean(0), dim=1).tolist()
                pairs = [round(float(ds[i][a, bb]), 3) for a in c for bb in c if a < bb]
                print(f"  cluster {c} keeps {k}: centroid distances {[f'{d:.6f}' for d in dist]}, "
                      f"shares {[round(share[m], 3) for m in c]}, router distances {pairs}")

    def pick(rule) -> ExpertPlan:
        layers = [LayerPlan(keep=[k if len(c) == 1 else rule(c, k, prof.frequency[i]) for c, k in zip(lp.clusters, lp.keep)],
                            clusters=lp.clusters) for i, lp in enumerate(plan.layers)]
        return ExpertPlan(layers=layers, num_experts=plan.num_experts)

    run("stun (uniform budget)", plan)
    run("stun, another member kept", pick(lambda c, k, f: next(m for m in c if m != k)))
    run("stun, busiest member kept", pick(lambda c, k, f: max(c, key=lambda m: float(f[m]))))
    run("stun, least-used member kept", pick(lambda c, k, f: min(c, key=lambda m: float(f[m]))))
    run("stun, small clusters mean-merged", plan_expert_pruning(dense, keep_per_layer=keep, reconstruction="small_clusters"))
    run("stun, global budget", plan_expert_pruning(dense, expert_budget=keep * len(blocks)))
    run("frequency drop", frequency_drop_plan(prof, keep))
    for layer in range(len(blocks)):
        layers = [lp if i == layer else LayerPlan(keep=list(range(n)), clusters=[[e] for e in range(n)])
                  for i, (lp, n) in enumerate(zip(plan.layers, plan.num_experts))]
        run(f"stun in layer {layer} only", ExpertPlan(layers=layers, num_experts=plan.num_experts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
