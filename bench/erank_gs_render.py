"""CPU renderer speed of the erank_gs flow: forward + backward time per 10k Gaussians.

Renders a random Gaussian cloud (the flow's random initialisation, opacities raised so most
Gaussians contribute) at a fixed resolution and times forward + backward of an L1 loss through
RGB, depth and normals, per 10k Gaussians, for

* ``ours`` — :func:`tasks.erank_gs.render.render_torch` (gsplat's torch projection + a tiled
  torch alpha-blend, 16-px tiles): what the flow trains with on CPU;
* ``dense`` — the same renderer with one tile covering the image (a plain depth-sorted torch
  alpha-blend over all Gaussians × all pixels, the baseline of ``shared/PLATFORM.md``);
* ``gsplat_torch`` — gsplat's own pure-torch reference rasterizer (``_fully_fused_projection`` →
  ``_isect_tiles`` → ``_isect_offset_encode`` → ``_rasterize_to_pixels``). It runs only where
  CUDA is available: ``_rasterize_to_pixels`` calls the CUDA kernel
  ``rasterize_to_indices_in_range`` and nerfacc's packed (CUDA-only) ops; on a CPU machine the
  row says so and the ratio column is empty.

Ratios are ``time / time(gsplat_torch)`` where that exists and ``time / time(dense)`` otherwise.
Prints a table and writes ``bench/results/erank_gs_render.json``.

Run:  .venv/bin/python bench/erank_gs_render.py [--sizes 2000 10000 --resolution 64 --repeats 3]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tasks.erank_gs.gaussians import GaussianModel  # noqa: E402
from tasks.erank_gs.render import Camera, render_torch  # noqa: E402


def scene(n: int, res: int, device: str) -> tuple[GaussianModel, Camera]:
    g = torch.Generator().manual_seed(0)
    m = GaussianModel.random_init(n, torch.zeros(3), 0.8, g)
    with torch.no_grad():
        m.opacity_logits += 2.0
    f = 0.5 * res / math.tan(math.radians(20))
    V = torch.eye(4)
    V[2, 3] = 2.6
    return m.to(device), Camera(V, torch.tensor([[f, 0, res / 2], [0, f, res / 2], [0, 0, 1.0]]), res, res)


def time_ours(m: GaussianModel, cam: Camera, tile: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        m.zero_grad()
        t0 = time.perf_counter()
        out = render_torch(m, cam, torch.ones(3, device=m.means.device), tile=tile)
        (out.rgb.mean() + out.depth.mean() + out.normal.mean()).backward()
        if m.means.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def time_gsplat_torch(m: GaussianModel, cam: Camera, repeats: int) -> float | str:
    if not m.means.is_cuda:
        return "not runnable on CPU (rasterize_to_indices_in_range is a CUDA kernel; nerfacc packed ops need CUDA)"
    try:
        from gsplat.cuda._torch_impl import (_fully_fused_projection, _isect_offset_encode, _isect_tiles,
                                             _quat_scale_to_covar_preci, _rasterize_to_pixels)
    except ImportError as e:
        return f"unavailable ({e})"
    best = float("inf")
    tile = 16
    for _ in range(repeats):
        m.zero_grad()
        t0 = time.perf_counter()
        covars, _ = _quat_scale_to_covar_preci(m.unit_quats, m.scales, True, False)
        radii, means2d, depths, conics, _ = _fully_fused_projection(m.means, covars, cam.viewmat[None].cuda(),
                                                                     cam.K[None].cuda(), cam.width, cam.height)
        tw, th = math.ceil(cam.width / tile), math.ceil(cam.height / tile)
        _, isect_ids, flatten_ids = _isect_tiles(means2d, radii, depths, tile, tw, th)
        offsets = _isect_offset_encode(isect_ids, 1, tw, th)
        feats = torch.cat([m.colors, m.colors, depths[0, :, None]], 1)[None]  # same channel count as ours
        img, _ = _rasterize_to_pixels(means2d, conics, feats, m.opacities[None], cam.width, cam.height, tile,
                                      offsets, flatten_ids)
        img.mean().backward()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000])
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for n in args.sizes:
        m, cam = scene(n, args.resolution, device)
        ours = time_ours(m, cam, 16, args.repeats)
        dense = time_ours(m, cam, args.resolution, args.repeats)
        ref = time_gsplat_torch(m, cam, args.repeats)
        base = ref if isinstance(ref, float) else dense
        for name, t in (("ours", ours), ("dense", dense), ("gsplat_torch", ref)):
            per10k = t / n * 10_000 if isinstance(t, float) else None
            rows.append({"renderer": name, "gaussians": n, "resolution": args.resolution, "device": device,
                         "fwd_bwd_s": t if isinstance(t, float) else None,
                         "s_per_10k": per10k, "ratio": (t / base) if isinstance(t, float) else None,
                         "ratio_to": "gsplat_torch" if isinstance(ref, float) else "dense",
                         "note": "" if isinstance(t, float) else t})
    print(f"| renderer | N | res | device | fwd+bwd s | s / 10k | ratio |\n|---|---|---|---|---|---|---|")
    for r in rows:
        fmt = lambda v, f: "—" if v is None else format(v, f)  # noqa: E731
        print(f"| {r['renderer']} | {r['gaussians']} | {r['resolution']} | {r['device']} | {fmt(r['fwd_bwd_s'], '.3f')} "
              f"| {fmt(r['s_per_10k'], '.3f')} | {fmt(r['ratio'], '.2f')} (vs {r['ratio_to']}) {r['note'][:40]}|")
    out = ROOT / "bench" / "results" / "erank_gs_render.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"rows": rows, "threads": args.threads, "torch": torch.__version__}
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
