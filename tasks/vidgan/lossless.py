"""The lossless coder of the soft-edge maps (METHODS.md §9, Encoder B step 3): a context-adaptive
model over spatial and temporal neighbours, with ``constriction``'s range coder doing the
entropy coding.

Maps are coded frame by frame in raster order. A pixel's context is the levels of its causal
neighbours in the same map — W, N, NW, NE — and, with temporal context on, the co-located pixel
T of the previous map (pixels outside the map count as level 0). Each context keeps adaptive
symbol counts (start 1, +``INC`` per occurrence, halved when their total passes ``LIMIT`` so the
model follows a clip whose content changes); the probability of the next symbol is its count
over the total. Encoder and decoder run the same integer updates, so they compute bit-identical
probabilities; constriction's ``Categorical(perfect=False)`` turns them into a quantised
distribution with no zero-probability symbol, and its ``RangeEncoder``/``RangeDecoder`` pair
(a queue: decoded in encoding order) does the arithmetic. No entropy coder is written here.

:func:`baseline_sizes` measures the same maps with PNG (per frame, palette at the minimum bit
depth, zlib level 9) and zstd (level 19, whole stack), the comparison the issue asks for.
"""
from __future__ import annotations

import io

import numpy as np

from tasks.common.config import DataError

INC = 32
LIMIT = 1 << 16


class CorruptStream(DataError):
    """The edge stream cannot be decoded: truncated or damaged."""


def _contexts(levels: int, temporal: bool) -> int:
    return levels ** (5 if temporal else 4)


def _code(maps: np.ndarray | None, shape: tuple[int, int, int], levels: int, temporal: bool,
          coder, encode: bool) -> np.ndarray:
    """The one loop both directions share: context → adaptive counts → code a symbol → update."""
    import constriction

    family = constriction.stream.model.Categorical(perfect=False)
    t, h, w = shape
    counts = np.ones((_contexts(levels, temporal), levels), dtype=np.int64)
    totals = np.full(counts.shape[0], levels, dtype=np.int64)
    out = np.zeros((t, h + 1, w + 2), dtype=np.int64)  # padded: row 0 and columns 0, w+1 stay 0
    prev = np.zeros((h + 1, w + 2), dtype=np.int64)
    L = levels
    for f in range(t):
        cur = out[f]
        src = maps[f] if encode else None
        for y in range(1, h + 1):
            row_up = cur[y - 1]
            row = cur[y]
            prow = prev[y]
            for x in range(1, w + 1):
                c = ((row[x - 1] * L + row_up[x]) * L + row_up[x - 1]) * L + row_up[x + 1]
                if temporal:
                    c = c * L + prow[x]
                probs = (counts[c] / totals[c])[None, :]
                if encode:
                    s = int(src[y - 1, x - 1])
                    coder.encode(np.array([s], dtype=np.int32), family, probs)
                else:
                    s = int(coder.decode(family, probs)[0])
                row[x] = s
                counts[c, s] += INC
                totals[c] += INC
                if totals[c] > LIMIT:
                    counts[c] = (counts[c] + 1) // 2
                    totals[c] = counts[c].sum()
        prev = cur
    return out[:, 1:, 1 : w + 1].astype(np.uint8)


def encode_maps(maps: np.ndarray, levels: int, temporal: bool = True) -> bytes:
    """``uint8 [T,h,w]`` levels in 0..L-1 → compressed bytes (constriction's 32-bit words)."""
    import constriction

    maps = np.asarray(maps)
    if maps.ndim != 3 or maps.size == 0:
        raise ValueError(f"maps must be a non-empty [T,h,w] array, got shape {maps.shape}")
    if int(maps.max()) >= levels:
        raise ValueError(f"a map holds level {int(maps.max())} but levels={levels}")
    enc = constriction.stream.queue.RangeEncoder()
    _code(maps, maps.shape, levels, temporal, enc, encode=True)
    return enc.get_compressed().astype("<u4").tobytes()


def decode_maps(data: bytes, shape: tuple[int, int, int], levels: int, temporal: bool = True) -> np.ndarray:
    """Inverse of :func:`encode_maps`; ``shape`` (T, h, w) comes from the header."""
    import constriction

    if len(data) % 4:
        raise CorruptStream(f"edge stream: {len(data)} bytes is not a whole number of 32-bit words")
    words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    dec = constriction.stream.queue.RangeDecoder(words)
    try:
        maps = _code(None, tuple(shape), levels, temporal, dec, encode=False)
    except BaseException as e:  # constriction raises when it runs out of words or meets an invalid state
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise CorruptStream(f"edge stream: range decoder failed ({type(e).__name__}: {e})") from None
    return maps


def baseline_sizes(maps: np.ndarray, levels: int) -> dict[str, int]:
    """Bytes of the same maps as PNG (palette, minimal bit depth, per frame, summed) and zstd-19."""
    import zstandard
    from PIL import Image

    bits = 1 if levels <= 2 else 2 if levels <= 4 else 4
    png = 0
    for m in maps:
        img = Image.fromarray(m, mode="L").convert("P")
        img.putpalette([v for i in range(levels) for v in (i, i, i)])
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True, bits=bits, compress_level=9)
        png += len(buf.getvalue())
    raw = np.ascontiguousarray(maps).tobytes()
    zc = zstandard.ZstdCompressor(level=19)
    return {"png": png, "zstd": len(zc.compress(raw)), "raw_bits": int(np.ceil(maps.size * np.log2(levels) / 8))}


def entropy_bits(maps: np.ndarray, levels: int) -> float:
    """Order-0 empirical entropy of the maps, bits in all (what a context-free coder could reach)."""
    p = np.bincount(maps.ravel(), minlength=levels) / maps.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum() * maps.size)
