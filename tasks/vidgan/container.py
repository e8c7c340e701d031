"""The ``vidgan`` bitstream (METHODS.md §9): one file holding everything the decoder needs.

Layout, version 1 (all integers little-endian)::

    magic   4 bytes  b"VGAN"
    version 1 byte   1
    then sections, in this order, each:  tag (4 ASCII bytes) | length u32 | CRC-32 u32 | payload
      HEAD  zlib-compressed JSON: frame size, rate, frame count, key-frame indices and codec,
            edge-map shape, levels and thresholds, coder flags, GAN architecture and training recipe
      KEYS  the key frames as one raw H.264 (Annex B) or HEVC elementary stream
      EDGE  the soft-edge maps, range-coded (constriction words, see tasks/vidgan/lossless.py)
      WGTS  optional: the generator's weights, float16 safetensors, zstd-compressed
      END.  empty; its presence proves the file was not cut short

Every length and CRC is checked on reading: a truncated file, a flipped byte, an unknown version
or a missing section raises :class:`BitstreamError` naming what is wrong; nothing is decoded from
a damaged file. The bitrate of a file is its full byte count × 8 / (frames / fps), every header
and section byte included; ``sizes()`` splits it per section so the report can say what the
weights cost.
"""
from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from tasks.common.config import DataError

MAGIC = b"VGAN"
VERSION = 1
ORDER = ("HEAD", "KEYS", "EDGE", "WGTS", "END.")
REQUIRED = ("HEAD", "KEYS", "EDGE", "END.")
_SECTION = struct.Struct("<4sII")


class BitstreamError(DataError):
    """A vidgan file that cannot be trusted: wrong magic or version, truncated, corrupted, incomplete."""


@dataclass
class Bitstream:
    header: dict[str, Any]
    keys: bytes
    edges: bytes
    weights: bytes | None = None
    _sizes: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def fps(self) -> Fraction:
        return Fraction(self.header["fps"][0], self.header["fps"][1])

    @property
    def duration(self) -> float:
        """Seconds of video the stream codes: frames / fps."""
        return self.header["frames"] / float(self.fps)

    def to_bytes(self) -> bytes:
        head = zlib.compress(json.dumps(self.header, separators=(",", ":"), sort_keys=True).encode(), 9)
        parts = [MAGIC, bytes([VERSION])]
        sections = [("HEAD", head), ("KEYS", self.keys), ("EDGE", self.edges)]
        if self.weights is not None:
            sections.append(("WGTS", self.weights))
        sections.append(("END.", b""))
        self._sizes = {"magic": len(MAGIC) + 1}
        for tag, payload in sections:
            parts.append(_SECTION.pack(tag.encode(), len(payload), zlib.crc32(payload)))
            parts.append(payload)
            self._sizes[tag] = _SECTION.size + len(payload)
        return b"".join(parts)

    def sizes(self) -> dict[str, int]:
        """Bytes per section (its 12-byte frame included) of the last ``to_bytes`` / ``from_bytes``."""
        if not self._sizes:
            self.to_bytes()
        return dict(self._sizes)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Bitstream":
        if len(data) < len(MAGIC) + 1 or data[:4] != MAGIC:
            raise BitstreamError("not a vidgan bitstream (no VGAN magic)")
        if data[4] != VERSION:
            raise BitstreamError(f"vidgan bitstream version {data[4]} is not supported (this decoder reads {VERSION})")
        pos, found, sizes = 5, {}, {"magic": 5}
        order = list(ORDER)
        while pos < len(data):
            if pos + _SECTION.size > len(data):
                raise BitstreamError(f"truncated: section frame at byte {pos} is cut short")
            tag_b, length, crc = _SECTION.unpack_from(data, pos)
            tag = tag_b.decode("ascii", "replace")
            if tag not in order:
                raise BitstreamError(f"corrupted: unexpected section {tag!r} at byte {pos}")
            order = order[order.index(tag) + 1 :]  # sections only in the documented order, each once
            start, end = pos + _SECTION.size, pos + _SECTION.size + length
            if end > len(data):
                raise BitstreamError(f"truncated: section {tag} needs {length} bytes, {len(data) - start} remain")
            payload = data[start:end]
            if zlib.crc32(payload) != crc:
                raise BitstreamError(f"corrupted: section {tag} fails its CRC-32 check")
            found[tag], sizes[tag] = payload, _SECTION.size + length
            pos = end
            if tag == "END.":
                break
        missing = [t for t in REQUIRED if t not in found]
        if missing:
            what = "truncated" if "END." in missing else "incomplete"
            raise BitstreamError(f"{what}: missing section(s) {', '.join(missing)}")
        if pos != len(data):
            raise BitstreamError(f"corrupted: {len(data) - pos} bytes after the END. section")
        try:
            header = json.loads(zlib.decompress(found["HEAD"]))
        except (zlib.error, ValueError) as e:
            raise BitstreamError(f"corrupted: HEAD does not decompress to JSON ({e})") from None
        bs = cls(header, found["KEYS"], found["EDGE"], found.get("WGTS"))
        bs._sizes = sizes
        return bs

    def write(self, path: Path | str) -> int:
        from tasks.common.artifacts import atomic_path

        data = self.to_bytes()
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(data)
        return len(data)

    @classmethod
    def read(cls, path: Path | str) -> "Bitstream":
        p = Path(path)
        if not p.is_file():
            raise BitstreamError(f"{p}: no such file")
        try:
            return cls.from_bytes(p.read_bytes())
        except BitstreamError as e:
            raise BitstreamError(f"{p}: {e}") from None


def bitrate_kbps(n_bytes: int, frames: int, fps: Fraction | float) -> float:
    """kbit/s of ``n_bytes`` coding ``frames`` frames at ``fps``: bytes × 8 / duration / 1000."""
    return n_bytes * 8 / (frames / float(fps)) / 1000.0
