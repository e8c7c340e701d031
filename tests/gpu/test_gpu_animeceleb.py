"""animeceleb's Cycles GPU render of a label against the CPU render of the same label.

The dataset's settings (128², 8 samples, denoised) in both styles. Tolerance: the GPU render's
PSNR to the CPU render (same seed) must be at least that of a second CPU render with another
seed, less 2 dB — i.e. the GPU differs from the CPU by no more than Monte-Carlo noise does — and
at least 25 dB in any case. A GPU path that drops a material, a shape key or the outline, or
renders black, fails both.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.gpu

RES, SAMPLES = 128, 8
LABEL = dict(weights={"eye_close_left": 0.8, "mouth_a": 0.6}, yaw=18.0, pitch=-6.0, roll=4.0)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def head():
    from tasks.animeceleb.anime_head import AnimeIdentity, build_anime_head

    return build_anime_head(AnimeIdentity.sample(11))


def _render(scene, model, path, style, seed):
    scene.load(model, style, resolution=RES)
    w = model.weights(LABEL["weights"])
    scene.render(path, weights=w, yaw=LABEL["yaw"], pitch=LABEL["pitch"], roll=LABEL["roll"], resolution=RES,
                 samples=SAMPLES, seed=seed)
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize("style", ["default", "toon"])
def test_cycles_gpu_render_matches_the_cpu_render(head, tmp_path, gpu, style):
    pytest.importorskip("bpy")
    from tasks.animeceleb.blender_scene import BlenderScene

    cpu = BlenderScene(threads=4, device="cpu")
    ref = _render(cpu, head, tmp_path / "cpu7.png", style, 7)
    other_seed = _render(cpu, head, tmp_path / "cpu8.png", style, 8)
    dev = BlenderScene(threads=4, device=gpu.type)  # one bpy per process: load() resets it for this scene
    got = _render(dev, head, tmp_path / "gpu7.png", style, 7)
    if gpu.type == "cuda":
        cyc = dev.bpy.context.scene.cycles
        prefs = dev.bpy.context.preferences.addons["cycles"].preferences
        assert cyc.device == "GPU", f"Cycles stayed on the CPU (compute_device_type={prefs.compute_device_type})"
        print(f"Cycles on {prefs.compute_device_type}: {[d.name for d in prefs.devices if d.use]}")
    noise = psnr(other_seed, ref)
    p = psnr(got, ref)
    print(f"{style}: PSNR(gpu, cpu) {p:.2f} dB; PSNR(cpu seed 8, cpu seed 7) {noise:.2f} dB")
    assert ref.std() > 5, "the CPU reference is blank"
    assert p >= min(noise - 2.0, 60.0) and p >= 25.0, (p, noise)
