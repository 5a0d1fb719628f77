"""The fast CRF decoding equals the straightforward one; tagger output is batch-independent.

The references below are the per-step implementations the tagger used before its decoding
was sped up (kept here only), plus pytorch-crf's own Viterbi and the CRF definition of a
marginal (the gradient of the log-partition function with respect to the emissions).
"""

from __future__ import annotations

import torch
from torchcrf import CRF

from fedmed.deid.bilstm_crf import FastCRF
from fedmed.deid.corpus import generate
from fedmed.deid.taggers import load_tagger
from fedmed.deid.tokens import LABELS


def _reference_viterbi(crf: CRF, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    em, m = emissions.transpose(0, 1), mask.transpose(0, 1)
    steps, batch = m.shape
    score = crf.start_transitions + em[0]
    history = []
    for t in range(1, steps):
        best, idx = (score.unsqueeze(2) + crf.transitions).max(dim=1)
        score = torch.where(m[t].unsqueeze(1), best + em[t], score)
        history.append(idx)
    lengths = m.sum(0)
    cur = (score + crf.end_transitions).argmax(1)
    paths = torch.zeros(steps, batch, dtype=torch.long)
    for t in range(steps - 1, -1, -1):
        paths[t] = cur
        if t > 0:
            prev = history[t - 1].gather(1, cur.unsqueeze(1)).squeeze(1)
            cur = torch.where(t <= lengths - 1, prev, cur)
    return [paths[: int(n), b].tolist() for b, n in enumerate(lengths)]


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.sum(dim=-1, keepdim=True).clamp_min(1e-300)


def _reference_marginals(crf: CRF, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    em = emissions.transpose(0, 1).double()
    m = mask.transpose(0, 1)
    steps = em.shape[0]
    trans = torch.exp(crf.transitions.double() - crf.transitions.max())
    ee = torch.exp(em - em.max(dim=2, keepdim=True).values)
    start = torch.exp(crf.start_transitions.double() - crf.start_transitions.max())
    end = torch.exp(crf.end_transitions.double() - crf.end_transitions.max())
    alphas = [_normalise(start * ee[0])]
    for t in range(1, steps):
        nxt = _normalise((alphas[-1] @ trans) * ee[t])
        alphas.append(torch.where(m[t].unsqueeze(1), nxt, alphas[-1]))
    last = (m.sum(0) - 1).unsqueeze(1)
    betas = [end.expand_as(ee[0])] * steps
    for t in range(steps - 2, -1, -1):
        prop = _normalise((ee[t + 1] * betas[t + 1]) @ trans.T)
        betas[t] = torch.where(last == t, end.expand_as(prop), prop)
    marg = torch.stack([_normalise(a * b) for a, b in zip(alphas, betas, strict=True)])
    return marg.transpose(0, 1).to(emissions.dtype)


def _random_problem(seed: int, batch: int = 9, steps: int = 40,
                    tags: int = len(LABELS)) -> tuple[FastCRF, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    crf = FastCRF(tags, batch_first=True)
    with torch.no_grad():
        for p in (crf.transitions, crf.start_transitions, crf.end_transitions):
            p.copy_(torch.randn(p.shape, generator=gen) * 3)
    emissions = torch.randn(batch, steps, tags, generator=gen) * 4
    lengths = torch.randint(1, steps + 1, (batch,), generator=gen)
    lengths[0] = steps  # at least one full-length row, as in a real batch
    mask = torch.arange(steps).unsqueeze(0) < lengths.unsqueeze(1)
    return crf, emissions, mask


def test_viterbi_equals_the_reference_and_pytorch_crf() -> None:
    for seed in range(6):
        crf, emissions, mask = _random_problem(seed)
        with torch.no_grad():
            fast = crf.viterbi(emissions, mask)
            assert fast == _reference_viterbi(crf, emissions, mask)
            assert fast == CRF.decode(crf, emissions, mask)


def test_viterbi_with_the_shipped_transitions() -> None:
    """Peaked emissions and the checkpoint's narrow transitions: most previous tags are
    skipped by the bound in ``FastCRF.viterbi``; the paths must not change."""
    crf = load_tagger().model.crf
    for seed in range(3):
        _, emissions, mask = _random_problem(seed, batch=16, steps=120)
        emissions = emissions * 3
        with torch.no_grad():
            assert crf.viterbi(emissions, mask) == _reference_viterbi(crf, emissions, mask)


def test_viterbi_breaks_ties_like_the_reference() -> None:
    crf, emissions, mask = _random_problem(7, tags=5)
    with torch.no_grad():
        crf.transitions.zero_()  # every previous tag scores the same: ties everywhere
        emissions = emissions.round()
        assert crf.viterbi(emissions, mask) == _reference_viterbi(crf, emissions, mask)


def test_marginals_equal_the_reference_and_the_log_partition_gradient() -> None:
    for seed in range(4):
        crf, emissions, mask = _random_problem(seed)
        with torch.no_grad():
            fast = crf.marginals(emissions, mask)
            assert torch.equal(fast, _reference_marginals(crf, emissions, mask))
        em = emissions.transpose(0, 1).double().requires_grad_()
        crf_double = crf.double()
        log_z = crf_double._compute_normalizer(em, mask.transpose(0, 1)).sum()
        (grad,) = torch.autograd.grad(log_z, em)
        crf.float()
        valid = mask.unsqueeze(-1).expand_as(fast)
        assert torch.allclose(fast[valid].double(), grad.transpose(0, 1)[valid], atol=1e-6)


def test_tagger_spans_do_not_depend_on_the_batch() -> None:
    docs = generate(12, seed=779, split="test")
    texts = ["\n".join(d.text for d in docs[i:i + 3]) for i in range(0, 12, 3)]
    tagger = load_tagger()
    together = tagger.predict(texts)
    assert [tagger.predict([t])[0] for t in texts] == together
    assert tagger.predict(texts[::-1])[::-1] == together
