"""A head as a linear morph model: template vertices + per-morph vertex offsets.

This is the contract between the renderer and every later flow. Blender renders a head as one
mesh whose shape keys are exactly these offsets (relative keys, value = morph weight), so the
vertices Blender evaluates for weights ``w`` are ``template + Σ_k w_k · offsets[k]`` — which
:meth:`MorphModel.evaluate` reproduces in numpy or torch, differentiably, without Blender.
Faces are triangles; ``face_material`` indexes ``materials``; ``regions`` names vertex sets
(``eye_left``, ``mouth``, ...) that tests and landmark losses use.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Material:
    name: str
    color: tuple[float, float, float]
    roughness: float = 0.5
    #: emission strength in the default style (eyes and mouth read as flat anime paint)
    emission: float = 0.0
    #: drawn with an outline in the toon style (solid parts; not the flat decals on them)
    outline: bool = False


@dataclass
class MorphModel:
    domain: str
    names: list[str]
    template: np.ndarray  # [V, 3] float32, metres, head at the origin, facing -Y, Z up
    faces: np.ndarray  # [F, 3] int32
    offsets: np.ndarray  # [K, V, 3] float32
    face_material: np.ndarray  # [F] int32 → materials
    materials: list[Material]
    regions: dict[str, np.ndarray] = field(default_factory=dict)  # name → vertex indices
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.template = np.asarray(self.template, np.float32)
        self.faces = np.asarray(self.faces, np.int32)
        self.offsets = np.asarray(self.offsets, np.float32).reshape(len(self.names), len(self.template), 3)
        self.face_material = np.asarray(self.face_material, np.int32)
        if self.faces.ndim != 2 or self.faces.shape[1] != 3:
            raise ValueError(f"faces must be [F, 3] triangles, got {self.faces.shape}")
        if len(self.face_material) != len(self.faces):
            raise ValueError("face_material needs one entry per face")
        if self.faces.size and (self.faces.min() < 0 or self.faces.max() >= len(self.template)):
            raise ValueError("faces index vertices that do not exist")

    @property
    def num_morphs(self) -> int:
        return len(self.names)

    def weights(self, named: dict[str, float]) -> np.ndarray:
        """A weight vector from ``{morph: weight}``; unknown names are an error."""
        w = np.zeros(self.num_morphs, np.float32)
        for k, v in named.items():
            if k not in self.names:
                raise KeyError(f"unknown {self.domain} morph {k!r}")
            w[self.names.index(k)] = v
        return w

    def evaluate(self, weights):
        """Vertices for weights ``[K]`` or ``[B, K]``; numpy in → numpy out, torch in → torch out."""
        if hasattr(weights, "detach"):  # torch: differentiable in the weights
            import torch

            off = torch.as_tensor(self.offsets, dtype=weights.dtype, device=weights.device)
            tmpl = torch.as_tensor(self.template, dtype=weights.dtype, device=weights.device)
            return tmpl + torch.einsum("...k,kvc->...vc", weights, off)
        w = np.asarray(weights, np.float64)
        return (self.template.astype(np.float64) + np.einsum("...k,kvc->...vc", w, self.offsets.astype(np.float64))).astype(np.float32)

    def region_vertices(self, name: str) -> np.ndarray:
        if name not in self.regions:
            raise KeyError(f"{self.domain} head has no region {name!r}; has {sorted(self.regions)}")
        return self.regions[name]

    # ------------------------------------------------------------------------------ IO

    def save(self, path: Path | str) -> Path:
        from tasks.common.artifacts import atomic_path

        path = Path(path)
        arrays = {
            "template": self.template,
            "faces": self.faces,
            "offsets": self.offsets,
            "face_material": self.face_material,
            "names": np.array(self.names),
        }
        arrays.update({f"region/{k}": np.asarray(v, np.int32) for k, v in self.regions.items()})
        header = {
            "domain": self.domain,
            "materials": [m.__dict__ for m in self.materials],
            "meta": self.meta,
        }
        arrays["header"] = np.array(json.dumps(header))
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: Path | str) -> "MorphModel":
        with np.load(Path(path), allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            regions = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("region/")}
            return cls(
                domain=header["domain"],
                names=[str(n) for n in z["names"]],
                template=z["template"],
                faces=z["faces"],
                offsets=z["offsets"],
                face_material=z["face_material"],
                materials=[Material(**{**m, "color": tuple(m["color"])}) for m in header["materials"]],
                regions=regions,
                meta=header.get("meta", {}),
            )
