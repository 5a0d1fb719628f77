"""The ``train-size`` pack setting: more (or fewer) training examples per built-in site, the
same test split, and a clear refusal wherever it cannot apply (fedmed.tasks.site_size)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedmed.config import FederationConfig
from fedmed.errors import ConfigError
from fedmed.tasks import get_task
from fedmed.tasks.base import TaskPack


def pack_with(task: str, **settings: object) -> TaskPack:
    """The pack a federation config with these settings builds (``train_size`` etc.)."""
    return get_task(FederationConfig(task=task, **settings).task)  # type: ignore[arg-type]


def tensors(dataset: torch.utils.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    inputs, targets = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(inputs).numpy(), torch.stack(targets).numpy()


def test_ecg_sites_train_on_the_windows_asked_for_and_keep_their_test_windows() -> None:
    built_in = pack_with("ecg").load_site("leeds", None, 0)
    sized = pack_with("ecg", train_size=40).load_site("leeds", None, 0)
    assert len(sized.train) == 40 and len(built_in.train) == 300
    test_in, test_labels = tensors(built_in.test)
    np.testing.assert_array_equal(tensors(sized.test)[0], test_in)
    np.testing.assert_array_equal(tensors(sized.test)[1], test_labels)
    train_in, train_labels = tensors(sized.train)
    assert len(set(train_labels.tolist())) >= 3  # the site's class mix, not one class
    # Drawn from its own stream: no training window is one of the site's test windows.
    assert not any(np.allclose(w, t) for w in train_in for t in test_in)
    assert sized.fingerprint != built_in.fingerprint


def test_imaging_and_deid_ner_sites_are_sized_too() -> None:
    imaging = pack_with("imaging-cls", train_size=24).load_site("community", None, 0)
    default_imaging = pack_with("imaging-cls").load_site("community", None, 0)
    assert len(imaging.train) == 24 and len(default_imaging.train) == 512
    np.testing.assert_array_equal(tensors(imaging.test)[0], tensors(default_imaging.test)[0])
    notes = pack_with("deid-ner", train_size=3).load_site("rural", None, 0)
    default_notes = pack_with("deid-ner").load_site("rural", None, 0)
    assert len(notes.train.documents) == 3  # type: ignore[attr-defined]
    assert notes.test.texts == default_notes.test.texts  # type: ignore[attr-defined]


@pytest.mark.parametrize("task", ["ecg", "imaging-cls", "icd", "deid-ner"])
def test_train_size_is_refused_for_a_site_read_from_a_data_folder(
    task: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=rf"train-size sizes the built-in.*{tmp_path}"):
        pack_with(task, train_size=10).load_site("academic", tmp_path, 0)


@pytest.mark.parametrize("value", [0, -3, "many", True, 2.5])
def test_a_bad_train_size_is_refused_by_name(value: object) -> None:
    with pytest.raises(ConfigError, match="train-size"):
        get_task(FederationConfig.from_run_config({"task": "ecg", "train-size": value}).task)


def test_packs_without_built_in_sizes_refuse_the_setting() -> None:
    with pytest.raises(ConfigError, match="takes no train-size"):
        pack_with("heart", train_size=100)
