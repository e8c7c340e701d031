"""The `animeceleb` config: bad values are refused before any work, with the field named."""
from __future__ import annotations

import pytest

from tasks.animeceleb.config import AnimeCelebConfig
from tasks.common.config import ConfigError, load_config, read_section


@pytest.mark.parametrize(
    "override, field",
    [
        ("anime_morphs=[eye_close_left, wink]", r"animeceleb\.anime_morphs: .*unknown morph.*wink"),
        ("human_morphs=[jawOpen, eye_close_left]", r"animeceleb\.human_morphs: .*unknown morph.*eye_close_left"),
        ("frames_per_identity=-1", r"animeceleb\.frames_per_identity: .*greater than or equal to 0"),
        ("identities=-3", r"animeceleb\.identities: .*greater than or equal to 1"),
        ("sequences_per_identity=-1", r"animeceleb\.sequences_per_identity"),
        ("resolution=0", r"animeceleb\.resolution: .*greater than or equal to 16"),
        ("styles=[default, sketch]", r"animeceleb\.styles\.1: "),
        ("domains=[]", r"animeceleb\.domains: .*must not be empty"),
        ("pose.yaw=[30, -30]", r"animeceleb\.pose\.yaw: .*low <= high"),
        ("pose.pitch=[-90, 10]", r"animeceleb\.pose\.pitch: .*±75"),
        ("test_fraction=1.0", r"animeceleb\.test_fraction"),
        ("resources.device=tpu", r"animeceleb\.resources\.device"),
        ("workers=2", r"animeceleb\.workers: .*[Ee]xtra inputs"),  # moved to resources.workers
        # sizes that allocate are bounded (10**12 frames once ran away to 2 GB before a kill)
        ("frames_per_identity=1000000000000", r"animeceleb\.frames_per_identity: .*less than or equal to 100000"),
        ("sequence_length=100000000", r"animeceleb\.sequence_length: .*less than or equal to 10000"),
        ("frames_per_shard=1000000", r"animeceleb\.frames_per_shard: .*less than or equal to 10000"),
        ("resolution=4096", r"animeceleb\.resolution: .*less than or equal to 2048"),
        ("max_active_morphs=1000", r"animeceleb\.max_active_morphs"),
        # every float is finite, nested sections included
        ("pose.yaw=[.nan, 10]", r"animeceleb\.pose\.yaw\.0: .*finite"),
        ("pose.roll=[-5, .inf]", r"animeceleb\.pose\.roll\.1: .*finite"),
        ("test_fraction=.nan", r"animeceleb\.test_fraction: .*finite"),
        ("frame_rate=30", r"animeceleb\.frame_rate: .*[Ee]xtra inputs"),
    ],
)
def test_bad_values_name_their_field(override, field):
    with pytest.raises(ConfigError, match=field):
        load_config("animeceleb", AnimeCelebConfig, overrides=[override])


def test_a_split_needs_two_identities():
    with pytest.raises(ConfigError, match=r"animeceleb\.test_fraction: .*identities >= 2"):
        load_config("animeceleb", AnimeCelebConfig, overrides=["identities=1"])
    assert load_config("animeceleb", AnimeCelebConfig, overrides=["identities=1", "test_fraction=0"]).identities == 1


def test_sizes_are_bounded_together_not_only_one_by_one():
    # each within its own bound, but the plan (one row per render, in memory) would be 300 M rows
    with pytest.raises(ConfigError, match=r"animeceleb\.frames_per_identity: the plan would hold 300,027,000 renders"):
        load_config("animeceleb", AnimeCelebConfig, overrides=["identities=1000", "frames_per_identity=100000"])
    with pytest.raises(ConfigError, match=r"animeceleb\.frames_per_shard: 1000 frames of 2048² px"):
        load_config("animeceleb", AnimeCelebConfig, overrides=["resolution=2048", "frames_per_shard=1000"])
    cfg = load_config("animeceleb", AnimeCelebConfig, overrides=["identities=3", "frames_per_identity=4",
                                                                 "sequences_per_identity=2", "sequence_length=5"])
    from tasks.animeceleb.sampling import build_plan

    assert cfg.renders == len(build_plan(cfg)[0]) == 3 * (2 + 1) * (1 + 4 + 2 * 5)  # anime: 2 styles, human: 1


def test_params_yaml_holds_the_model_defaults():
    assert AnimeCelebConfig.model_validate(read_section("animeceleb")) == AnimeCelebConfig()


def test_the_issue_command_line_parses():
    cfg = load_config("animeceleb", AnimeCelebConfig, overrides=["identities=8", "frames_per_identity=16", "resolution=128"])
    assert (cfg.identities, cfg.frames_per_identity, cfg.resolution) == (8, 16, 128)
