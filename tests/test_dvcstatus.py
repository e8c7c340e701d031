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


def test_dvc_views_are_headline_metrics_and_one_curve_per_default_method():
    """dvc.yaml's top-level plots name exactly the curves the default stun config writes, and
    every stage's DVC metrics file is its small headline file."""
    import yaml

    from tasks.common.artifacts import PROJECT_ROOT
    from tasks.common.config import load_config
    from tasks.stun.config import StunConfig
    from tasks.stun.report import curve_file
    from tasks.stun.sweep import sweep_variants

    doc = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
    for stage in doc["stages"].values():
        metrics = [next(iter(m)) if isinstance(m, dict) else m for m in stage.get("metrics", [])]
        assert metrics and all(m.endswith("headline.json") for m in metrics)
    variants = sweep_variants(load_config("stun", StunConfig), n_experts=8, top_k=2)
    methods = {curve_file(v.meta()).removesuffix(".csv") for v in variants
               if v.study == "sweep" and v.method != "dense"}
    for plot in doc["plots"]:
        (pid, spec), = plot.items()
        assert {f.rsplit("/", 1)[1].removesuffix(".csv") for f in spec["y"]} == methods, pid
