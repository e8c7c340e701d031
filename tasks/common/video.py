"""Writing frames as a playable H.264 MP4 (PyAV's bundled libx264), shared by every flow that
shows a video: reenact's driver/anime strip, erank_gs's turntable, vidgan's decoded output."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterable

import numpy as np


def write_mp4(frames: Iterable[np.ndarray], path: Path | str, fps: int | Fraction = 12, crf: int = 18,
              options: dict[str, str] | None = None) -> Path:
    """RGB uint8 frames ([H, W, 3], all the same size) → yuv420p H.264 MP4 at ``crf``.

    yuv420p needs even sides, so an odd height or width is padded by repeating the last
    row/column (any standard player opens the result)."""
    import av

    path = Path(path)
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"{path}: no frames to write")
    h, w = first.shape[:2]
    h2, w2 = h + h % 2, w + w % 2
    with av.open(str(path), mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w2, h2, "yuv420p"
        stream.options = {"crf": str(crf), **(options or {})}
        for f in (first, *frames):
            f = np.pad(f, ((0, h2 - h), (0, w2 - w), (0, 0)), mode="edge") if (h2, w2) != (h, w) else f
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
