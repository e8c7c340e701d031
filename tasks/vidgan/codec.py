"""The soft-edge video codec end to end (METHODS.md §9): ``encode`` turns frames into a
:class:`~tasks.vidgan.container.Bitstream`, ``decode`` turns one back into frames.

Encoder: evenly spaced key frames (``key_fraction`` of the clip, at least ``min_key_frames``) go
through the standard codec (Encoder A); every frame's soft-edge map goes through the lossless
coder (Encoder B). Decoder: the standard decoder gives the key frames (shown as decoded, bit for
bit what a plain H.264/HEVC decoder returns); the edge maps are decoded; the generator comes from
the WGTS section when the encoder sent it, else the decoder trains it itself on (decoded edge map,
decoded key frame) pairs with the recipe the header names — both ends see the same pairs and the
same seeded batches, so sending the weights only saves the decoder that training. Every other
frame is the generator's output for its edge map.
"""
from __future__ import annotations

import tempfile
import time
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from .container import Bitstream, BitstreamError
from .edges import soft_edge_map
from .lossless import decode_maps, encode_maps
from .video import decode_standard, encode_standard


def key_indices(n_frames: int, key_fraction: float, min_keys: int) -> list[int]:
    """Evenly spaced key frames, first and last included."""
    k = min(n_frames, max(min_keys, int(round(key_fraction * n_frames))))
    return sorted({int(round(x)) for x in np.linspace(0, n_frames - 1, k)})


def encode(frames: np.ndarray, fps: Fraction, *, key_crf: int, key_codec: str = "h264", key_fraction: float = 0.03,
           min_keys: int = 2, downsample: int = 4, levels: int = 4, edge_fraction: float = 0.3,
           temporal: bool = True, gan: dict[str, Any]) -> tuple[Bitstream, dict[str, Any]]:
    """``uint8 [T,H,W,3]`` → (bitstream without weights, timings and the edge maps' stats)."""
    t0 = time.perf_counter()
    n, h, w, _ = frames.shape
    keys = key_indices(n, key_fraction, min_keys)
    key_stream = encode_standard(frames[keys], key_codec, key_crf, fps, preset="medium")
    t1 = time.perf_counter()
    maps, th = soft_edge_map(frames, downsample, levels, edge_fraction)
    edge_stream = encode_maps(maps, levels, temporal)
    t2 = time.perf_counter()
    fps = Fraction(fps).limit_denominator(100_000)
    header = {"width": w, "height": h, "fps": [fps.numerator, fps.denominator], "frames": n,
              "key_codec": key_codec, "key_index": keys,
              "edge": {"downsample": downsample, "levels": levels, "shape": list(maps.shape), "temporal": temporal,
                       # CRC-32 of the maps themselves: a range decoder fed a damaged stream can return
                       # wrong levels without noticing; this makes that a clear error instead
                       "crc32": zlib.crc32(np.ascontiguousarray(maps).tobytes()),
                       "thresholds": [round(float(x), 6) for x in th]},
              "gan": dict(gan)}
    return Bitstream(header, key_stream, edge_stream), {"maps": maps, "key_seconds": t1 - t0,
                                                        "edge_seconds": t2 - t1, "encode_seconds": t2 - t0}


def decode_keys(bs: Bitstream) -> np.ndarray:
    """The key frames exactly as the standard decoder returns them."""
    hd = bs.header
    keys = decode_standard(bs.keys, hd["key_codec"], expect=len(hd["key_index"]))
    if keys.shape[1:3] != (hd["height"], hd["width"]):
        raise BitstreamError(f"KEYS: frames are {keys.shape[2]}×{keys.shape[1]}, the header says "
                             f"{hd['width']}×{hd['height']}")
    return keys


def decode_edges(bs: Bitstream) -> np.ndarray:
    e = bs.header["edge"]
    maps = decode_maps(bs.edges, tuple(e["shape"]), e["levels"], e["temporal"])
    if zlib.crc32(maps.tobytes()) != e["crc32"]:
        raise BitstreamError("EDGE: the decoded edge maps fail their CRC-32 check (damaged edge stream)")
    return maps


def recipe_for(bs: Bitstream, maps: np.ndarray, keys: np.ndarray):
    from .gan import Pix2PixRecipe, edge_input, frames_to_tensor

    hd, g = bs.header, dict(bs.header["gan"])
    g.pop("threads", None)
    idx = hd["key_index"]
    return Pix2PixRecipe(edge_input(maps[idx], hd["edge"]["levels"], (hd["height"], hd["width"])),
                         frames_to_tensor(keys), **g)


def train_generator(bs: Bitstream, maps: np.ndarray, keys: np.ndarray, ckpt_dir: Path | str, training=None,
                    progress=None):
    """Train the header's recipe on the decoded pairs (the engine resumes from ``ckpt_dir``) → (G, result)."""
    import torch

    from tasks.common.training import TrainingConfig, load_weights, train

    from .gan import UNetGenerator

    torch.set_num_threads(int(bs.header["gan"].get("threads", 1)))
    # CPU unless the caller asks otherwise: CPU training with fixed threads is what makes encoder-
    # and decoder-side training agree bit for bit
    cfg = training if training is not None else TrainingConfig().on("cpu")
    result = train(recipe_for(bs, maps, keys), cfg, ckpt_dir, progress=progress)
    g = bs.header["gan"]
    gen = UNetGenerator(channels=g["channels"], depth=g["depth"])
    gen.load_state_dict(load_weights(result.checkpoint, "generator"))
    return gen, result


def weights_payload(gen) -> bytes:
    """The generator as float16 safetensors, zstd-19: what WGTS carries."""
    import zstandard
    from safetensors.torch import save

    state = {k: v.detach().to("cpu").half().contiguous() for k, v in gen.state_dict().items()}
    return zstandard.ZstdCompressor(level=19).compress(save(state))


def load_weights_payload(bs: Bitstream):
    import torch
    import zstandard
    from safetensors.torch import load

    from .gan import UNetGenerator

    g = bs.header["gan"]
    gen = UNetGenerator(channels=g["channels"], depth=g["depth"])
    try:
        state = load(zstandard.ZstdDecompressor().decompress(bs.weights))
        gen.load_state_dict({k: v.float() for k, v in state.items()})
    except Exception as e:  # noqa: BLE001 - the CRC passed, so this is a writer bug or a forged file
        raise BitstreamError(f"WGTS: the weights do not load ({type(e).__name__}: {e})") from None
    torch.set_num_threads(int(g.get("threads", 1)))
    return gen


@dataclass
class Decoded:
    frames: np.ndarray  # uint8 [T,H,W,3]
    maps: np.ndarray  # uint8 [T,h,w]
    keys: np.ndarray  # uint8 [K,H,W,3]
    generator: Any
    timings: dict[str, float] = field(default_factory=dict)
    train_result: Any = None


def decode(bs: Bitstream, *, ckpt_dir: Path | str | None = None, training=None, progress=None) -> Decoded:
    """Every frame of ``bs``: key frames from the standard decoder, the rest from the generator."""
    t0 = time.perf_counter()
    keys = decode_keys(bs)
    maps = decode_edges(bs)
    t1 = time.perf_counter()
    result = None
    if bs.weights is not None:
        gen = load_weights_payload(bs)
    elif ckpt_dir is not None:
        gen, result = train_generator(bs, maps, keys, ckpt_dir, training, progress)
    else:
        with tempfile.TemporaryDirectory(prefix="vidgan-train-") as d:
            gen, result = train_generator(bs, maps, keys, d, training, progress)
    t2 = time.perf_counter()
    from .gan import generate

    hd = bs.header
    frames = generate(gen, maps, hd["edge"]["levels"], (hd["height"], hd["width"]))
    frames[hd["key_index"]] = keys
    t3 = time.perf_counter()
    return Decoded(frames, maps, keys, gen, {"streams_seconds": t1 - t0, "train_seconds": t2 - t1,
                                            "generate_seconds": t3 - t2, "decode_seconds": t3 - t0}, result)


def gan_header(gan_cfg) -> dict[str, Any]:
    """The recipe fields the decoder needs to train the same generator (a ``GanConfig`` dump)."""
    return gan_cfg.model_dump()


__all__ = ["encode", "decode", "Decoded", "key_indices", "weights_payload", "gan_header", "decode_keys",
           "decode_edges", "train_generator"]
