"""Why be NPU-aware at all (issue 14, item 5): the same search on two different NPUs.

The second NPU differs in array size and dataflow (default: 32×32 output-stationary against the
primary 16×16 weight-stationary). A block's latency on each is the sum of its layers' simulated
cycles, so the per-block tables differ — and not by one factor: a bigger array speeds up the 1×1
convolutions (many filters to spread over its columns) far more than the depthwise ones (one
filter per channel, run one after the other), so the *relative* cost of a wider expansion or a
larger kernel changes. :func:`block_table` gives one slot's table; :func:`npu_comparison` puts the
two searches' read-outs side by side: which blocks changed, and what each net costs on each NPU.
"""
from __future__ import annotations

from typing import Callable

from .npu import Network
from .space import Arch, BlockSlot, block_choices, block_layers, make_block, supernet_slots


def block_table(sn, slot: BlockSlot, net_us: Callable[[Network], float]) -> dict[str, float]:
    """µs of every joint choice of one slot (S3NAS's per-block LUT row), by block tag."""
    out = {}
    for branches in block_choices(sn, slot):
        b = make_block(slot, branches)
        out[b.tag()] = net_us(block_layers(b, slot.h))
    return out


def rank_changes(a: dict[str, float], b: dict[str, float]) -> int:
    """Pairs of choices whose latency order flips between two tables (ties ignored)."""
    keys = sorted(a)
    n = 0
    for i, x in enumerate(keys):
        for y in keys[i + 1:]:
            if (a[x] - a[y]) * (b[x] - b[y]) < 0:
                n += 1
    return n


def npu_comparison(sn, arch_us: dict[str, Callable[[Arch], float]], net_us: dict[str, Callable[[Network], float]],
                   archs: dict[str, Arch]) -> tuple[dict, str]:
    """(facts, markdown): per slot, the block each NPU's search chose and its latency on both
    NPUs; each searched net's latency on each NPU; per slot, how many latency orderings of the
    slot's choices flip between the NPUs. ``arch_us``/``net_us``/``archs`` are keyed by NPU name
    (two of them, the first being the primary)."""
    from tasks.common.tables import markdown_table

    n1, n2 = list(archs)
    a1, a2 = archs[n1], archs[n2]
    rows, changed = [], 0
    for i, (slot, b1, b2) in enumerate(zip(supernet_slots(sn), a1.blocks, a2.blocks)):
        t1, t2 = block_table(sn, slot, net_us[n1]), block_table(sn, slot, net_us[n2])
        same = b1.branches == b2.branches
        changed += not same
        rows.append({"slot": i, "in→out, stride, side": f"{slot.c_in}→{slot.c_out}, s{slot.stride}, {slot.h}px",
                     f"chosen on {n1}": _short(b1), f"chosen on {n2}": _short(b2), "changed": "" if same else "yes",
                     f"{n1} µs of each": f"{t1[b1.tag()]:.1f} / {t1[b2.tag()]:.1f}",
                     f"{n2} µs of each": f"{t2[b1.tag()]:.1f} / {t2[b2.tag()]:.1f}",
                     "order flips": f"{rank_changes(t1, t2)} of {len(t1) * (len(t1) - 1) // 2}"})
    cross = {f"{a}_on_{n}": arch_us[n](archs[a]) for a in archs for n in archs}
    facts = {"blocks_changed": changed, "blocks": len(rows), "cross_latency_us": cross, "slots": rows,
             "archs": {k: v.describe() for k, v in archs.items()}}
    md = (f"Same search, two NPUs: {changed} of {len(rows)} blocks differ. Each read-out's latency (µs) on each NPU: "
          + "; ".join(f"{a} net on {n}: {cross[f'{a}_on_{n}']:.1f}" for a in archs for n in archs)
          + " (the first µs of a pair is the block chosen on the first NPU).\n\n"
          + markdown_table(rows, list(rows[0])))
    return facts, md


def _short(b) -> str:
    return "skip" if b.is_skip else " + ".join(f"k{x.kernel}e{x.expansion}" for x in b.branches if x.expansion)
