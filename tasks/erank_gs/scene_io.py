"""Scenes in the NeRF-synthetic / nerfstudio ``transforms.json`` convention: read and write.

Layouts read:

* NeRF-synthetic: ``transforms_{train,test}.json`` with ``camera_angle_x`` and ``frames`` of
  ``{"file_path": "./train/r_0", "transform_matrix": 4×4 camera-to-world}`` (OpenGL/Blender
  camera: looks down −Z, +Y up; ``.png`` appended when the path has no extension).
* nerfstudio: one ``transforms.json`` with ``fl_x``/``fl_y``/``cx``/``cy``/``w``/``h`` (or
  ``camera_angle_x``); every 8th frame is held out for test, as nerfstudio's default does.

Optional per-frame ``depth_file_path`` (camera-z ``.npy``) and ``normal_file_path`` (world-space
normals ``.npy``) and a top-level ``mesh_path`` (PLY) carry the ground truth this flow's own
scenes have; a user's scene without them is trained and scored on images only. RGBA images are
composited on the white background the renderer uses. A malformed file fails with a
:class:`DataError` naming the file and the field.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.common.config import DataError

from .render import Camera

#: OpenGL camera (−Z forward, +Y up) → OpenCV camera (+Z forward, +Y down)
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass
class SceneSplit:
    images: torch.Tensor  # [N, H, W, 3] on white, float in [0, 1]
    alphas: torch.Tensor  # [N, H, W]
    cameras: list[Camera]
    depths: torch.Tensor | None  # [N, H, W] camera z, 0 = background
    normals: torch.Tensor | None  # [N, H, W, 3] world space, 0 = background
    names: list[str]

    def __len__(self) -> int:
        return len(self.cameras)


def _fail(path: Path, msg: str) -> DataError:
    return DataError(f"{path}: {msg}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise _fail(path, "no such transforms file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(path, f"not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise _fail(path, "top level must be an object with 'frames'")
    frames = doc.get("frames")
    if not isinstance(frames, list) or not frames:
        raise _fail(path, "'frames' must be a non-empty list")
    return doc


def _matrix(path: Path, i: int, frame: Any) -> np.ndarray:
    if not isinstance(frame, dict):
        raise _fail(path, f"frames[{i}] must be an object")
    if "file_path" not in frame or not isinstance(frame["file_path"], str):
        raise _fail(path, f"frames[{i}].file_path: missing or not a string")
    try:
        m = np.asarray(frame["transform_matrix"], dtype=np.float64)
    except KeyError:
        raise _fail(path, f"frames[{i}].transform_matrix: missing") from None
    except (TypeError, ValueError):
        raise _fail(path, f"frames[{i}].transform_matrix: not a numeric 4x4 matrix") from None
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise _fail(path, f"frames[{i}].transform_matrix: must be a finite 4x4 matrix, got shape {m.shape}")
    if abs(np.linalg.det(m[:3, :3])) < 1e-6:
        raise _fail(path, f"frames[{i}].transform_matrix: rotation part is singular")
    return m


def _intrinsics(path: Path, doc: dict, w: int, h: int) -> tuple[float, float, float, float]:
    def num(key: str) -> float:
        v = doc[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise _fail(path, f"{key}: must be a positive number, got {v!r}")
        return float(v)

    if "fl_x" in doc:
        fx = num("fl_x")
        fy = num("fl_y") if "fl_y" in doc else fx
        cx = num("cx") if "cx" in doc else w / 2
        cy = num("cy") if "cy" in doc else h / 2
        return fx, fy, cx, cy
    if "camera_angle_x" in doc:
        ax = num("camera_angle_x")
        if ax >= math.pi:
            raise _fail(path, f"camera_angle_x: must be below pi radians, got {ax}")
        f = 0.5 * w / math.tan(0.5 * ax)
        return f, f, w / 2, h / 2
    raise _fail(path, "needs camera_angle_x (NeRF-synthetic) or fl_x (nerfstudio)")


def _image_path(root: Path, fp: str) -> Path:
    p = (root / fp).resolve()
    return p if p.suffix else p.with_suffix(".png")


def _load_image(path: Path, i: int, file: Path, res: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    if not file.is_file():
        raise _fail(path, f"frames[{i}].file_path: image {file} does not exist")
    try:
        im = Image.open(file).convert("RGBA")
    except Exception as e:  # noqa: BLE001 - any decoder failure means a damaged image
        raise _fail(path, f"frames[{i}].file_path: cannot read image {file} ({type(e).__name__})") from None
    if res and max(im.size) != res:
        s = res / max(im.size)
        im = im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.Resampling.BOX)
    a = np.asarray(im, np.float32) / 255.0
    return a[..., :3] * a[..., 3:] + (1 - a[..., 3:]), a[..., 3]


def _load_npy(path: Path, i: int, key: str, file: Path, shape: tuple[int, ...], native: tuple[int, int]) -> np.ndarray:
    if not file.is_file():
        raise _fail(path, f"frames[{i}].{key}: {file} does not exist")
    try:
        arr = np.load(file, allow_pickle=False).astype(np.float32)
    except Exception as e:  # noqa: BLE001
        raise _fail(path, f"frames[{i}].{key}: cannot read {file} ({type(e).__name__})") from None
    if arr.shape[:2] != native:
        raise _fail(path, f"frames[{i}].{key}: shape {arr.shape} does not match the image {native}")
    if arr.shape[:2] != shape:  # nearest sample at the pixel centres of the resized image
        ys = ((np.arange(shape[0]) + 0.5) * native[0] / shape[0]).astype(int)
        xs = ((np.arange(shape[1]) + 0.5) * native[1] / shape[1]).astype(int)
        arr = arr[ys][:, xs]
    return arr


def split_files(root: Path) -> dict[str, Path] | None:
    if (root / "transforms_train.json").is_file():
        return {s: root / f"transforms_{s}.json" for s in ("train", "test")}
    if (root / "transforms.json").is_file():
        return {"all": root / "transforms.json"}
    return None


def load_split(root: Path | str, split: str, resolution: int = 0) -> SceneSplit:
    """Load ``split`` (train / test) of a scene folder; ``resolution`` = longest side (0 = native)."""
    root = Path(root)
    files = split_files(root)
    if files is None:
        raise DataError(f"{root}: no transforms_train.json / transforms.json (NeRF-synthetic or nerfstudio layout)")
    if "all" in files:
        path = files["all"]
        doc = _read_json(path)
        idx = [i for i in range(len(doc["frames"])) if (i % 8 == 0) == (split == "test")]
    else:
        path = files.get(split)
        if path is None or not path.is_file():
            raise DataError(f"{root}: no transforms_{split}.json")
        doc = _read_json(path)
        idx = list(range(len(doc["frames"])))
    if not idx:
        raise _fail(path, f"no frames for the {split} split")
    images, alphas, cams, depths, normals, names = [], [], [], [], [], []
    for i in idx:
        frame = doc["frames"][i]
        c2w = _matrix(path, i, frame)
        file = _image_path(path.parent, frame["file_path"])
        from PIL import Image

        if file.is_file():
            with Image.open(file) as im:
                native_w, native_h = im.size
        else:
            native_w = native_h = 0
        rgb, a = _load_image(path, i, file, resolution)
        h, w = rgb.shape[:2]
        fx, fy, cx, cy = _intrinsics(path, {**doc, **{k: v for k, v in frame.items() if k in ("fl_x", "fl_y", "cx", "cy")}},
                                     int(doc.get("w", native_w)), int(doc.get("h", native_h)))
        sx, sy = w / native_w, h / native_h
        K = torch.tensor([[fx * sx, 0, cx * sx], [0, fy * sy, cy * sy], [0, 0, 1]], dtype=torch.float32)
        viewmat = torch.from_numpy(np.linalg.inv(c2w @ GL_TO_CV)).float()
        cams.append(Camera(viewmat, K, w, h))
        images.append(rgb)
        alphas.append(a)
        names.append(Path(frame["file_path"]).name)
        for key, store, shape in (("depth_file_path", depths, (h, w)), ("normal_file_path", normals, (h, w))):
            if key in frame:
                store.append(_load_npy(path, i, key, path.parent / frame[key], shape, (native_h, native_w)))
    for key, store in (("depth_file_path", depths), ("normal_file_path", normals)):
        if store and len(store) != len(idx):
            raise _fail(path, f"{key}: present on some frames but not all")
    t = lambda xs: torch.from_numpy(np.stack(xs)) if xs else None  # noqa: E731
    return SceneSplit(t(images), t(alphas), cams, t(depths), t(normals), names)


def mesh_path(root: Path | str) -> Path | None:
    """The ground-truth mesh a scene declares (``mesh_path`` in its transforms), if any."""
    root = Path(root)
    files = split_files(root) or {}
    for f in files.values():
        if f.is_file():
            doc = _read_json(f)
            if "mesh_path" in doc:
                p = root / doc["mesh_path"]
                if not p.is_file():
                    raise _fail(f, f"mesh_path: {p} does not exist")
                return p
    return None


def write_transforms(path: Path | str, camera_angle_x: float, frames: list[dict[str, Any]], **extra: Any) -> Path:
    path = Path(path)
    path.write_text(json.dumps({"camera_angle_x": camera_angle_x, **extra, "frames": frames}, indent=1) + "\n")
    return path
