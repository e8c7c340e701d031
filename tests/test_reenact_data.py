"""reenact's shard reader: it returns every requested frame, or refuses naming the shard — a
truncated tar once left five of seven test frames as uninitialised memory (issue 11, item 2)."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks.common.config import DataError
from tasks.reenact.data import load_images

SIZE = 16


def _shard(tmp_path, name="anime_00001-000", n=5):
    """A shard as animeceleb writes it: one tar of PNGs, each a flat colour we can recognise."""
    rows = []
    with tarfile.open(tmp_path / f"{name}.tar", "w") as tar:
        for i in range(n):
            member = f"{name}__frame{i}.png"
            buf = io.BytesIO()
            # noise, so the PNGs do not compress to a few bytes and a cut lands inside one
            rng = np.random.default_rng(i)
            Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(buf, format="PNG")
            info = tarfile.TarInfo(member)
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
            rows.append({"shard": name, "member": member})
    return pd.DataFrame(rows)


def test_a_whole_shard_reads_back_every_frame_in_row_order(tmp_path):
    rows = _shard(tmp_path)
    images = load_images(tmp_path, rows.iloc[::-1], SIZE)
    for k, i in enumerate(range(4, -1, -1)):
        want = np.random.default_rng(i).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
        assert np.array_equal(images[k].permute(1, 2, 0).numpy(), want)


def test_a_tar_cut_inside_a_member_is_refused_naming_the_shard(tmp_path):
    rows = _shard(tmp_path)
    tar = tmp_path / "anime_00001-000.tar"
    with tarfile.open(tar) as t:
        third = t.getmembers()[2]
    with open(tar, "r+b") as fh:  # cut in the middle of the third image's bytes
        fh.truncate(third.offset_data + third.size // 2)
    with pytest.raises(DataError, match=r"shard anime_00001-000: .*(cut short|damaged)"):
        load_images(tmp_path, rows, SIZE)


def test_a_tar_cut_between_members_is_refused_too(tmp_path):
    # tarfile ends such an archive silently after the last whole member: the reader must count
    rows = _shard(tmp_path)
    tar = tmp_path / "anime_00001-000.tar"
    with tarfile.open(tar) as t:
        fourth = t.getmembers()[3]
    with open(tar, "r+b") as fh:
        fh.truncate(fourth.offset)
    with pytest.raises(DataError, match=r"shard anime_00001-000: 2 of 5 frames are not in .*truncated or damaged"):
        load_images(tmp_path, rows, SIZE)
    # the frames before the cut are still readable on their own: the refusal is about completeness
    assert load_images(tmp_path, rows.head(3), SIZE).shape == (3, 3, SIZE, SIZE)


def test_a_missing_tar_or_a_member_it_lacks_is_refused_naming_the_shard(tmp_path):
    rows = _shard(tmp_path)
    extra = pd.concat([rows, pd.DataFrame([{"shard": "anime_00001-000", "member": "nope.png"}])], ignore_index=True)
    with pytest.raises(DataError, match=r"shard anime_00001-000: 1 of 6 frames .*nope\.png"):
        load_images(tmp_path, extra, SIZE)
    (tmp_path / "anime_00001-000.tar").unlink()
    with pytest.raises(DataError, match=r"shard anime_00001-000: .* is missing"):
        load_images(tmp_path, rows, SIZE)


def test_a_data_error_is_a_value_error_so_the_flow_never_retries_it():
    from tasks.common.steps import is_transient

    assert issubclass(DataError, ValueError) and not is_transient(DataError("shard x: damaged"))
