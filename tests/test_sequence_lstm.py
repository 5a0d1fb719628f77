"""fedmed's LSTM with a per-sequence per-example gradient rule (fedmed.privacy.sequence_lstm).

It must compute what Opacus's ``DPLSTM`` computes — same initial weights, same outputs, same
state-dict names — and its rule must give every example's exact gradient, checked against one
backward pass per example and against ``DPLSTM`` under Opacus; ``ecg-lstm``'s DP-SGD runs it.
"""

from __future__ import annotations

import copy

import pytest
import torch
from opacus.grad_sample import GradSampleModule
from opacus.grad_sample.utils import wrap_model
from opacus.layers import DPLSTM

from fedmed.privacy.sequence_lstm import SequenceLSTM, sequence_lstm_grad_sample
from fedmed.privacy.trainer import select_grad_sample_mode
from fedmed.tasks import get_task
from tests.node_round import verified_dp_epoch


def twins(inputs: int = 5, hidden: int = 7) -> tuple[DPLSTM, SequenceLSTM]:
    torch.manual_seed(3)
    opacus_layer = DPLSTM(inputs, hidden, batch_first=True)
    torch.manual_seed(3)
    return opacus_layer, SequenceLSTM(inputs, hidden)


def test_it_starts_and_computes_exactly_like_dplstm() -> None:
    opacus_layer, ours = twins()
    theirs = opacus_layer.state_dict()
    assert list(ours.state_dict()) == list(theirs)  # nn.LSTM's names, in DPLSTM's order
    for name, value in ours.state_dict().items():
        assert torch.equal(value, theirs[name]), name
    inputs, weights = torch.randn(4, 9, 5), torch.randn(4, 9, 7)
    outputs = ours(inputs), opacus_layer(inputs)[0]
    assert torch.equal(*outputs)  # bit for bit, and so is plain SGD's gradient
    for output in outputs:
        (output * weights).sum().backward()
    for name, param in ours.named_parameters():
        assert torch.equal(param.grad, dict(opacus_layer.named_parameters())[name].grad), name


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_per_example_gradients_equal_one_backward_pass_per_example(reduction: str) -> None:
    _, layer = twins()
    inputs, weights = torch.randn(6, 11, 5), torch.randn(6, 11, 7)
    expected = []
    for example, weight in zip(inputs, weights, strict=True):
        layer.zero_grad()
        (layer(example[None]) * weight).sum().backward()
        expected.append([p.grad.detach().clone() for p in layer.parameters()])
    wrapped = wrap_model(copy.deepcopy(layer), grad_sample_mode="hooks", batch_first=True,
                         loss_reduction=reduction)  # fmt: skip
    loss = (wrapped(inputs) * weights).sum()
    (loss / len(inputs) if reduction == "mean" else loss).backward()
    for index, param in enumerate(wrapped._module.parameters()):
        want = torch.stack([row[index] for row in expected])
        torch.testing.assert_close(param.grad_sample, want, rtol=1e-4, atol=1e-6)


def test_per_example_gradients_equal_dplstms_under_opacus() -> None:
    opacus_layer, ours = twins()
    inputs, weights = torch.randn(4, 9, 5, requires_grad=True), torch.randn(4, 9, 7)
    results = []
    for layer, output in ((opacus_layer, lambda y: y[0]), (ours, lambda y: y)):
        wrapped = wrap_model(layer, grad_sample_mode="hooks", batch_first=True,
                             loss_reduction="mean")  # fmt: skip
        (output(wrapped(inputs)) * weights).sum().div(len(inputs)).backward()
        results.append([p.grad_sample for p in layer.parameters()])
    for theirs, mine in zip(*results, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


def test_frozen_parameters_get_no_per_example_gradient() -> None:
    _, layer = twins()
    layer.weight_hh_l0.requires_grad_(False)
    got = sequence_lstm_grad_sample(layer, [torch.randn(3, 4, 5)], torch.randn(3, 4, 7))
    assert layer.weight_hh_l0 not in got and got[layer.weight_ih_l0].shape == (3, 28, 5)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_ecg_lstm_dp_round_runs_the_rule_through_hooks() -> None:
    """``auto`` sends the model to ``hooks`` (expanded weights would bypass the rule) and a
    DP round of the pack's model runs and verifies its mechanism."""
    assert GradSampleModule.GRAD_SAMPLERS[SequenceLSTM] is sequence_lstm_grad_sample
    pack = get_task("ecg-lstm")
    train = torch.utils.data.Subset(pack.load_site("leeds", None, 0).train, range(24))
    torch.manual_seed(0)
    model = pack.build_model()
    assert isinstance(model.lstm, SequenceLSTM)
    assert select_grad_sample_mode(model, train, pack.loss, 8) == "hooks"
    trainer, _ = verified_dp_epoch(pack, model, train, 8)
    assert trainer.mode_used == "hooks"
