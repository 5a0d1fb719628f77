"""Measured DP-SGD recipes: the local training settings each task pack trains with under DP.

Why: DP-SGD does not want the settings plain SGD wants. Each example's gradient is clipped to
``clip-norm`` and the noise is added once per step, so the signal-to-noise ratio of a step
grows with the batch (B clipped gradients against one draw of noise) and the clipped
gradient is much shorter than the raw one, which asks for a larger learning rate. A pack's
plain-SGD defaults therefore leave most of its DP utility on the table (docs/privacy.md
§ DP recipes and curves has the measurements each entry below comes from, with the commands).

How it applies: the federation setting ``dp-recipe`` is ``measured`` (default) or ``none``.
With ``measured`` and ``dp`` on, :func:`recipe_overrides` gives the pack's recipe for every
setting of :data:`RECIPE_SETTINGS` that the federation folder and the command line leave
out; a value written there always wins. With DP off, or ``dp-recipe = "none"``, the pack's
plain defaults stand. The coordinator resolves it once from the run config
(:meth:`fedmed.config.FederationConfig.from_run_config`) and sends the settings in each
round's instructions (``fedmed.server.app.fit_config_fn``); what follows from them for
privacy — the sampling rate, the clip norm and σ — is what each node's ledger records.
"""

from __future__ import annotations

from collections.abc import Mapping

MEASURED, NONE = "measured", "none"
CHOICES = (MEASURED, NONE)

# The settings a recipe may set (federation spelling).
RECIPE_SETTINGS = ("batch-size", "steps-per-epoch", "lr", "local-epochs", "momentum", "clip-norm")
# Both decide the batch (TrainSettings.batch_for): a recipe's stand down together when the
# run config gives either, so a batch written or given on the command line is the one used.
BATCH_SETTINGS = ("batch-size", "steps-per-epoch")

# task → its measured recipe. A pack missing here trains under DP with its plain defaults.
RECIPES: dict[str, dict[str, float | int]] = {
    # docs/privacy.md § Accuracy against ε (heart): clip 0.5 tuned at ε = 1, batch 16.
    "heart": {"batch-size": 16, "lr": 0.05, "clip-norm": 0.5},
    # § imaging-cls: the AUC of the default's (batch 32, lr 0.1) at half its DP time.
    "imaging-cls": {"batch-size": 256, "lr": 2.0, "clip-norm": 0.5},
    # § ecg: the plain default (batch 32, lr 0.05) ends at the majority class at ε = 1 with
    # 1,000 windows per site; batches of 256 at lr 0.5 learn.
    "ecg": {"batch-size": 256, "lr": 0.5, "clip-norm": 1.0},
    # § ecg-rhythm: a linear layer over fixed features; at ε = 1 and 1,000 windows per
    # site batches of 256 at lr 10 beat the plain default (batch 32, lr 2) by far.
    "ecg-rhythm": {"batch-size": 256, "lr": 10.0, "clip-norm": 1.0},
    # § icd-sentences: at ε = 1 and 1,000 notes per site the step lr × clip wants ≈ 0.025
    # (half the plain lr 0.1's); larger batches at larger lr scored lower.
    "icd-sentences": {"batch-size": 16, "lr": 0.05, "clip-norm": 0.5},
    # § deid-ner: with a fixed batch of 32 a site with more notes takes more noisy steps and
    # ends worse (1,000 notes: recall 0.000 at ε = 1); at most 6 steps an epoch above the
    # pack's batch of 32 is never worse than it at 60, 250 or 1,000 notes per site.
    "deid-ner": {"steps-per-epoch": 6},
}


def recipe_overrides(
    task: str, dp: bool, recipe: str, given: Mapping[str, object]
) -> dict[str, float | int]:
    """The recipe's settings for ``task`` that ``given`` (the run config's keys) leaves out;
    empty with DP off or ``recipe == "none"``. A batch given either way (``batch-size`` or
    ``steps-per-epoch``) keeps the recipe's batch out in both spellings."""
    if not dp or recipe != MEASURED:
        return {}
    taken = set(given) | (set(BATCH_SETTINGS) if given.keys() & set(BATCH_SETTINGS) else set())
    return {key: value for key, value in RECIPES.get(task, {}).items() if key not in taken}
