"""The Gaussian scene model of 3D Gaussian Splatting and its standard PLY file.

Parameters are stored as 3DGS stores them (and as its PLY holds them): means, log-scales,
quaternions (w, x, y, z; normalised on use), opacity logits and the degree-0 spherical-harmonic
colour coefficient (``f_dc``; colour = 0.5 + C0·f_dc). Densification changes how many Gaussians
there are: it swaps each parameter's ``.data`` in place, so the optimiser keeps its parameter
objects, and :meth:`GaussianModel._load_from_state_dict` resizes before loading, so a checkpoint
with a different count restores (the training engine's resume path).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

#: Y_0^0, the constant SH basis: the PLY's f_dc is (rgb − 0.5) / C0
SH_C0 = 0.28209479177387814
PARAMS = ("means", "log_scales", "quats", "opacity_logits", "f_dc")


class GaussianModel(nn.Module):
    def __init__(self, means: Tensor, log_scales: Tensor, quats: Tensor, opacity_logits: Tensor, f_dc: Tensor):
        super().__init__()
        self.means = nn.Parameter(means.float().contiguous())  # [N, 3]
        self.log_scales = nn.Parameter(log_scales.float().contiguous())  # [N, 3]
        self.quats = nn.Parameter(quats.float().contiguous())  # [N, 4] (w, x, y, z)
        self.opacity_logits = nn.Parameter(opacity_logits.float().contiguous())  # [N]
        self.f_dc = nn.Parameter(f_dc.float().contiguous())  # [N, 3]

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def scales(self) -> Tensor:
        return self.log_scales.exp()

    @property
    def opacities(self) -> Tensor:
        return torch.sigmoid(self.opacity_logits)

    @property
    def colors(self) -> Tensor:
        return (0.5 + SH_C0 * self.f_dc).clamp_min(0.0)

    @property
    def unit_quats(self) -> Tensor:
        return nn.functional.normalize(self.quats, dim=-1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001 - torch's signature
        # A checkpoint taken after densification has another N: resize first (same objects).
        for name in PARAMS:
            saved = state_dict.get(prefix + name)
            p = getattr(self, name)
            if saved is not None and saved.shape != p.shape:
                p.data = torch.empty(saved.shape, dtype=p.dtype, device=p.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def random_init(cls, n: int, center: Tensor, half_extent: float, generator: torch.Generator) -> "GaussianModel":
        """3DGS's random initialisation (no SfM points here): uniform in the scene's bounding
        cube, isotropic, scale = mean distance to the 3 nearest neighbours, opacity 0.1, grey."""
        means = center + (torch.rand(n, 3, generator=generator) * 2 - 1) * half_extent
        d = torch.cdist(means, means)
        d.fill_diagonal_(float("inf"))
        knn = d.topk(min(3, max(1, n - 1)), largest=False).values.mean(-1).clamp_min(1e-4)
        log_scales = knn.log()[:, None].repeat(1, 3)
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        opacity = torch.logit(torch.full((n,), 0.1))
        f_dc = (torch.rand(n, 3, generator=generator) * 0.2 + 0.4 - 0.5) / SH_C0
        return cls(means, log_scales, quats, opacity, f_dc)


# ---------------------------------------------------------------------------------------- PLY


def ply_fields() -> list[str]:
    """Vertex properties of a standard (SH degree 0) 3DGS PLY, in the reference implementation's order."""
    return ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
            "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def save_ply(model: GaussianModel, path: Path | str) -> Path:
    """Binary little-endian PLY that common splat viewers open (SuperSplat, antimatter15, gsplat's viewer)."""
    path = Path(path)
    with torch.no_grad():
        n = len(model)
        cols = [model.means, torch.zeros(n, 3), model.f_dc, model.opacity_logits[:, None], model.log_scales, model.quats]
        data = torch.cat([c.detach().float().cpu().reshape(n, -1) for c in cols], 1).numpy().astype("<f4")
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {f}" for f in ply_fields()] + ["end_header"]
    with open(path, "wb") as fh:
        fh.write(("\n".join(header) + "\n").encode("ascii"))
        fh.write(np.ascontiguousarray(data).tobytes())
    return path


def load_ply(path: Path | str) -> GaussianModel:
    """Read a 3DGS PLY (binary little-endian, float properties; extra properties such as
    ``f_rest_*`` are read and ignored)."""
    path = Path(path)
    raw = path.read_bytes()
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply\n") or end < 0:
        raise ValueError(f"{path}: not a PLY file (no 'ply' magic or 'end_header')")
    lines = raw[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise ValueError(f"{path}: only binary_little_endian 3DGS PLYs are supported")
    n = next(int(l.split()[2]) for l in lines if l.startswith("element vertex"))
    props = [l.split() for l in lines if l.startswith("property")]
    if any(p[1] != "float" for p in props):
        raise ValueError(f"{path}: every vertex property must be float")
    names = [p[2] for p in props]
    missing = set(ply_fields()) - set(names) - {"nx", "ny", "nz"}
    if missing:
        raise ValueError(f"{path}: missing 3DGS properties {sorted(missing)}")
    arr = np.frombuffer(raw[end + len(b"end_header\n"):], dtype="<f4", count=n * len(names)).reshape(n, len(names))
    col = {k: torch.from_numpy(arr[:, i].copy()) for i, k in enumerate(names)}
    st = lambda *ks: torch.stack([col[k] for k in ks], 1)  # noqa: E731
    return GaussianModel(st("x", "y", "z"), st("scale_0", "scale_1", "scale_2"), st("rot_0", "rot_1", "rot_2", "rot_3"),
                         col["opacity"], st("f_dc_0", "f_dc_1", "f_dc_2"))
