"""erank_gs scenes: the transforms.json loader (both layouts, camera convention, ground-truth
passes) and its refusals, the procedural meshes and camera rigs, the config's checks."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.common.config import ConfigError, DataError, load_config
from tasks.erank_gs.config import ErankGSConfig
from tasks.erank_gs.procedural import SCENES, look_at_c2w, scene_mesh, sphere_views
from tasks.erank_gs.scene_io import load_split, mesh_path


def write_scene(root, *, n=3, size=16, layout="synthetic", extra=None, depth=True):
    root.mkdir(parents=True, exist_ok=True)
    frames = []
    for i, c2w in enumerate(sphere_views(n, 3.0)):
        rgba = np.zeros((size, size, 4), np.uint8)
        rgba[4:12, 4:12] = (255, 0, 0, 255)  # a red square, transparent elsewhere
        Image.fromarray(rgba).save(root / f"r_{i}.png")
        fr = {"file_path": f"./r_{i}" if layout == "synthetic" else f"r_{i}.png", "transform_matrix": c2w.tolist()}
        if depth:
            np.save(root / f"r_{i}_depth.npy", np.full((size, size), 3.0, np.float32))
            fr["depth_file_path"] = f"r_{i}_depth.npy"
        frames.append(fr)
    doc = {"camera_angle_x": math.radians(40), "frames": frames, **(extra or {})}
    if layout == "synthetic":
        for split in ("train", "test"):
            (root / f"transforms_{split}.json").write_text(json.dumps(doc))
    else:
        doc.pop("camera_angle_x")
        f = 0.5 * size / math.tan(math.radians(20))
        doc.update(fl_x=f, fl_y=f, cx=size / 2, cy=size / 2, w=size, h=size)
        (root / "transforms.json").write_text(json.dumps(doc))
    return root


def test_nerf_synthetic_scene_loads_on_white_with_opencv_cameras(tmp_path):
    root = write_scene(tmp_path / "s")
    sp = load_split(root, "train")
    assert sp.images.shape == (3, 16, 16, 3) and sp.depths.shape == (3, 16, 16) and sp.normals is None
    assert torch.allclose(sp.images[0, 0, 0], torch.ones(3))  # transparent → white background
    assert torch.allclose(sp.images[0, 8, 8], torch.tensor([1.0, 0, 0]))
    for cam in sp.cameras:  # cameras look at the origin: it projects to the image centre, in front
        pc = cam.viewmat @ torch.tensor([0.0, 0, 0, 1])
        assert pc[2] > 0
        uv = (cam.K @ pc[:3]) / pc[2]
        assert torch.allclose(uv[:2], torch.tensor([8.0, 8.0]), atol=1e-4)
        assert torch.allclose(cam.center.norm(), torch.tensor(3.0), atol=1e-5)


def test_nerfstudio_layout_holds_out_every_eighth_frame_and_resizes(tmp_path):
    root = write_scene(tmp_path / "ns", n=10, layout="nerfstudio")
    train, test = load_split(root, "train", 8), load_split(root, "test", 8)
    assert len(train) == 8 and len(test) == 2
    assert train.images.shape[1:3] == (8, 8) and train.depths.shape[1:] == (8, 8)
    assert train.cameras[0].K[0, 2].item() == pytest.approx(4.0)


@pytest.mark.parametrize("breakage, message", [
    (lambda d: d.pop("frames"), "'frames' must be a non-empty list"),
    (lambda d: d.update(frames=[]), "'frames' must be a non-empty list"),
    (lambda d: d["frames"][1].pop("transform_matrix"), r"frames\[1\].transform_matrix: missing"),
    (lambda d: d["frames"][0].update(transform_matrix=[[1, 0, 0], [0, 1, 0]]), r"frames\[0\].transform_matrix: must be a finite 4x4"),
    (lambda d: d["frames"][0].update(transform_matrix="eye"), r"frames\[0\].transform_matrix: not a numeric 4x4"),
    (lambda d: d["frames"][2].update(file_path="./nope"), r"frames\[2\].file_path: image .* does not exist"),
    (lambda d: d["frames"][0].pop("file_path"), r"frames\[0\].file_path: missing"),
    (lambda d: d.pop("camera_angle_x"), "needs camera_angle_x"),
    (lambda d: d.update(camera_angle_x=-1), "camera_angle_x: must be a positive number"),
    (lambda d: d["frames"][1].pop("depth_file_path"), "depth_file_path: present on some frames but not all"),
    (lambda d: d["frames"][0].update(depth_file_path="missing.npy"), r"frames\[0\].depth_file_path: .* does not exist"),
])
def test_malformed_transforms_are_refused_naming_file_and_field(tmp_path, breakage, message):
    root = write_scene(tmp_path / "s")
    f = root / "transforms_train.json"
    doc = json.loads(f.read_text())
    breakage(doc)
    f.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=message) as e:
        load_split(root, "train")
    assert str(e.value).startswith(str(f))


def test_unreadable_transforms_and_missing_layout_are_refused(tmp_path):
    root = write_scene(tmp_path / "s")
    (root / "transforms_train.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_split(root, "train")
    with pytest.raises(DataError, match="no transforms_train.json / transforms.json"):
        load_split(tmp_path, "train")
    np.save(root / "r_0_depth.npy", np.zeros((5, 5), np.float32))  # wrong size for the image
    (root / "transforms_test.json").write_text((root / "transforms_test.json").read_text())
    with pytest.raises(DataError, match="does not match the image"):
        load_split(root, "test")


def test_declared_mesh_must_exist(tmp_path):
    root = write_scene(tmp_path / "s", extra={"mesh_path": "mesh.ply"})
    with pytest.raises(DataError, match="mesh_path"):
        mesh_path(root)


def test_procedural_meshes_are_closed_index_sets_inside_the_unit_ball():
    for name in SCENES:
        v, f = scene_mesh(name)
        assert f.min() >= 0 and f.max() < len(v) and np.linalg.norm(v, axis=1).max() < 1.25, name


def test_camera_rig_looks_at_the_origin_in_the_blender_convention():
    c2w = look_at_c2w(np.array([0.0, -3.0, 1.0]))
    assert np.allclose(c2w[:3, :3].T @ c2w[:3, :3], np.eye(3), atol=1e-9)
    fwd = -c2w[:3, 2]  # camera looks down its −Z
    assert np.allclose(fwd, -c2w[:3, 3] / np.linalg.norm(c2w[:3, 3]))
    views = sphere_views(20, 2.0)
    assert len(views) == 20 and all(np.isclose(np.linalg.norm(v[:3, 3]), 2.0) for v in views)


def test_config_defaults_and_refusals(tmp_path):
    cfg = load_config("erank_gs", ErankGSConfig)
    assert cfg.variants[0] == "vanilla" and "erank" in cfg.variants
    with pytest.raises(ConfigError, match="erank_gs.scene"):
        load_config("erank_gs", ErankGSConfig, overrides=[f"scene={tmp_path}/nowhere"])
    with pytest.raises(ConfigError, match="erank_gs.train.densify: stop"):
        load_config("erank_gs", ErankGSConfig, overrides=["train.steps=10"])
    with pytest.raises(ConfigError, match="variants"):
        load_config("erank_gs", ErankGSConfig, overrides=["variants=[erank, erank]"])
    user = write_scene(tmp_path / "mine")
    assert load_config("erank_gs", ErankGSConfig, overrides=[f"scene={user}"]).scene == str(user.resolve())
