"""The ``vidgan`` flow's Prefect steps: thin, typed, path-in / path-out.

``clip`` → ``data/vidgan/clips/<video>/`` (the resized frames), ``baselines`` →
``data/vidgan/baselines/<video>/`` (x264 and x265 CRF sweeps), ``encode`` →
``data/vidgan/encoded/<video>/crf<k>/stream.vgan`` (the bitstream), ``decode`` →
``data/vidgan/decoded/<video>/crf<k>/`` (the per-video GAN, trained on the engine with its
checkpoints in ``data/vidgan/.checkpoints/`` until done; the decoded frames and a playable MP4;
the bitstream with weights), ``report`` → ``data/vidgan/report/``. Each step is cached on
(inputs, config, code) and written through a temp folder renamed into place.
"""
from __future__ import annotations

import hashlib
import shutil
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from tasks.common.artifacts import cache_key, cached_step, read_json, step_dir, write_json
from tasks.common.steps import ResumableStep, set_threads, step, step_logger

from .config import NAMED_VIDEOS, VidganConfig

FLOW = "vidgan"


def video_slug(name: str) -> str:
    """A folder name for a video: its name, or a path's stem plus a short digest of the path."""
    if name in NAMED_VIDEOS:
        return name
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(name).stem)[:40] or "video"
    return f"{stem}-{hashlib.sha256(str(Path(name).resolve()).encode()).hexdigest()[:8]}"


def load_clip(clip_dir: Path) -> tuple[np.ndarray, Fraction, dict]:
    meta = read_json(Path(clip_dir) / "clip.json")
    return np.load(Path(clip_dir) / "frames.npy"), Fraction(meta["fps"][0], meta["fps"][1]), meta


@step("vidgan.clip", run_name="clip[{name}]")
def clip(cfg: VidganConfig, name: str) -> Path:
    """The first ``frames`` frames of a video at ``width`` px: the originals every codec is scored against."""
    from .video import named_source, read_clip

    src, _ = named_source(name)
    params = {"name": name, "width": cfg.width, "frames": cfg.frames}
    inputs = [src] if Path(src).is_file() else []
    out = step_dir(FLOW, "clips") / video_slug(name)
    with cached_step(out, cache_key(step="clip", config=params, inputs=inputs)) as tmp:
        if tmp is not None:
            frames, fps = read_clip(name, cfg.width, cfg.frames)
            fps = fps.limit_denominator(100_000)
            np.save(tmp / "frames.npy", frames)
            write_json(tmp / "clip.json", {"name": name, "source": src, "frames": len(frames),
                                           "width": frames.shape[2], "height": frames.shape[1],
                                           "fps": [fps.numerator, fps.denominator]})
    return out


@step("vidgan.baselines", run_name="baselines[{clip_dir.name}]")
def baselines(cfg: VidganConfig, clip_dir: Path, threads: int = 1) -> Path:
    """x264 and x265 over their CRF sweeps on the whole clip: bitrate, quality, encode/decode frames/s."""
    from .container import bitrate_kbps
    from .metrics import quality
    from .video import decode_standard, encode_standard

    set_threads(threads)
    params = cfg.model_dump(include={"x264_crfs", "x265_crfs"})
    out = step_dir(FLOW, "baselines") / Path(clip_dir).name
    with cached_step(out, cache_key(step="baselines", config=params, inputs=[clip_dir])) as tmp:
        if tmp is not None:
            frames, fps, _ = load_clip(clip_dir)
            rows = []
            for codec, crfs in (("h264", cfg.x264_crfs), ("hevc", cfg.x265_crfs)):
                for crf in crfs:
                    t0 = time.perf_counter()
                    data = encode_standard(frames, codec, crf, fps)
                    t1 = time.perf_counter()
                    dec = decode_standard(data, codec, expect=len(frames))
                    t2 = time.perf_counter()
                    rows.append({"method": "x264" if codec == "h264" else "x265", "crf": crf, "bytes": len(data),
                                 "kbps": bitrate_kbps(len(data), len(frames), fps), **quality(frames, dec),
                                 "encode_fps": len(frames) / (t1 - t0), "decode_fps": len(frames) / (t2 - t1)})
            write_json(tmp / "rd.json", rows)
    return out


@step("vidgan.encode", run_name="encode[{clip_dir.name} crf {crf}]")
def encode(cfg: VidganConfig, clip_dir: Path, crf: int) -> Path:
    """Our encoder: key frames at ``crf`` + every frame's soft-edge map → ``stream.vgan``; the edge
    coder's size beside PNG, zstd and a spatial-only context."""
    from .codec import encode as encode_video
    from .codec import gan_header
    from .container import bitrate_kbps
    from .lossless import baseline_sizes, encode_maps, entropy_bits

    params = cfg.model_dump(include={"key_fraction", "min_key_frames", "key_codec", "edges", "gan"})
    out = step_dir(FLOW, "encoded") / Path(clip_dir).name / f"crf{crf}"
    with cached_step(out, cache_key(step="encode", config={**params, "crf": crf}, inputs=[clip_dir])) as tmp:
        if tmp is not None:
            frames, fps, _ = load_clip(clip_dir)
            e = cfg.edges
            bs, info = encode_video(frames, fps, key_crf=crf, key_codec=cfg.key_codec, key_fraction=cfg.key_fraction,
                                    min_keys=cfg.min_key_frames, downsample=e.downsample, levels=e.levels,
                                    edge_fraction=e.edge_fraction, temporal=e.temporal_context,
                                    gan=gan_header(cfg.gan))
            n = bs.write(tmp / "stream.vgan")
            maps = info["maps"]
            coder = {"ours": len(bs.edges), **baseline_sizes(maps, e.levels),
                     "ours_spatial_only" if e.temporal_context else "ours_with_temporal":
                         len(encode_maps(maps, e.levels, not e.temporal_context)),
                     "order0_entropy": int(np.ceil(entropy_bits(maps, e.levels) / 8))}
            write_json(tmp / "encode.json", {"bytes": n, "kbps": bitrate_kbps(n, len(frames), fps),
                                             "sections": bs.sizes(), "key_frames": len(bs.header["key_index"]),
                                             "map_shape": list(maps.shape), "edge_coder_bytes": coder,
                                             "encode_seconds": info["encode_seconds"],
                                             "encode_fps": len(frames) / info["encode_seconds"]})
    return out


@step("vidgan.decode", run_name="decode[{enc_dir.parent.name} {enc_dir.name}]")
def decode(cfg: VidganConfig, clip_dir: Path, enc_dir: Path, use_gpu: bool = False) -> Path:
    """Our decoder: train the per-video GAN on the decoded key-frame pairs (resumable), regenerate
    every frame, score it; write a playable MP4 and the bitstream with the weights inside."""
    from tasks.common.progress import Progress

    from .codec import decode as decode_stream
    from .codec import load_weights_payload, weights_payload
    from .container import Bitstream, bitrate_kbps
    from .gan import generate
    from .metrics import psnr_frames, quality
    from .video import read_all, write_playable

    set_threads(cfg.gan.threads)
    video, point = Path(enc_dir).parent.name, Path(enc_dir).name
    out = step_dir(FLOW, "decoded") / video / point
    key = cache_key(step="decode", config=cfg.training.model_dump(), inputs=[clip_dir, enc_dir])
    with cached_step(out, key) as tmp:
        if tmp is not None:
            frames, fps, _ = load_clip(clip_dir)
            bs = Bitstream.read(Path(enc_dir) / "stream.vgan")
            ckpt = ResumableStep(step_dir(FLOW, ".checkpoints") / f"{video}-{point}", key).claim().out
            training = cfg.training.on("auto" if use_gpu else "cpu")
            with Progress(f"vidgan GAN [{video} {point}]", bs.header["gan"]["steps"]) as p:
                dec = decode_stream(bs, ckpt_dir=ckpt, training=training, progress=p.callback)
            np.save(tmp / "frames.npy", dec.frames)
            write_playable(dec.frames, fps, tmp / "decoded.mp4")
            played = read_all(tmp / "decoded.mp4")
            # The same bitstream with the generator inside (what `send_weights` writes), decoded
            # the way a receiver would: fp16 weights, no training.
            bs.weights = weights_payload(dec.generator)
            n_w = bs.write(tmp / "stream_with_weights.vgan")
            t0 = time.perf_counter()
            gen16 = load_weights_payload(Bitstream.read(tmp / "stream_with_weights.vgan"))
            hd = bs.header
            via_weights = generate(gen16, dec.maps, hd["edge"]["levels"], (hd["height"], hd["width"]))
            via_weights[hd["key_index"]] = dec.keys
            t_w = time.perf_counter() - t0 + dec.timings["streams_seconds"]
            n = (Path(enc_dir) / "stream.vgan").stat().st_size
            q = quality(frames, dec.frames)
            write_json(tmp / "metrics.json", {
                "method": "ours", "crf": int(point.removeprefix("crf")), "bytes": n, "key_index": hd["key_index"],
                "kbps": bitrate_kbps(n, len(frames), fps), "bytes_with_weights": n_w,
                "kbps_with_weights": bitrate_kbps(n_w, len(frames), fps), **q,
                "key_frames_psnr": float(psnr_frames(frames[hd["key_index"]], dec.keys).mean()),
                "generated_psnr": float(np.delete(psnr_frames(frames, dec.frames), hd["key_index"]).mean()),
                "fp16_weights_vs_trained_psnr": float(psnr_frames(dec.frames, via_weights).mean()),
                "playable_frames": int(len(played)), "timings": dec.timings,
                "decode_fps_with_training": len(frames) / dec.timings["decode_seconds"],
                "decode_fps_with_weights": len(frames) / t_w,
                "train": dec.train_result.to_json() if dec.train_result else None})
            step_logger().info("vidgan %s %s: %.2f kbps, PSNR %.2f dB", video, point, bitrate_kbps(n, len(frames), fps),
                               q["psnr"])
    shutil.rmtree(step_dir(FLOW, ".checkpoints") / f"{video}-{point}", ignore_errors=True)
    return out


@step("vidgan.report")
def report(cfg: VidganConfig, clips: list[Path], baseline_dirs: list[Path], enc_dirs: list[list[Path]],
           dec_dirs: list[list[Path]]) -> Path:
    """RD table (per video and averaged), matched-rate comparison, edge-coder sizes, RD plots, frame strips."""
    from .report import write_report

    out = step_dir(FLOW, "report")
    inputs = [*clips, *baseline_dirs, *(d for ds in enc_dirs for d in ds), *(d for ds in dec_dirs for d in ds)]
    params = cfg.model_dump(include={"strip_frames"})
    with cached_step(out, cache_key(step="report", config=params, inputs=inputs)) as tmp:
        if tmp is not None:
            write_report(tmp, cfg, clips, baseline_dirs, enc_dirs, dec_dirs)
    return out
