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
        ("device=tpu", r"animeceleb\.device"),
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


def test_params_yaml_holds_the_model_defaults():
    assert AnimeCelebConfig.model_validate(read_section("animeceleb")) == AnimeCelebConfig()


def test_the_issue_command_line_parses():
    cfg = load_config("animeceleb", AnimeCelebConfig, overrides=["identities=8", "frames_per_identity=16", "resolution=128"])
    assert (cfg.identities, cfg.frames_per_identity, cfg.resolution) == (8, 16, 128)
