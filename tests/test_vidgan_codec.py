"""The vidgan codec's parts (METHODS.md §9) on real frames: the lossless edge-map coder, the
bitstream container, the bitrate, the key-frame stream, the soft-edge detector, the GAN decoder
on the training engine, the config and the encode/decode commands. Fast: seconds each."""
from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tasks.vidgan import codec
from tasks.vidgan.container import Bitstream, BitstreamError, bitrate_kbps
from tasks.vidgan.edges import soft_edge_map
from tasks.vidgan.lossless import baseline_sizes, decode_maps, encode_maps

TINY_GAN = {"channels": 4, "depth": 2, "d_channels": 4, "d_layers": 1, "steps": 3, "batch": 2, "lr": 1e-3,
            "l1_weight": 100.0, "adv_weight": 1.0, "seed": 0, "threads": 1}


@pytest.fixture(scope="module")
def carphone():
    from tasks.vidgan.video import read_clip

    return read_clip("carphone", 64, 24)


@pytest.fixture(scope="module")
def encoded(carphone):
    frames, fps = carphone
    bs, info = codec.encode(frames, fps, key_crf=30, min_keys=3, downsample=2, gan=TINY_GAN)
    return bs, info, bs.to_bytes()


# ----------------------------------------------------------------------------- lossless coder


@st.composite
def level_maps(draw):
    levels = draw(st.integers(2, 6))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    maps = draw(arrays(np.uint8, shape, elements=st.integers(0, levels - 1)))
    return maps, levels, draw(st.booleans())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(level_maps())
def test_the_lossless_coder_round_trips_exactly_on_random_maps(case):
    maps, levels, temporal = case
    data = encode_maps(maps, levels, temporal)
    assert len(data) % 4 == 0
    np.testing.assert_array_equal(decode_maps(data, maps.shape, levels, temporal), maps)


def test_the_coder_beats_png_and_zstd_and_temporal_context_helps_on_real_edge_maps(carphone):
    frames, _ = carphone
    maps, _ = soft_edge_map(frames, 2, 4, 0.3)
    ours, spatial = len(encode_maps(maps, 4, True)), len(encode_maps(maps, 4, False))
    other = baseline_sizes(maps, 4)
    assert ours < 0.9 * other["zstd"] and ours < 0.5 * other["png"], (ours, other)
    assert ours < spatial, (ours, spatial)  # a talking face changes little between frames


def test_a_constant_map_costs_almost_nothing_and_levels_out_of_range_are_refused():
    assert len(encode_maps(np.zeros((4, 16, 16), np.uint8), 4)) <= 16
    with pytest.raises(ValueError, match="levels=4"):
        encode_maps(np.full((1, 2, 2), 4, np.uint8), 4)


# ----------------------------------------------------------------------------- soft edges


def test_the_soft_edge_map_marks_a_step_edge_and_leaves_flat_areas_at_zero():
    f = np.zeros((2, 32, 32, 3), np.uint8)
    f[:, :, 16:] = 200
    f[1, :, :4] = 40  # a weaker second edge
    maps, th = soft_edge_map(f, 2, 4, 0.3)
    assert maps.shape == (2, 16, 16) and np.all(np.diff(th) > 0)
    strong = maps[0, :, 7:9].min()  # the edge: columns 14-17 at full size
    assert strong == maps.max() >= 2
    assert maps[0, :, 11:].max() == 0 and maps[0, :, :5].max() == 0
    assert 0 < maps[1, :, 1:3].max() < strong  # the weaker edge gets a lower, non-zero level


def test_edge_levels_follow_edge_fraction_on_a_real_clip(carphone):
    maps, _ = soft_edge_map(carphone[0], 2, 4, 0.3)
    share = np.bincount(maps.ravel(), minlength=4) / maps.size
    assert share[1:].sum() == pytest.approx(0.3, abs=0.02)
    assert share[3] == pytest.approx(0.075, abs=0.02)


# ----------------------------------------------------------------------------- container


def test_the_container_round_trips_with_and_without_weights():
    head = {"width": 64, "height": 48, "fps": [30000, 1001], "frames": 24, "edge": {"levels": 4}, "key_index": [0, 23]}
    for weights in (None, b"\x00\x01" * 50):
        bs = Bitstream(head, b"keys\x00" * 7, b"edge" * 9, weights)
        data = bs.to_bytes()
        back = Bitstream.from_bytes(data)
        assert (back.header, back.keys, back.edges, back.weights) == (head, bs.keys, bs.edges, weights)
        assert sum(back.sizes().values()) == len(data) == sum(bs.sizes().values())
        assert ("WGTS" in back.sizes()) == (weights is not None)


def test_the_bitrate_is_file_bytes_times_8_over_the_duration(encoded, carphone, tmp_path):
    bs, _, _ = encoded
    n = bs.write(tmp_path / "s.vgan")
    size = (tmp_path / "s.vgan").stat().st_size
    assert n == size
    duration = 24 / (30000 / 1001)
    assert bitrate_kbps(size, 24, bs.fps) == pytest.approx(size * 8 / duration / 1000)
    assert Bitstream.read(tmp_path / "s.vgan").duration == pytest.approx(duration)


def test_truncated_bitstreams_fail_clearly_at_every_length(encoded):
    _, _, data = encoded
    for cut in sorted({0, 3, 5, 10, 17, *range(17, len(data), max(1, len(data) // 60)), len(data) - 12, len(data) - 1}):
        with pytest.raises(BitstreamError, match="truncated|VGAN magic|missing"):
            Bitstream.from_bytes(data[:cut])


def test_a_flipped_byte_in_any_section_is_caught_and_named(encoded):
    bs, _, data = encoded
    pos = 5
    for tag in ("HEAD", "KEYS", "EDGE"):
        length = int.from_bytes(data[pos + 4 : pos + 8], "little")
        bad = bytearray(data)
        bad[pos + 12 + length // 2] ^= 0x40
        with pytest.raises(BitstreamError, match=f"section {tag} fails its CRC"):
            Bitstream.from_bytes(bytes(bad))
        pos += 12 + length
    with pytest.raises(BitstreamError, match="version 9"):
        Bitstream.from_bytes(data[:4] + b"\x09" + data[5:])
    with pytest.raises(BitstreamError, match="after the END"):
        Bitstream.from_bytes(data + b"x")


def test_a_damaged_edge_stream_with_a_valid_crc_is_still_refused(encoded):
    """A range decoder decodes garbage silently; the maps' own CRC in the header catches it."""
    bs, _, _ = encoded
    from tasks.vidgan.lossless import CorruptStream

    forged = Bitstream(bs.header, bs.keys, bs.edges[: len(bs.edges) // 8 * 4])
    with pytest.raises(BitstreamError, match="edge maps fail their CRC"):
        codec.decode_edges(Bitstream.from_bytes(forged.to_bytes()))
    with pytest.raises(CorruptStream, match="32-bit words"):
        codec.decode_edges(Bitstream(bs.header, bs.keys, bs.edges[:-1]))


# ----------------------------------------------------------------------------- key frames + decoder


def test_key_frames_are_what_the_standard_decoder_gives_and_the_output_keeps_them(encoded, carphone):
    import av

    bs, _, data = encoded
    with av.open(io.BytesIO(Bitstream.from_bytes(data).keys), format="h264") as c:
        plain = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    keys = bs.header["key_index"]
    assert keys == [0, 12, 23] and plain.shape == (3, 48, 64, 3)
    np.testing.assert_array_equal(codec.decode_keys(bs), plain)
    dec = codec.decode(Bitstream.from_bytes(data))
    np.testing.assert_array_equal(dec.frames[keys], plain)
    np.testing.assert_array_equal(dec.maps, soft_edge_map(carphone[0], 2, 4, 0.3)[0])
    assert dec.frames.shape == carphone[0].shape and dec.frames.dtype == np.uint8


def test_decoder_side_training_is_deterministic_so_weights_need_not_be_sent(encoded, tmp_path):
    """Encoder and decoder train the same generator from the same decoded pairs."""
    import torch

    bs, _, data = encoded
    a = codec.decode(Bitstream.from_bytes(data), ckpt_dir=tmp_path / "a")
    b = codec.decode(Bitstream.from_bytes(data), ckpt_dir=tmp_path / "b")
    for (k, va), vb in zip(a.generator.state_dict().items(), b.generator.state_dict().values()):
        assert torch.equal(va, vb), k
    np.testing.assert_array_equal(a.frames, b.frames)
    # sent as fp16 weights, the generator gives (almost) the same frames with no training
    with_w = Bitstream(bs.header, bs.keys, bs.edges, codec.weights_payload(a.generator))
    c = codec.decode(Bitstream.from_bytes(with_w.to_bytes()))
    assert c.train_result is None
    assert np.abs(c.frames.astype(int) - a.frames).max() <= 8


def test_the_gan_learns_its_key_frames(encoded, tmp_path):
    """60 pix2pix steps on 3 key pairs: the generator's key frames get far closer (L1) than the
    untrained generator's (the same seeded initialisation)."""
    from tasks.common.training import TrainingConfig

    from tasks.vidgan.gan import edge_input, generate

    bs, _, data = encoded
    bs = Bitstream.from_bytes(data)
    bs.header["gan"] = {**TINY_GAN, "steps": 60, "channels": 8, "depth": 3, "batch": 3, "lr": 1e-3}
    keys, maps = codec.decode_keys(bs), codec.decode_edges(bs)
    gen, result = codec.train_generator(bs, maps, keys, tmp_path, TrainingConfig(log_every=10).on("cpu"))
    out = generate(gen, maps[bs.header["key_index"]], 4, keys.shape[1:3])
    l1 = np.abs(out.astype(float) - keys).mean()
    untrained = codec.recipe_for(bs, maps, keys).build()["generator"]
    l1_0 = np.abs(generate(untrained, maps[bs.header["key_index"]], 4, keys.shape[1:3]).astype(float) - keys).mean()
    assert l1 < 0.6 * l1_0, (l1, l1_0)
    hist = result.history
    assert hist[-1]["generator/l1"] < hist[0]["generator/l1"] and "discriminator/d" in hist[-1]
    assert edge_input(maps[:2], 4, (48, 64)).shape == (2, 1, 48, 64)


def test_the_unet_keeps_frame_size_for_sizes_not_divisible_by_its_depth():
    import torch

    from tasks.vidgan.gan import PatchDiscriminator, UNetGenerator

    g = UNetGenerator(channels=4, depth=3)
    y = g(torch.rand(2, 1, 36, 50))
    assert y.shape == (2, 3, 36, 50) and y.abs().max() <= 1
    assert PatchDiscriminator(channels=4, layers=2)(torch.rand(1, 1, 32, 32), torch.rand(1, 3, 32, 32)).shape == (1, 1, 8, 8)


# ----------------------------------------------------------------------------- config + CLI


@pytest.mark.parametrize("override, field", [
    ("width=95", "vidgan.width: must be even"), ("key_crfs=[60]", "key_crfs"), ("edges.levels=9", "edges.levels"),
    ("key_codec=av1", "key_codec"), ("videos=[a, a]", "videos"), ("gan.steps=1.5", "gan.steps"),
])
def test_bad_config_values_fail_naming_the_field(override, field):
    from tasks.common.config import ConfigError, load_config
    from tasks.vidgan.config import VidganConfig

    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config("vidgan", VidganConfig, overrides=[override])


def test_params_yaml_holds_the_config_defaults():
    from tasks.common.config import read_section
    from tasks.vidgan.config import VidganConfig

    assert VidganConfig(**read_section("vidgan")) == VidganConfig()


def test_paperline_vidgan_encode_and_decode_a_file_and_refuse_a_damaged_one(tmp_path, capsys):
    from flows.cli import main
    from tasks.vidgan.video import read_all

    sets = ["--set", "width=48", "frames=10", "gan.steps=2", "gan.channels=4", "gan.depth=2", "edges.downsample=2"]
    out = tmp_path / "t.vgan"
    assert main(["vidgan", "encode", "testsrc2", str(out), "--crf", "35", *sets]) == 0
    assert "kbit/s" in capsys.readouterr().out
    assert main(["vidgan", "decode", str(out), str(tmp_path / "t.mp4"), *sets]) == 0
    assert read_all(tmp_path / "t.mp4").shape == (10, 32, 48, 3)
    (tmp_path / "bad.vgan").write_bytes(out.read_bytes()[:-20])
    assert main(["vidgan", "decode", str(tmp_path / "bad.vgan"), str(tmp_path / "bad.mp4")]) == 2
    assert "truncated" in capsys.readouterr().err
    assert not (tmp_path / "bad.mp4").exists()
    assert main(["vidgan", "encode", str(tmp_path / "missing.mp4"), str(tmp_path / "m.vgan")]) == 2




def test_standard_streams_carry_no_encoder_banner_and_decode_to_the_same_pictures(carphone):
    """The x264 options SEI is stripped (a baseline's low-rate bytes are pictures, not text)."""
    from tasks.vidgan.video import decode_standard, encode_standard

    frames, fps = carphone
    for codec_name in ("h264", "hevc"):
        data = encode_standard(frames, codec_name, 45, fps)
        assert b"x264" not in data and b"x265" not in data and b"options" not in data
        dec = decode_standard(data, codec_name, expect=len(frames))
        assert dec.shape == frames.shape
        psnr = 10 * np.log10(255**2 / np.mean((dec.astype(float) - frames) ** 2))
        assert psnr > 18, (codec_name, psnr)  # the pictures, not garbage
