"""Step 3 of S3NAS (METHODS.md §8.3): compound scaling to the latency target, SE + h-swish,
selective SE removal; and the hand-designed baseline it is compared with.

Compound scaling multiplies depth (blocks per stage = round(n·d), extra blocks copying the
stage's blocks with the most parameters), width (channels × w, to multiples of 4) and input
resolution (× r, to multiples of 4). Every (d, w, r) of the grid is finished (SE + h-swish)
and its latency *estimated* (the grid is filled in: widths in 0.05 steps, every 4-pixel
resolution between its ends); the candidates whose estimate lands inside the window
[``lower``·T, T] (default 90 %; the flow asks for 98 %: equal latency within 2 %) are
*simulated* two at a time, those nearest the window's middle first (estimates corrected by the
simulator's ratio so far), and the largest (by MACs) the simulator confirms inside it is kept. Nothing the
simulator puts over the target is ever returned, and a target the grid cannot reach at 90 %
(its largest candidate, simulated, still below ``lower·T``) is refused with
:class:`TargetOutOfReach` instead of being met at a fraction of the target.
"""
from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Callable

import numpy as np

from .space import Arch, Block, Branch, network_macs, round_to


class ScalingError(ValueError):
    """No scaling meets the target: a property of the config and the net, so never retried."""


class TargetOutOfReach(ScalingError):
    """Even the largest scaling of the net stays below ``lower × target`` on the simulator."""

    def __init__(self, message: str, *, largest_us: float, target_us: float, largest: dict):
        super().__init__(message)
        self.largest_us, self.target_us, self.largest = largest_us, target_us, largest


def stages_of(arch: Arch) -> list[list[Block]]:
    """Blocks grouped by stage: a stage starts where the output width changes or stride is 2."""
    stages: list[list[Block]] = []
    prev_out = None
    for b in arch.blocks:
        if prev_out is None or b.c_out != prev_out or b.stride != 1:
            stages.append([])
        stages[-1].append(b)
        prev_out = b.c_out
    return stages


def block_params(b: Block) -> int:
    hidden = b.hidden()
    dw = sum(b.c_in * x.expansion * x.kernel ** 2 for x in b.branches)
    return b.c_in * hidden + dw + hidden * b.c_out


#: channels round to multiples of this; MobileNet's 8 makes steps of 20-50 % at toy widths (8-72
#: channels), too coarse to land a net within 90-100 % of a target
CHANNEL_MULTIPLE = 4


def scale_arch(arch: Arch, depth: float, width: float, resolution: float) -> Arch:
    blocks: list[Block] = []
    c_prev = round_to(arch.stem_channels * width, CHANNEL_MULTIPLE)
    for stage in stages_of(arch):
        active = [b for b in stage if not b.is_skip]
        if not active:
            continue
        n_new = max(1, int(round(len(active) * depth)))
        order = sorted(range(len(active)), key=lambda i: -block_params(active[i]))
        copies = [0] * len(active)
        for j in range(max(0, n_new - len(active))):
            copies[order[j % len(order)]] += 1
        c_out = round_to(stage[0].c_out * width, CHANNEL_MULTIPLE)
        stride = stage[0].stride  # only a stride-1, same-width block can be a skip
        for i, (b, extra) in enumerate(zip(active, copies)):
            blocks.append(Block(c_prev, c_out, stride if i == 0 else 1, b.branches, b.se))
            c_prev = c_out
            for _ in range(extra):  # a copy is a residual block at the stage's width
                blocks.append(Block(c_out, c_out, 1, b.branches, b.se))
    return replace(arch, resolution=max(16, round_to(arch.resolution * resolution, 4)),
                   stem_channels=round_to(arch.stem_channels * width, CHANNEL_MULTIPLE), blocks=blocks,
                   head_channels=round_to(arch.head_channels * width, CHANNEL_MULTIPLE),
                   meta={**arch.meta, "scale": {"depth": depth, "width": width, "resolution": resolution}})


def finish(arch: Arch, se_ratio: float) -> Arch:
    """'Add SE + h-swish' to every non-skip block."""
    return replace(arch, blocks=[b if b.is_skip else replace(b, se=True) for b in arch.blocks],
                   activation="hswish", se_ratio=se_ratio)


def compound_scale(arch: Arch, target_us: float, estimate_us: Callable[[Arch], float],
                   simulate_us: Callable[[list[Arch]], list[float]], *, depths: list[float], widths: list[float],
                   resolutions: list[float], se_ratio: float, max_confirmations: int = 8,
                   lower: float = 0.9) -> tuple[Arch, dict]:
    """The largest finished scaling of ``arch`` with simulated latency ≤ target (≥ lower·target
    when any candidate confirms so). ``simulate_us`` takes a batch (so it can fan out)."""
    # Between the grid's points, widths in steps of 0.05 and every 4-pixel resolution: a coarse
    # grid alone can jump from under 90 % of the target straight over it (channels move in 8s).
    widths = _fill(widths, 0.05)
    px = range(round_to(arch.resolution * min(resolutions), 4), round_to(arch.resolution * max(resolutions), 4) + 1, 4)
    resolutions = sorted(set(resolutions) | {p / arch.resolution for p in px})
    cands, seen = [], set()
    for d, w, r in itertools.product(depths, widths, resolutions):
        a = finish(scale_arch(arch, d, w, r), se_ratio)
        if a.describe() in seen:  # neighbouring multipliers often round to the same net
            continue
        seen.add(a.describe())
        cands.append({"d": d, "w": w, "r": r, "arch": a, "est_us": estimate_us(a), "macs": network_macs(a)})
    if not any(c["est_us"] <= target_us for c in cands):
        smallest = min(cands, key=lambda c: c["est_us"])
        raise ScalingError(f"target_latency_us: no scaling of {arch.name or 'the net'} is estimated under {target_us:.1f} µs "
                           f"(smallest: {smallest['est_us']:.1f} µs at d={smallest['d']}, w={smallest['w']}, r={smallest['r']})")
    tried: list[dict] = []
    top = max(cands, key=lambda c: c["est_us"])
    if top["est_us"] < lower * target_us:
        # The estimator says nothing reaches the window: ask the simulator about the largest net
        # once, and refuse a target it cannot reach rather than deliver a net at a fraction of it.
        top["sim_us"] = simulate_us([top["arch"]])[0]
        tried.append(top)
        if top["sim_us"] < lower * target_us:
            raise TargetOutOfReach(
                f"target_latency_us: {target_us:.1f} µs is above what compound scaling of {arch.name or 'the net'} "
                f"can reach: its largest scaling (d={top['d']}, w={top['w']:g}, r={top['r']:g}) simulates at "
                f"{top['sim_us']:.1f} µs, {100 * top['sim_us'] / target_us:.1f} % of the target (needs ≥ "
                f"{100 * lower:.0f} %); lower the target (≤ {top['sim_us'] / lower:.0f} µs) or allow larger "
                f"width_choices / depth_choices / resolution_choices",
                largest_us=top["sim_us"], target_us=target_us,
                largest={k: top[k] for k in ("d", "w", "r", "est_us", "sim_us", "macs")})
        if top["sim_us"] <= target_us:
            return top["arch"], _summary(top, tried, target_us, cands)
    # Confirm in batches of two, stopping at the first confirmed fit. After each batch the
    # estimates are corrected by the simulator's ratio so far (median sim/est), so an estimator
    # that is biased for this family of nets stops proposing candidates over the target.
    while len(tried) < max_confirmations:
        k = float(np.median([c["sim_us"] / c["est_us"] for c in tried])) if tried else 1.0
        fresh = [c for c in cands if "sim_us" not in c]
        # Estimator error is a few %: aim inside the window with a margin on each side (a fifth
        # of the window below, a quarter above, where a miss would cost a confirmation).
        lo, hi = lower + 0.2 * (1 - lower), 1 - 0.25 * (1 - lower)
        # Closest to the window's middle first: a candidate at its edge is the likeliest to miss.
        mid = (lo + hi) / 2 * target_us
        window = sorted((c for c in fresh if lo * target_us <= k * c["est_us"] <= hi * target_us),
                        key=lambda c: (abs(k * c["est_us"] - mid), -c["macs"]))
        rest = sorted((c for c in fresh if k * c["est_us"] <= target_us and c not in window), key=lambda c: -c["est_us"])
        batch = (window + rest)[:min(2, max_confirmations - len(tried))]
        if not batch:
            break
        for c, sim in zip(batch, simulate_us([c["arch"] for c in batch])):
            c["sim_us"] = sim
            tried.append(c)
        ok = [c for c in tried if lower * target_us <= c["sim_us"] <= target_us]
        if ok:
            best = max(ok, key=lambda c: c["macs"])
            return best["arch"], _summary(best, tried, target_us, cands)
    under = [c for c in tried if c["sim_us"] <= target_us]
    if not under:
        raise ScalingError(f"target_latency_us: none of {len(tried)} simulated scalings of {arch.name or 'the net'} met {target_us:.1f} µs")
    best = max(under, key=lambda c: c["sim_us"])
    return best["arch"], _summary(best, tried, target_us, cands)


def _fill(values: list[float], step: float) -> list[float]:
    lo, hi = min(values), max(values)
    n = int(round((hi - lo) / step))
    return sorted(set(values) | {round(lo + i * step, 6) for i in range(n + 1)})


def _summary(best: dict, tried: list[dict], target_us: float, cands: list[dict]) -> dict:
    return {
        "depth": best["d"], "width": best["w"], "resolution": best["r"], "estimated_us": best["est_us"],
        "simulated_us": best["sim_us"], "target_us": target_us, "fraction_of_target": best["sim_us"] / target_us,
        "macs": best["macs"], "candidates": len(cands),
        "confirmations": [{k: c[k] for k in ("d", "w", "r", "est_us", "sim_us", "macs")} for c in tried],
    }


# ---------------------------------------------------------------------------- baselines


def hand_designed(sn, num_classes: int | None = None) -> Arch:
    """An EfficientNet-B0/MobileNetV2-style net on the supernet's macro-architecture (same
    stem, stages, widths, strides, head): MBConv blocks with one depthwise kernel, expansion 1
    in the first stage and 6 after it, kernels 3 and 5 alternating by stage as in B0, SE +
    h-swish. Compound scaling then fits it to the target like the searched net."""
    blocks, c = [], sn.stem_channels
    for si, (n, c_out, s) in enumerate(sn.stages):
        e = 1 if si == 0 else 6
        k = 3 if si % 2 == 0 else 5
        for i in range(n):
            blocks.append(Block(c, c_out, s if i == 0 else 1, (Branch(k, e),), se=True))
            c = c_out
    return Arch(sn.resolution, sn.stem_channels, blocks, sn.head_channels, num_classes or sn.num_classes,
                activation="hswish", name="hand_designed")


# ---------------------------------------------------------------------------- selective SE removal


def excitation_scores(excitations: list[np.ndarray]) -> list[float]:
    """Per SE block: mean over channels of the std over images of its excitation [N, C]."""
    return [float(np.asarray(e).std(axis=0).mean()) for e in excitations]


def remove_se(arch: Arch, scores: list[float], fraction: float) -> tuple[Arch, list[int]]:
    """Drop SE from the ``fraction`` of SE blocks with the least input-dependent excitation.
    ``scores`` follow the order of the SE blocks among the active blocks."""
    active_idx = [i for i, b in enumerate(arch.blocks) if not b.is_skip and b.se]
    k = int(round(fraction * len(active_idx)))
    drop = sorted(np.argsort(scores)[:k].tolist())
    blocks = list(arch.blocks)
    for j in drop:
        blocks[active_idx[j]] = replace(blocks[active_idx[j]], se=False)
    return replace(arch, blocks=blocks, name=f"{arch.name}-rmSE"), drop
