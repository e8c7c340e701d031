"""The face renders against facts they must get right (bpy in this test process): the mask is the
rendered face region, the ground-truth swap of an identity with itself is the target frame, the
torch geometry of the data contract is the rendered mesh."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # Blender + anny in-process, ~1 min on 2 idle cores

RES = 64


@pytest.fixture(scope="module")
def frames():
    from tasks.faceswap.sampling import sample_shape, still_frames

    return sample_shape(0, 3), sample_shape(0, 4), still_frames(0, 3, 2)


def _job(out, name, shape, frames):
    return {"name": name, "out": str(out), "shape": [float(x) for x in shape], "frames": [f.job_frame() for f in frames],
            "resolution": RES, "samples": 4, "threads": 2, "denoise": False}


def _img(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def test_gt_swap_of_an_identity_with_itself_is_the_target_frame(tmp_path, frames):
    pytest.importorskip("bpy")
    from tasks.faceswap.blender_faces import render_face_job

    shape_a, shape_b, fr = frames
    render_face_job(_job(tmp_path / "test", "test_a", shape_a, fr))
    # the ground-truth job of source A on A's own frame (in another job, after another head was loaded)
    render_face_job(_job(tmp_path / "other", "test_b", shape_b, fr[:1]))
    gt = [{**fr[1].job_frame(), "name": "pair0"}]
    render_face_job({**_job(tmp_path / "gt", "gt_a", shape_a, []), "frames": gt})
    np.testing.assert_array_equal(_img(tmp_path / "gt" / "pair0.png"), _img(tmp_path / "test" / f"{fr[1].name}.png"))
    # and another identity in the same frame is a different image
    assert np.abs(_img(tmp_path / "other" / f"{fr[0].name}.png") - _img(tmp_path / "test" / f"{fr[0].name}.png")).mean() > 2


def test_mask_is_the_rendered_face_region(tmp_path, frames):
    """Repaint only the face-region skin: the pixels that change are the mask (minus the eyes,
    which are in the mask but not painted), and the landmarks fall inside it."""
    pytest.importorskip("bpy")
    from tasks.faceswap.blender_faces import _scene
    from tasks.faceswap.heads import build_face_model, project_landmarks

    shape_a, _, fr = frames
    f = fr[0]
    look = {**f.look, "hair_style": 2}
    model = build_face_model(shape_a)
    sc = _scene(2)
    sc.load(model, resolution=RES, key=("mask-test",))
    yaw, pitch, roll = np.rad2deg(f.pose)
    kw = dict(weights=f.expression, yaw=yaw, pitch=pitch, roll=roll, resolution=RES)
    sc.set_look(look)
    mask = sc.render_mask(tmp_path / "m.png", **kw)
    a = _img(sc.render(tmp_path / "a.png", samples=4, seed=1, denoise=False, **kw))
    sc.nodes["skin_face"]["bsdf"].inputs["Base Color"].default_value = (0.0, 1.0, 0.0, 1.0)
    b = _img(sc.render(tmp_path / "b.png", samples=4, seed=1, denoise=False, **kw))
    changed = np.abs(a - b).sum(-1) > 30
    assert 0.1 < mask.mean() < 0.8
    # the colour render's pixel filter spreads an edge over ~1.5 px; the mask samples pixel centres
    from scipy.ndimage import binary_dilation

    inside = (changed & binary_dilation(mask)).sum() / changed.sum()
    covered = (changed & mask).sum() / mask.sum()
    assert inside > 0.97, f"{inside:.3f} of the repainted pixels lie in the mask"
    assert covered > 0.8, f"the repainted skin covers only {covered:.3f} of the mask"
    lm = np.round(project_landmarks(model, f.expression, f.pose, RES)).astype(int)
    ok = [mask[max(0, r - 1):r + 2, max(0, c - 1):c + 2].any() for c, r in lm if 0 <= r < RES and 0 <= c < RES]
    assert np.mean(ok) > 0.85


def test_torch_face_vertices_are_the_rendered_mesh(frames):
    """The dataset contract's recipe (anny + basis + shift + pose) reproduces the built head."""
    import torch

    from tasks.animeceleb.camera import posed_vertices
    from tasks.faceswap.heads import build_face_model, face_vertices

    shape_a, _, fr = frames
    f = fr[0]
    model = build_face_model(shape_a)
    v = model.evaluate(f.expression)[:4538]
    yaw, pitch, roll = np.rad2deg(f.pose)
    want = posed_vertices(v, model.meta["pivot"], yaw, pitch, roll)
    got = face_vertices(torch.tensor(shape_a)[None], torch.tensor(f.expression)[None], torch.tensor(f.pose)[None])[0]
    np.testing.assert_allclose(got.numpy(), want, atol=2e-5)
