"""SHAP explanations of the heart pack (issue 18 item 4): the values add up to the model's
logit, they are the exact Shapley values of the linear model, and the site's PNGs are real
pictures. The run-level check (each site of a heart federation holds ``*shap*.png``) rides on
the heart federation of tests/test_spine_federation.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedmed.explain.tabular_shap import BACKGROUND_ROWS, background_rows
from fedmed.tasks import SiteData, get_task
from fedmed.tasks.heart import FEATURE_NAMES, HeartTask
from fedmed.training.loop import get_weights

SITE = "switzerland"  # the smallest test split (41 patients), and features never measured


@pytest.fixture(scope="module")
def heart() -> tuple[HeartTask, SiteData, torch.nn.Module]:
    """The heart pack, one site and a seeded model whose weights are all non-zero."""
    pack = get_task("heart")
    assert isinstance(pack, HeartTask)
    torch.manual_seed(0)
    return pack, pack.load_site(SITE, None, 0), pack.build_model()


def _rows(dataset: torch.utils.data.Dataset) -> np.ndarray:
    return torch.stack([dataset[i][0] for i in range(len(dataset))]).double().numpy()


def test_shap_values_add_up_to_the_logit_and_are_the_linear_models_shapley_values(
    heart: tuple[HeartTask, SiteData, torch.nn.Module],
) -> None:
    """Additivity on the logit (log-odds): expected value + Σ SHAP = the model's output, for
    every test patient. For a linear model the Shapley values against a background are known
    in closed form, w_i · (x_i − mean background x_i), so the values themselves are checked
    too, and so is the expected value (the mean logit over the background)."""
    pack, data, model = heart
    rows, background = _rows(data.test), background_rows(data.train)
    before = np.random.get_state()[1].copy()
    explanation = pack.explainer.values(model, rows, background)
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # shap reseeds: restored
    with torch.no_grad():
        logits = model(torch.as_tensor(rows, dtype=torch.float32)).double().numpy()
        background_logits = model(torch.as_tensor(background, dtype=torch.float32)).double()
    assert explanation.values.shape == (len(rows), len(FEATURE_NAMES))
    np.testing.assert_allclose(explanation.base_values + explanation.values.sum(axis=1),
                               logits, atol=1e-5)
    np.testing.assert_allclose(explanation.base_values, background_logits.mean().item(),
                               atol=1e-5)
    weights = model[0].weight.detach().double().numpy()[0]
    np.testing.assert_allclose(explanation.values, weights * (rows - background.mean(axis=0)),
                               atol=1e-5)
    again = pack.explainer.values(model, rows, background)
    np.testing.assert_array_equal(again.values, explanation.values)  # seeded: reproducible


def test_the_background_is_a_seeded_sample_of_the_sites_own_training_rows(
    heart: tuple[HeartTask, SiteData, torch.nn.Module],
) -> None:
    _, data, _ = heart
    background = background_rows(data.train)
    train = _rows(data.train)
    assert len(background) == min(BACKGROUND_ROWS, len(train))
    assert all((train == row).all(axis=1).any() for row in background)
    np.testing.assert_array_equal(background, background_rows(data.train))


def test_the_heart_pack_writes_real_shap_pictures_and_leaves_the_model_alone(
    heart: tuple[HeartTask, SiteData, torch.nn.Module], tmp_path: Path
) -> None:
    pack, data, model = heart
    before = [w.copy() for w in get_weights(model)]
    paths = pack.explain(model, data, tmp_path)
    assert [p.name for p in paths] == [f"shap-importance-{SITE}.png"] + [
        f"shap-waterfall-{SITE}-{i}.png" for i in range(pack.explain_examples)]
    for path in paths:
        assert path.parent == tmp_path and path.stat().st_size > 10_000
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 300
            pixels = np.asarray(image.convert("L"))
        assert pixels.std() > 10  # bars and text, not a blank canvas
    for new, old in zip(get_weights(model), before, strict=True):
        np.testing.assert_array_equal(new, old)


def test_an_explainer_without_background_refuses(
    heart: tuple[HeartTask, SiteData, torch.nn.Module], tmp_path: Path
) -> None:
    pack, data, model = heart
    with pytest.raises(ValueError, match="background"):
        pack.explainer.explain(model, data.test, SITE, tmp_path)
