"""The `vidgan` flow end to end on the Ray task runner, at toy size: the real carphone clip and an
ffmpeg test source, 16 frames at 64 px, two key-frame rate points, a 20-step GAN, short baseline
sweeps; then a rerun that reuses every step."""
from __future__ import annotations

import json

import numpy as np
import pytest

TOY = ["videos=[carphone, testsrc2]", "width=64", "frames=16", "key_crfs=[40, 30]", "gan.steps=20",
       "gan.channels=8", "gan.d_channels=8", "gan.depth=3", "x264_crfs=[51, 35]", "x265_crfs=[51, 35]",
       "strip_frames=3", "edges.downsample=2"]

pytestmark = pytest.mark.slow  # ~1–2 min on 2 cores (Prefect + Ray + 4 small GAN trainings)


@pytest.fixture(scope="module")
def toy_run(toy_flow):
    return toy_flow("vidgan", TOY)


def test_the_flow_writes_the_rd_table_plots_strips_and_a_playable_video(toy_run):
    from tasks.vidgan.container import Bitstream, bitrate_kbps
    from tasks.vidgan.video import read_all

    root, cfg, result, _ = toy_run
    rep = root / "vidgan" / "report"
    for f in ("table.md", "headline.json", "results.csv", "metrics.json", "figures/rd_carphone.png",
              "figures/strip_carphone.png", "figures/rd_testsrc2.png"):
        assert (rep / f).is_file(), f
    metrics = json.loads((rep / "metrics.json").read_text())
    assert [v["name"] for v in metrics["videos"]] == ["carphone", "testsrc2"]
    for v in metrics["videos"]:
        assert len(v["ours"]) == 2 and len(v["x264"]) == 2 and len(v["x265"]) == 2
        for o in v["ours"]:
            d = root / "vidgan" / "decoded" / v["slug"] / f"crf{o['crf']}"
            stream = root / "vidgan" / "encoded" / v["slug"] / f"crf{o['crf']}" / "stream.vgan"
            bs = Bitstream.read(stream)
            # the reported bitrate is the file's bytes over the clip's duration
            assert o["kbps"] == pytest.approx(bitrate_kbps(stream.stat().st_size, 16, bs.fps))
            assert o["kbps_with_weights"] > o["kbps"]
            played = read_all(d / "decoded.mp4")
            assert played.shape == (16, bs.header["height"], bs.header["width"], 3) and o["playable_frames"] == 16
            # the key frames in the output are the standard decoder's (so they score far above the generated ones)
            assert o["key_frames_psnr"] > o["generated_psnr"]
            assert 0 < o["ssim"] <= 1 and 0 < o["ms_ssim"] <= 1 and 5 < o["psnr"] < 60
            assert o["fp16_weights_vs_trained_psnr"] > 35
        # a lower key-frame CRF costs more bits and buys key-frame quality
        lo, hi = sorted(v["ours"], key=lambda r: r["crf"])
        assert lo["kbps"] > hi["kbps"] and lo["key_frames_psnr"] > hi["key_frames_psnr"]
        # the context coder beats zstd and PNG on the same maps
        c = v["ours"][0]["encode"]["edge_coder_bytes"]
        assert c["ours"] < c["zstd"] and c["ours"] < c["png"]
    assert "x264" in result["table"] and "MS-SSIM" in result["table"]
    frames = np.load(root / "vidgan" / "decoded" / "carphone" / "crf40" / "frames.npy")
    assert frames.shape[0] == 16


def test_a_rerun_reuses_every_step(toy_run):
    root, _, _, rerun = toy_run
    rep = root / "vidgan" / "report" / "table.md"
    before = rep.stat().st_mtime_ns
    rerun()
    assert rep.stat().st_mtime_ns == before
