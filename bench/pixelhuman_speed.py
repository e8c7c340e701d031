"""Rays per second of the pixelhuman field, for training (forward + backward) and rendering.

Builds the flow's three fields (ours, the pose-unaware pixel-aligned baseline, the per-subject
animatable NeRF) at the flow's default sizes and times them on a real anny body (one identity
in a procedural target pose, its rest pose as the input pose, 3 input views of random pixels —
speed does not depend on the image content): a training step is ``--rays`` jittered rays
rendered, scored and back-propagated with an Adam step; rendering is a full ``--resolution``²
image in 1024-ray chunks under ``no_grad``. Runs on the CPU, and on CUDA when a GPU is visible
(models, rays, images and the skinning lookup on the device; ``torch.cuda.synchronize`` around
each timing). Skinning, projection and rendering are plain torch (no PyTorch3D here).

Prints a table and writes ``bench/results/pixelhuman_speed.json``.

Run:  .venv/bin/python bench/pixelhuman_speed.py [--rays 256 --resolution 64 --views 3 --repeats 5]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def body_context(views: int, resolution: int, skin_vertices: int):
    """A posed anny body, its skinning, a ring of cameras and random input images."""
    from tasks.pixelhuman.bodies import TARGET_Z, lookup_vertices
    from tasks.pixelhuman.body import BodyIdentity, dense_weights, pose_body, pose_vector, procedural_pose, walk_pose
    from tasks.pixelhuman.cameras import Cameras, ring
    from tasks.pixelhuman.model import Context

    rng = np.random.default_rng(0)
    target, rest_pose = procedural_pose(rng, 35.0), walk_pose(0.0)
    posed = pose_body(BodyIdentity.sample(1), [target, rest_pose])
    W = torch.from_numpy(dense_weights())
    idx = lookup_vertices(len(W), skin_vertices)
    cams = Cameras([f"c{i}" for i in range(views + 1)],
                   torch.as_tensor(np.stack(ring(views + 1, 3.1, 1.0, TARGET_Z)), dtype=torch.float32), resolution, 40.0)
    T = torch.from_numpy(posed["transforms"])
    verts = torch.from_numpy(posed["vertices"][0])
    g = torch.Generator().manual_seed(0)
    ctx = Context(images=torch.rand(views, 3, resolution, resolution, generator=g), cams=cams.subset(list(range(views))),
                  in_transforms=T[1].expand(views, -1, -1, -1).clone(), tgt_transforms=T[0], tgt_verts=verts[idx],
                  vert_weights=W[idx], tgt_pose=torch.from_numpy(pose_vector(target)))
    return ctx, cams, verts


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(method: str, device: torch.device, args, ctx, cams, verts) -> dict:
    from tasks.pixelhuman.cameras import pixel_rays
    from tasks.pixelhuman.config import ModelConfig
    from tasks.pixelhuman.evaluate import render_image
    from tasks.pixelhuman.model import build_field
    from tasks.pixelhuman.render import body_box, render_rays

    m = ModelConfig()
    torch.manual_seed(0)
    field = build_field(method, m, len(ctx.tgt_pose)).to(device)
    opt = torch.optim.Adam(field.parameters(), lr=1e-3)
    R = cams.resolution
    g = torch.Generator().manual_seed(1)
    lo, hi = body_box(verts.to(device), m.shell)
    bg = torch.ones(3, device=device)
    view = len(ctx.cams)  # the held-out camera of the ring

    def train_step() -> None:
        pix = torch.stack([torch.randint(R // 8, R - R // 8, (args.rays,), generator=g),
                           torch.randint(R // 4, R - R // 4, (args.rays,), generator=g)], 1)
        o, d = pixel_rays(cams, view, pix)
        c = field.encode(ctx.to(device))
        out = render_rays(lambda x: field(x, c), o.to(device), d.to(device), lo, hi, m.samples_per_ray, jitter=True,
                          background=bg, generator=g)
        loss = ((out["rgb"] - 0.5) ** 2).mean() + out["acc"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    train_step()  # warm-up (allocations, kernels)
    sync(device)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        train_step()
        sync(device)
        times.append(time.perf_counter() - t0)
    field.eval()
    render_image(field, ctx, cams, view, verts, m.samples_per_ray, m.shell, device)
    sync(device)
    rtimes = []
    for _ in range(max(1, args.repeats // 2)):
        t0 = time.perf_counter()
        render_image(field, ctx, cams, view, verts, m.samples_per_ray, m.shell, device)
        sync(device)
        rtimes.append(time.perf_counter() - t0)
    t_train, t_render = float(np.median(times)), float(np.median(rtimes))
    return {"method": method, "device": device.type, "train_rays_per_s": args.rays / t_train,
            "train_step_s": t_train, "render_rays_per_s": R * R / t_render, "render_image_s": t_render}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rays", type=int, default=256)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--views", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "pixelhuman_speed.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from tasks.pixelhuman.config import METHODS, ModelConfig

    ctx, cams, verts = body_context(args.views, args.resolution, ModelConfig().skin_vertices)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = [bench(m, d, args, ctx, cams, verts) for d in devices for m in METHODS]
    from tasks.common.tables import markdown_table

    print(markdown_table([{"method": r["method"], "device": r["device"], "train rays/s": round(r["train_rays_per_s"]),
                           "train step s": round(r["train_step_s"], 3), "render rays/s": round(r["render_rays_per_s"]),
                           f"{args.resolution}² image s": round(r["render_image_s"], 3)} for r in rows]))
    if not torch.cuda.is_available():
        print("(no CUDA device visible: CPU rows only; the same script times the GPU path where one is present)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": vars(args), "torch": torch.__version__, "threads": torch.get_num_threads(),
                               "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                               "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
