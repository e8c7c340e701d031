"""``paperline vidgan encode IN OUT`` / ``decode IN OUT``: the soft-edge video codec (METHODS.md §9)
on one video, outside any flow: a video file in, a ``.vgan`` bitstream out, and back to a video
a standard player opens. Settings come from the ``vidgan`` config (``params.yaml`` + ``--set``):
``width``, ``frames``, ``key_codec``, ``edges.*``, ``gan.*``, ``send_weights``; the key-frame CRF
is ``--crf`` (default: the config's first ``key_crfs`` entry).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from .config import VidganConfig


def encode_file(src: str, out: Path, cfg: VidganConfig, crf: int | None = None,
                say: Callable[[str], None] = print) -> dict:
    from .codec import decode as decode_stream
    from .codec import encode, gan_header, weights_payload
    from .container import bitrate_kbps
    from .video import read_clip

    crf = cfg.key_crfs[0] if crf is None else crf
    frames, fps = read_clip(src, cfg.width, cfg.frames)
    e = cfg.edges
    t0 = time.perf_counter()
    bs, info = encode(frames, fps, key_crf=crf, key_codec=cfg.key_codec, key_fraction=cfg.key_fraction,
                      min_keys=cfg.min_key_frames, downsample=e.downsample, levels=e.levels,
                      edge_fraction=e.edge_fraction, temporal=e.temporal_context, gan=gan_header(cfg.gan))
    if cfg.send_weights:
        say(f"training the decoder ({cfg.gan.steps} steps) to send its weights…")
        bs.weights = weights_payload(decode_stream(bs, training=cfg.training.on("cpu")).generator)
    n = bs.write(out)
    seconds = time.perf_counter() - t0
    kbps = bitrate_kbps(n, len(frames), bs.fps)
    say(f"{out}: {n} bytes, {kbps:.2f} kbit/s over {len(frames)} frames {frames.shape[2]}×{frames.shape[1]} "
        f"@ {float(bs.fps):.2f} fps ({len(bs.header['key_index'])} key frames; sections {bs.sizes()}); "
        f"{len(frames) / seconds:.1f} frames/s")
    return {"bytes": n, "kbps": kbps, "sections": bs.sizes()}


def decode_file(src: Path, out: Path, cfg: VidganConfig, say: Callable[[str], None] = print) -> dict:
    from .codec import decode as decode_stream
    from .container import Bitstream
    from .video import write_playable

    t0 = time.perf_counter()
    bs = Bitstream.read(src)
    if bs.weights is None:
        say(f"no weights in {src}: training the decoder from its key frames ({bs.header['gan']['steps']} steps)…")
    dec = decode_stream(bs, training=cfg.training.on("cpu"))
    write_playable(dec.frames, bs.fps, out)
    seconds = time.perf_counter() - t0
    say(f"{out}: {len(dec.frames)} frames {dec.frames.shape[2]}×{dec.frames.shape[1]}; {len(dec.frames) / seconds:.2f} frames/s")
    return {"frames": len(dec.frames), "seconds": seconds}
