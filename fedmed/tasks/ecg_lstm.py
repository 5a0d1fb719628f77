"""ECG rhythm classification with a CNN-LSTM: the ``ecg`` task with a recurrent model.

Same sites, readers, splits and metrics as :mod:`fedmed.tasks.ecg` (this pack subclasses
it); only the model differs, so the two are compared on identical data by changing the
federation's ``task`` setting (``fedmed run examples/ecg --set task=ecg-lstm``).

Model: the convolutional front end of the CNN pack turns the 5 s window into a sequence of
beat-scale feature vectors (~31 steps of 0.16 s), an LSTM reads that sequence in time order,
and a linear layer classifies the mean of its outputs — the CNN-LSTM arrangement of ECG
rhythm classifiers (e.g. Oh et al. 2018; Tan et al. 2018). The recurrence can compare
successive RR intervals directly, which is what separates the irregular (AF-like) rhythm
from sinus rhythm; averaging the outputs over time (rather than keeping the last one) gives
every step a direct gradient and keeps the beat-counting that the rate classes need.

DP-SGD: ``torch.nn.LSTM`` has no per-sample gradients in Opacus, so the LSTM is
:class:`fedmed.privacy.sequence_lstm.SequenceLSTM`: the same weights, outputs and state-dict
names as Opacus's ``DPLSTM`` (the layer this pack used first), with a per-example gradient
rule for the whole sequence instead of one per time step — DP-SGD's per-step accumulation
was most of ``DPLSTM``'s cost here (docs/privacy.md § DP overhead per task pack). It is a
plain ``nn.Module`` (the pack never runs Opacus); normalisation is GroupNorm as in the CNN.

Explainer: the CNN pack's 1-D Grad-CAM, of the convolutional features the LSTM reads (their
gradients pass through the recurrence).
"""

from __future__ import annotations

import torch
from torch import nn

from fedmed.data.ecg_synth import CLASS_NAMES
from fedmed.explain.ecg_saliency import EcgSaliency
from fedmed.privacy.sequence_lstm import SequenceLSTM
from fedmed.tasks import register_task
from fedmed.tasks.ecg import Block, EcgTask, conv_features, last_layer_name

# Four pooled blocks: 500 samples → 31 steps, each seeing ~1.2 s of signal.
LSTM_BLOCKS: tuple[Block, ...] = ((16, 7, 2), (32, 7, 2), (32, 7, 2), (64, 5, 2))
HIDDEN = 64


class EcgCnnLstm(nn.Module):
    """(batch, 1, samples) window → conv features → DPLSTM over time → (batch, classes)."""

    def __init__(
        self, num_classes: int = len(CLASS_NAMES), hidden: int = HIDDEN, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.features = conv_features(LSTM_BLOCKS)
        self.lstm = SequenceLSTM(LSTM_BLOCKS[-1][0], hidden)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        steps = self.features(windows).transpose(1, 2)  # (batch, time, channels)
        outputs = self.lstm(steps)
        return self.head(outputs.mean(dim=1))


@register_task("ecg-lstm")
class EcgLstmTask(EcgTask):
    """The ``ecg`` rhythm task with :class:`EcgCnnLstm` as its model."""

    explainer = EcgSaliency(last_layer_name(conv_features(LSTM_BLOCKS)), CLASS_NAMES)

    def build_model(self) -> nn.Module:
        return EcgCnnLstm(len(self.class_names))
