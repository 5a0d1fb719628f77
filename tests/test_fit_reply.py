"""The node's fit reply (fedmed.privacy.reply.FitReply): the wire format deployed nodes and
recorded runs rely on — key names, value types and key order — and its round trip."""

from __future__ import annotations

from fedmed.privacy.reply import FitReply

ACCEPTED = {
    "site": "cleveland",
    "refused": 0,
    "train-loss": 0.61,
    "steps": 12,
    "device": "cpu",
    "epsilon": 0.42,
    "delta": 1e-5,
    "epsilon-budget": 3.0,
    "accountant": "rdp",
    "noise-multiplier": 1.1,
    "sample-rate": 0.07,
    "clip-norm": 1.0,
    "audit-key": "ab12",
    "audit-seq": 7,
    "audit-hash": "cd34",
}


def test_an_accepted_reply_keeps_the_wire_format() -> None:
    reply = FitReply(
        site="cleveland", train_loss=0.61, steps=12, device="cpu", epsilon=0.42, delta=1e-5,
        epsilon_budget=3.0, accountant="rdp", noise_multiplier=1.1, sample_rate=0.07,
        clip_norm=1.0, audit_key="ab12", audit_seq=7, audit_hash="cd34",
    )  # fmt: skip
    metrics = reply.to_metrics()
    assert list(metrics.items()) == list(ACCEPTED.items())
    assert type(metrics["refused"]) is int
    assert FitReply.from_metrics(metrics) == reply
    assert reply.audit_head() == {"key": "ab12", "seq": 7, "hash": "cd34"}
    assert list(reply.privacy()) == [
        "epsilon", "delta", "epsilon_budget", "accountant", "noise_multiplier", "sample_rate",
        "clip_norm",
    ]  # fmt: skip


def test_a_refusal_sends_only_its_reason_and_the_account_it_could_read() -> None:
    bare = FitReply(site="va", refused=True, reason="over budget").to_metrics()
    assert list(bare.items()) == [("site", "va"), ("refused", 1), ("reason", "over budget")]
    spent = FitReply(site="va", refused=True, reason="over budget", epsilon=2.9, delta=1e-5,
                     epsilon_budget=3.0, accountant="rdp").to_metrics()  # fmt: skip
    assert list(spent) == ["site", "refused", "reason", "epsilon", "delta", "epsilon-budget",
                           "accountant"]  # fmt: skip
    read = FitReply.from_metrics(spent)
    assert read.refused and read.reason == "over budget" and read.audit_head() is None


def test_the_coordinator_reads_any_reply_without_repairing_it() -> None:
    read = FitReply.from_metrics({"refused": 0, "epsilon": 1, "unknown-key": "x"})
    assert (read.site, read.refused, read.epsilon, read.reason) == ("", False, 1, None)
    assert read.privacy() == {"epsilon": 1}
