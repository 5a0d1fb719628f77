"""The heart task pack on the vendored UCI tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedmed.errors import ConfigError, DataError
from fedmed.tasks import get_task, task_names
from fedmed.tasks.heart import DATA_DIR, SITE_FILES, encode_features, read_site_table
from fedmed.training.loop import TrainSettings, get_weights, set_weights, train_round

SITE_SIZES = {"cleveland": 303, "hungary": 294, "switzerland": 123, "va": 200}


def test_registry_knows_heart() -> None:
    assert "heart" in task_names()
    with pytest.raises(ConfigError, match="unknown task 'nope'"):
        get_task("nope")


@pytest.mark.parametrize("site", sorted(SITE_SIZES))
def test_every_hospital_is_split_two_thirds_one_third(site: str) -> None:
    data = get_task("heart").load_site(site, None, seed=0)
    n_train, n_test = len(data.train), len(data.test)
    assert n_train + n_test == SITE_SIZES[site]
    assert abs(n_test / SITE_SIZES[site] - 1 / 3) < 0.02
    x, y = data.train[0]
    assert x.shape == (26,) and y.item() in (0.0, 1.0)


def test_split_and_fingerprint_do_not_depend_on_training_seed() -> None:
    pack = get_task("heart")
    first, second = pack.load_site("va", None, seed=0), pack.load_site("va", None, seed=7)
    assert first.fingerprint == second.fingerprint
    assert torch.equal(first.test.tensors[0], second.test.tensors[0])


def test_flamby_preprocessing_drops_rows_with_missing_values() -> None:
    from fedmed.tasks.heart import HeartTask

    pack = get_task("heart-flamby")  # the registered name runs it federated
    assert isinstance(pack, HeartTask) and pack.preprocessing == "flamby"
    splits = [pack.load_site(site, None, 0) for site in SITE_FILES]
    total = sum(len(d.train) + len(d.test) for d in splits)
    assert total == 740  # FLamby's Fed-Heart-Disease size
    with pytest.raises(ConfigError, match="preprocessing"):
        HeartTask(preprocessing="median")


def test_missing_values_become_reference_values_with_indicators() -> None:
    table = read_site_table(DATA_DIR / SITE_FILES["switzerland"])
    assert table["chol"].eq(0).all()  # Switzerland records no cholesterol
    encoded = encode_features(np.array([[np.nan] * 13]))
    assert np.allclose(encoded[0, :13], 0.0) and np.allclose(encoded[0, 13:], 1.0)


def test_local_training_beats_the_untrained_model() -> None:
    pack = get_task("heart")
    data = pack.load_site("cleveland", None, seed=0)
    torch.manual_seed(0)
    model = pack.build_model()
    before = pack.evaluate(model, data.test, torch.device("cpu"))["accuracy"]
    settings = TrainSettings(local_epochs=10, batch_size=16, lr=0.05, seed=0)
    result = train_round(pack, model, data.train, settings, torch.device("cpu"))
    after = pack.evaluate(model, data.test, torch.device("cpu"))
    assert result.num_examples == len(data.train) and result.steps == 10 * 13
    assert after["accuracy"] > max(before, 0.75) and after["auc"] > 0.8


def test_weights_round_trip_and_shape_check() -> None:
    pack = get_task("heart")
    model = pack.build_model()
    weights = get_weights(model)
    set_weights(model, [w + 1 for w in weights])
    assert np.allclose(get_weights(model)[1], weights[1] + 1)
    with pytest.raises(ValueError, match="expected shape"):
        set_weights(model, [np.zeros((2, 2)), weights[1]])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("1,2,3\n4,5,6\n", "expected 14 comma-separated columns"),
        ("a,b,c,d,e,f,g,h,i,j,k,l,m,n\n" * 3, "non-numeric"),
        ("", "not a readable"),
    ],
)
def test_malformed_tables_name_the_file(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / SITE_FILES["va"]).write_text(content)
    with pytest.raises(DataError, match=message) as error:
        get_task("heart").load_site("va", tmp_path, seed=0)
    assert str(tmp_path / SITE_FILES["va"]) in str(error.value)


def test_missing_folder_and_file_are_reported(tmp_path: Path) -> None:
    pack = get_task("heart")
    with pytest.raises(DataError, match="data folder not found"):
        pack.load_site("va", tmp_path / "absent", seed=0)
    with pytest.raises(DataError, match="file not found"):
        pack.load_site("va", tmp_path, seed=0)
    with pytest.raises(ConfigError, match="unknown heart site"):
        pack.load_site("mayo", None, seed=0)
