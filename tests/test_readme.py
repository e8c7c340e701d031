"""README result tables are regenerated from the run they report, with its provenance."""
from __future__ import annotations

import json

from flows.platform.readme import regenerate

README = """# x

<!-- results:stun -->
| old | table |
<!-- /results:stun -->

<!-- results:s3nas -->
| untouched |
<!-- /results:s3nas -->
"""


def test_a_block_is_replaced_by_the_runs_table_and_provenance(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    report = tmp_path / "data" / "stun" / "report"
    report.mkdir(parents=True)
    (report / "table.md").write_text("| method | ppl |\n|---|---|\n| dense | 57.05 |\n")
    (tmp_path / "data" / "stun" / "run.json").write_text(json.dumps(
        {"flow": "stun", "finished": "2026-12-02 13:00:00 UTC", "git": "abc1234", "seconds": 412.0,
         "machine": {"cpus": 2, "torch": "2.13.0"}}))
    text, updated = regenerate(readme, tmp_path / "data")
    assert updated == ["stun"]
    assert "| dense | 57.05 |" in text and "| old | table |" not in text
    assert "git `abc1234`" in text and "2 CPUs" in text
    assert "| untouched |" in text  # no run of s3nas here: its block stays
    again, _ = regenerate(readme, tmp_path / "data")
    readme.write_text(text)
    assert regenerate(readme, tmp_path / "data")[0] == text == again  # idempotent
