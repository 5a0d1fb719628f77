"""Membership inference against a final model: per-example losses, AUC, TPR at low FPR.

The loss-threshold attack (Yeom et al., "Privacy Risk in Machine Learning", CSF 2018):
an example the model was trained on tends to have a lower loss than one it never saw, so
``−loss`` is the attacker's membership score. Its ROC AUC (members: the site's training
rows; non-members: its held-out rows) is 0.5 for a model that reveals nothing; the true
positive rate at a 0.1 % false positive rate is what Carlini et al. ("Membership Inference
Attacks From First Principles", S&P 2022) argue matters — an attack that is confidently
right about a few patients. It is the stronger measure, not the average case.

The loss is the pack's own (:meth:`fedmed.tasks.base.TaskPack.loss`), one example at a
time over the model's outputs, so every pack is attacked on its own training objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn
from torch.utils.data import Dataset

from fedmed.tasks import TaskPack
from fedmed.tasks.base import predict

LOW_FPR = 0.001


def example_losses(
    pack: TaskPack, model: nn.Module, dataset: Dataset, device: torch.device
) -> np.ndarray:
    """The pack's loss of ``model`` on each example of ``dataset``, in dataset order."""
    outputs, targets = predict(model, dataset, device)
    with torch.no_grad():
        losses = [
            float(pack.loss(outputs[i : i + 1].double(), targets[i : i + 1]))
            for i in range(len(targets))
        ]
    return np.asarray(losses, dtype=np.float64)


def logit_confidence(losses: np.ndarray) -> np.ndarray:
    """``log(p / (1 − p))`` of the true label, from a log-loss ``−log p``: the scaling of
    Carlini et al. (2022) that keeps growing while the loss flattens out near 0, so two
    confident models still differ in how confident they are."""
    clipped = np.maximum(losses, 1e-300)
    return -clipped - np.log(-np.expm1(-clipped))


@dataclass(frozen=True)
class MembershipResult:
    """How well ``−loss`` separates members from non-members."""

    auc: float
    tpr_at_low_fpr: float  # at LOW_FPR; with < 1 / LOW_FPR non-members: above every one
    members: int
    non_members: int


def loss_attack(member_losses: np.ndarray, non_member_losses: np.ndarray) -> MembershipResult:
    """AUC and TPR at :data:`LOW_FPR` of the loss-threshold attack (module docstring).

    With fewer than 1 / LOW_FPR non-members the lowest non-zero FPR is 1 / n, so the TPR is
    taken where no non-member at all is flagged: the members scoring above every one.
    """
    if len(member_losses) == 0 or len(non_member_losses) == 0:
        raise ValueError("membership inference needs members and non-members")
    labels = np.concatenate([np.ones(len(member_losses)), np.zeros(len(non_member_losses))])
    scores = -np.concatenate([member_losses, non_member_losses])
    fpr, tpr, _ = roc_curve(labels, scores)
    return MembershipResult(
        auc=float(roc_auc_score(labels, scores)),
        tpr_at_low_fpr=float(tpr[fpr <= LOW_FPR].max()),
        members=len(member_losses),
        non_members=len(non_member_losses),
    )
