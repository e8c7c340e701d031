"""``paperline status`` tells a stage that never ran from one that changed."""
from __future__ import annotations

from flows.platform.dvcstatus import classify


def test_never_run_up_to_date_and_changed_are_told_apart():
    status = {
        "stun": [{"changed deps": {"flows/stun.py": "modified"}}, {"changed outs": {"data/stun/zoo": "deleted"}}],
        "animeceleb": [{"changed deps": {"params.yaml": "modified"}}],
        "s3nas": [{"changed outs": {"data/s3nas/lut": "deleted"}}],
    }
    rows = {r.stage: r for r in classify(["stun", "animeceleb", "s3nas", "reenact"], status,
                                        locked={"stun", "animeceleb", "s3nas", "reenact"} - {"stun"})}
    assert rows["stun"].state == "never run" and "paperline run stun" in rows["stun"].hint
    assert rows["animeceleb"].state == "changed" and "parameters changed" in rows["animeceleb"].detail
    assert rows["s3nas"].state == "changed" and rows["s3nas"].hint == "dvc pull s3nas"
    assert rows["reenact"].state == "up to date"
