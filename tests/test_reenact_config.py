"""reenact config and input checks: bad values and bad datasets fail early, naming the field."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.common.config import ConfigError, load_config
from tasks.reenact.config import ReenactConfig


def test_params_yaml_section_is_valid_and_matches_the_model_defaults():
    assert load_config("reenact", ReenactConfig) == ReenactConfig()


@pytest.mark.parametrize("override, field", [
    ("generator.image_size=50", "reenact.generator"),
    ("generator.styles=[default,sketch]", "reenact.generator"),
    ("edtn.lr=0", "reenact.edtn.lr"),
    ("training.backend=horovod", "reenact.training.backend"),
    ("training.zero_stage=4", "reenact.training.zero_stage"),
    ("heldout_expression_fraction=1.0", "reenact.heldout_expression_fraction"),
    ("edtn.stepz=3", "reenact.edtn.stepz"),
    ("threads=4", "reenact.threads"),  # moved to resources.cpus_per_step
    ("edtn.lr=.inf", "reenact.edtn.lr"),  # floats are finite in every section
    ("generator.w_adv=.nan", "reenact.generator.w_adv"),
    ("bridge.ridge=.inf", "reenact.bridge.ridge"),
    ("edtn.eval_expressions=1000000000", "reenact.edtn.eval_expressions"),  # sizes that allocate are bounded
    ("generator.batch=100000", "reenact.generator.batch"),
    ("regressor.steps=100000000000", "reenact.regressor.steps"),
    ("eval_pairs=100000000", "reenact.eval_pairs"),
])
def test_bad_values_are_rejected_with_the_field_named(override, field):
    with pytest.raises(ConfigError) as e:
        load_config("reenact", ReenactConfig, overrides=[override])
    assert field in str(e.value), str(e.value)


def _fake_dataset(root, n_anime=17, n_human=52, npz_anime=17):
    from tasks.common.morphs import Material, MorphModel

    (root / "dataset").mkdir(parents=True)
    (root / "shards").mkdir()
    (root / "morph_models").mkdir()
    rows = []
    for domain, k in (("anime", n_anime), ("human", n_human)):
        for i, split in enumerate(("train", "test")):
            rows.append({"domain": domain, "split": split, "identity": f"{domain}_{i}", "weights": np.zeros(k, np.float32),
                         "shard": f"{domain}_{i}-000"})
            for suffix in (".tar", ".parquet"):
                (root / "shards" / f"{domain}_{i}-000{suffix}").write_bytes(b"")
    pd.DataFrame(rows).to_parquet(root / "dataset" / "manifest.parquet")
    for domain, k in (("anime", npz_anime), ("human", n_human)):
        MorphModel(domain, [f"m{j}" for j in range(k)], np.zeros((3, 3)), np.array([[0, 1, 2]]), np.zeros((k, 3, 3)),
                   np.zeros(1), [Material("m", (1.0, 1.0, 1.0))]).save(root / "morph_models" / f"{domain}.npz")


def test_a_missing_dataset_names_the_dataset_field_and_says_what_to_run(tmp_path):
    from tasks.reenact.data import check_inputs

    cfg = ReenactConfig(dataset=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"reenact\.dataset: no animeceleb manifest .* `paperline run animeceleb`"):
        check_inputs(cfg)


def test_a_morph_count_mismatch_names_the_dataset_field(tmp_path):
    from tasks.reenact.data import check_inputs

    _fake_dataset(tmp_path / "a", n_anime=12)
    with pytest.raises(ConfigError, match=r"reenact\.dataset: anime frames carry \[12\] morph weights, the models expect 17"):
        check_inputs(ReenactConfig(dataset=str(tmp_path / "a")))
    _fake_dataset(tmp_path / "b", npz_anime=12)
    with pytest.raises(ConfigError, match=r"reenact\.dataset: anime\.npz has 12 morphs"):
        check_inputs(ReenactConfig(dataset=str(tmp_path / "b")))
    _fake_dataset(tmp_path / "c")
    assert len(check_inputs(ReenactConfig(dataset=str(tmp_path / "c")))) == 4


def test_a_missing_or_truncated_shard_is_refused_before_any_work_naming_it(tmp_path):
    from tasks.common.artifacts import mark_complete
    from tasks.common.config import DataError
    from tasks.reenact.data import check_inputs

    _fake_dataset(tmp_path / "d")
    shards = tmp_path / "d" / "shards"
    (shards / "anime_1-000.tar").write_bytes(b"x" * 1024)
    mark_complete(shards, "k")  # what animeceleb recorded: sizes and hashes of every shard file
    (shards / "anime_1-000.tar").write_bytes(b"x" * 100)
    with pytest.raises(DataError, match=r"reenact\.dataset: shard anime_1-000 is damaged \(anime_1-000\.tar is 100 bytes, written as 1024\)"):
        check_inputs(ReenactConfig(dataset=str(tmp_path / "d")))
    (shards / "anime_1-000.tar").unlink()
    with pytest.raises(DataError, match=r"reenact\.dataset: shard anime_1-000 is missing anime_1-000\.tar"):
        check_inputs(ReenactConfig(dataset=str(tmp_path / "d")))


def test_the_flow_refuses_to_start_without_its_dataset(tmp_path, monkeypatch):
    from flows.reenact import reenact

    monkeypatch.setenv("PAPERLINE_DATA", str(tmp_path))
    with pytest.raises(ConfigError, match=r"reenact\.dataset"):
        reenact.fn(config=ReenactConfig())
