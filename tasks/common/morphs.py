"""The shared head model of the AnimeCeleb-style data: a linear morph model and its morph names.

A head is a linear morph model: template vertices + per-morph vertex offsets. This is the
contract between the ``animeceleb`` renderer and every later flow (``reenact`` reads these
models to fit its bridge and its geometric EDTN loss). Blender renders a head as one mesh whose
shape keys are exactly these offsets (relative keys, value = morph weight), so the vertices
Blender evaluates for weights ``w`` are ``template + Σ_k w_k · offsets[k]`` — which
:meth:`MorphModel.evaluate` reproduces in numpy or torch, differentiably, without Blender.
Faces are triangles; ``face_material`` indexes ``materials``; ``regions`` names vertex sets
(``eye_left``, ``mouth``, ...) that tests and landmark losses use.

Anime heads carry 17 semantic expression morphs (AnimeCeleb's count; its list was never
published, so ours is chosen to cover the eyes per side, the brows and the mouth). The five vowel
shapes sit at indices 12–16, where Animo/EDTN apply their mouth boost. "Left" is always the
character's own left, which appears on the image's right in a frontal view. Human heads carry
anny's 52 ARKit-named blendshapes, in anny's order.
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
        from .artifacts import atomic_path

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


# ----------------------------------------------------------------------------- morph names

#: name → what it does (index = position in the 17-d morph vector)
ANIME_MORPHS: dict[str, str] = {
    "eye_close_left": "left eye closes to a relaxed downward arc",
    "eye_close_right": "right eye closes to a relaxed downward arc",
    "eye_smile_left": "left eye closes to an upward 'happy' arc (^)",
    "eye_smile_right": "right eye closes to an upward 'happy' arc (^)",
    "eye_wide_left": "left eye opens wide (taller, slightly larger)",
    "eye_wide_right": "right eye opens wide (taller, slightly larger)",
    "brow_raise": "both brows lift (surprise)",
    "brow_angry": "inner brow ends drop, outer ends lift",
    "brow_sad": "inner brow ends lift, outer ends drop",
    "iris_small": "irises and pupils shrink (shock)",
    "mouth_smile": "mouth corners curve up",
    "mouth_frown": "mouth corners curve down",
    "mouth_a": "vowel 'a': open, tall",
    "mouth_i": "vowel 'i': wide, narrow opening",
    "mouth_u": "vowel 'u': small, round",
    "mouth_e": "vowel 'e': wide, half open",
    "mouth_o": "vowel 'o': round, open",
}
ANIME_MORPH_NAMES: list[str] = list(ANIME_MORPHS)
assert len(ANIME_MORPH_NAMES) == 17

#: the 52 ARKit blendshape names, in the order anny's ``facial_action_labels`` uses
HUMAN_MORPH_NAMES: list[str] = [
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff",
    "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight",
    "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft",
    "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
    "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight", "tongueOut",
]
assert len(HUMAN_MORPH_NAMES) == 52

MORPHS_BY_DOMAIN: dict[str, list[str]] = {"anime": ANIME_MORPH_NAMES, "human": HUMAN_MORPH_NAMES}

#: Pose convention (degrees), applied by the head rig about the neck joint, in this order:
#: roll, then pitch, then yaw (R = Rz(yaw) · Rx(−pitch) · Ry(roll)); the camera looks along +Y.
POSE_CONVENTION = {
    "yaw": "positive turns the head to its own left: the face moves toward the image's right",
    "pitch": "positive tilts the head up (chin rises)",
    "roll": "positive tilts the top of the head toward the image's right (clockwise on screen)",
}
