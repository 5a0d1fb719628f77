"""SHAP attributions of a tabular risk model: a site's global feature importance and one
waterfall per patient, drawn as PNG.

A clinician reading a federated heart-disease score wants to know which measurements drove
it, for the site's patients as a whole and for one patient. SHAP (Lundberg and Lee, 2017)
splits a prediction into one additive share per input: ``expected value + Σ shares =
the model's output on that patient``, the expected value being the mean output over a
background of patients. fedmed uses the ``shap`` package's model-agnostic permutation
explainer with an independent (interventional) masker, so the same code explains the linear
heart model and any other tabular classifier, and the shares always add up exactly
(additivity holds for every permutation, not only on average).

What is explained: the model's **logit** (log-odds of the positive class), the output the
pack trains with ``binary_cross_entropy_with_logits``. On the log-odds scale a linear
model's shares are exact (``w_i · (x_i − mean background x_i)``) and add up without the
sigmoid's bending; the waterfall's axis says "log-odds".

The background is a seeded sample of the site's **own training rows**
(:data:`BACKGROUND_ROWS`): the expected value is "a typical patient of this hospital", and no
row of another site is needed, so the values stay at the site like every explanation
(:mod:`fedmed.explain.outcome`). The global importance is the mean absolute share over the
site's whole test split; the waterfalls are its first ``n`` test patients.

Why ``shap`` and not captum: shap is the reference implementation, and its waterfall and bar
plots are the ones clinicians have seen in papers; captum would give the values but no such
plots. shap 0.51 installs from PyPI on Python 3.11 (pulling numba and llvmlite, ~210 MB) and
downloads nothing at run time; :func:`import_shap` keeps numba's compile time off the node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from fedmed.explain.base import Explainer, explained_copy, first_examples

if TYPE_CHECKING:
    from shap import Explanation

BACKGROUND_ROWS = 50  # training rows the expected value averages over (shap's guide: 50–100)
BACKGROUND_SEED = 0  # which rows: fixed, so a site's pictures are the same on every rerun
# Permutations per patient. One already gives the exact values of an additive model (the
# heart pack's logistic regression); more only refine the split of interactions. shap's
# default (500 evaluations) would be 9 here, for 3x the time at every site of every run.
PERMUTATIONS = 3
MAX_DISPLAY = 12  # features drawn before "N other features"
OUTPUT_LABEL = "log-odds of disease"


class TabularShap(Explainer):
    """SHAP values of a binary tabular classifier's logit, for a site's test rows.

    ``feature_names`` name the model's input columns. ``display`` maps encoded input rows to
    what a clinician reads beside each feature in a waterfall (e.g. scaled values back in
    the data dictionary's units); the identity when None.

    Files: ``shap-importance-<site>.png`` (mean |SHAP| per feature over the test split) and
    ``shap-waterfall-<site>-<i>.png`` for the first ``n`` test patients.
    """

    kind = "SHAP feature importance and per-patient waterfalls (PNG)"

    def __init__(
        self, feature_names: Sequence[str],
        display: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.feature_names = list(feature_names)
        self.display = display

    def explain(
        self, model: nn.Module, examples: Dataset, site: str, out_dir: Path, n: int = 4,
        background: Dataset | None = None,
    ) -> list[Path]:
        """As :meth:`Explainer.explain`; ``background`` is the site's training split (SHAP's
        expected value is taken over a seeded sample of it) and is required."""
        if background is None:
            raise ValueError("SHAP needs background rows: pass the site's training split")
        rows = first_examples(examples, len(examples))  # type: ignore[arg-type]
        if rows is None:
            return []
        explanation = self.values(model, rows[0].numpy(), background_rows(background))
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / f"shap-importance-{site}.png"]
        draw_importance(explanation, f"{site}: mean |SHAP| over {len(explanation)} test "
                        f"patients ({OUTPUT_LABEL})", paths[0])
        for index in range(min(n, len(explanation))):
            path = out / f"shap-waterfall-{site}-{index}.png"
            label = int(rows[1][index])
            draw_waterfall(explanation[index], f"{site} #{index}: true label {label}; SHAP of "
                           f"the {OUTPUT_LABEL}", path)
            paths.append(path)
        return paths

    def values(
        self, model: nn.Module, rows: np.ndarray, background: np.ndarray
    ) -> Explanation:
        """SHAP values of ``model``'s logit on ``rows`` (n × features) against ``background``.

        ``base_values`` is the mean logit over ``background`` and, for every row,
        ``base_values + values.sum() == logit``. Deterministic: the permutations are seeded,
        and numpy's global random state (which shap's permutation explainer reseeds) is put
        back afterwards so training code run later in this process is unaffected.
        """
        shap = import_shap()
        explained = explained_copy(model)

        def logit(batch: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                out = explained(torch.as_tensor(batch, dtype=torch.float32))
            return out.double().numpy().reshape(len(batch))

        masker = shap.maskers.Independent(background, max_samples=len(background))
        state = np.random.get_state()
        try:
            explainer = shap.explainers.Permutation(
                logit, masker, feature_names=self.feature_names, seed=BACKGROUND_SEED)
            explanation = explainer(
                rows, max_evals=PERMUTATIONS * (2 * rows.shape[1] + 1), silent=True)
        finally:
            np.random.set_state(state)
        if self.display is not None:
            explanation.display_data = self.display(rows)
        return explanation


def import_shap() -> ModuleType:
    """The ``shap`` module, imported the first time with numba's JIT switched off.

    shap's masking and output-building kernels are ``numba.njit`` functions compiled on their
    first call in each process: measured here 4–10 s per process on the 2-core reference
    machine, paid by every simulated or deployed node at the end of every heart run. As plain
    Python (numba's ``DISABLE_JIT``, read when a function is decorated, i.e. while shap is
    imported) the same code explains a site's ~100 test patients in under a second. The flag
    is put back at once, so numba elsewhere in the process is untouched; if shap was already
    imported with JIT on, that module is used as it is (slower first call, same values).
    Imported only when explaining: shap and numba are slow to import.
    """
    import numba

    jit_disabled = numba.config.DISABLE_JIT
    numba.config.DISABLE_JIT = True
    try:
        import shap
    finally:
        numba.config.DISABLE_JIT = jit_disabled
    return shap


def background_rows(dataset: Dataset) -> np.ndarray:
    """A seeded sample of :data:`BACKGROUND_ROWS` input rows of ``dataset`` (all of them when
    it has fewer), as a float64 matrix."""
    count = len(dataset)  # type: ignore[arg-type]
    if count < 1:
        raise ValueError("SHAP needs background rows: the site's training split is empty")
    rng = np.random.default_rng(BACKGROUND_SEED)
    chosen = np.sort(rng.choice(count, size=min(BACKGROUND_ROWS, count), replace=False))
    return np.stack([np.asarray(dataset[int(i)][0], dtype=np.float64) for i in chosen])


def draw_importance(explanation: Explanation, title: str, path: Path) -> None:
    """shap's bar plot of mean |SHAP| per feature over all rows of ``explanation``."""
    shap = import_shap()
    _save_shap_plot(lambda: shap.plots.bar(explanation, max_display=MAX_DISPLAY, show=False),
                    title, path)


def draw_waterfall(explanation: Explanation, title: str, path: Path) -> None:
    """shap's waterfall of one row: expected value, each feature's share, the patient's logit."""
    shap = import_shap()
    _save_shap_plot(
        lambda: shap.plots.waterfall(explanation, max_display=MAX_DISPLAY, show=False),
        title, path)


def _save_shap_plot(draw: Callable[[], object], title: str, path: Path) -> None:
    """Run one of shap's plots on a fresh pyplot figure, title it, save it and close it.

    shap draws through pyplot's current figure, so the Agg backend is chosen first (nodes have
    no display; the same choice as :mod:`fedmed.plots`) and the figure is closed even when
    drawing fails, so a node explaining many runs keeps no figures alive.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure()
    try:
        draw()
        figure.suptitle(title, fontsize=9)
        figure.savefig(path, bbox_inches="tight", dpi=100)
    finally:
        plt.close(figure)
