"""A strategy wrapper that admits, records and audits what the inner Flower strategy does.

Flower's strategies aggregate; they do not keep per-site results, checkpoints or an
audit trail, and they would average a refusal like any other reply.
:class:`RecordingStrategy` sits in front of the wrapped strategy and, each round:

- drops the replies of sites that refused the round (``refused = 1`` in the node's
  :class:`fedmed.privacy.reply.FitReply`, see ``fedmed.clients.app``) before
  aggregation, and logs each refusal three ways: an event in the run directory, a
  ``refusal`` entry in the coordinator's signed audit log, and a note on the console;
- screens every update before aggregation (:mod:`fedmed.server.validation`: NaN/Inf,
  shapes, ``max_update_norm``); a rejected update is left out of the average and
  logged like a refusal (event and signed ``rejected-update`` entry naming the site).
  Under SecAgg+ (``secure``) each reply carries only the securely aggregated sum, so
  the aggregate is screened instead and a bad one keeps the previous global model;
- records each node that failed (Flower's ``failures``: the node raised instead of
  replying) as a ``fit-failure`` event, a signed ``fit-failure`` entry and one console
  line with the node's one-line reason (never a traceback);
- stops the run (:class:`FederationStopped`) when refusals, rejections or failures leave
  fewer than ``min_nodes`` sites, rather than publish a model of too few sites — so a run
  in which every site failed ends non-zero, never with an untrained "final" model;
- asks the sites to evaluate every ``evaluate_every`` rounds and after the last, adding
  ``run-id``, ``server-round``, ``num-rounds`` and ``final-round`` to the evaluate config. On
  the last round each site also writes its explanations of the model into its own site home
  (``fedmed.clients.explanations``) and replies with where they are (``explain-count``,
  ``explain-folder``, ``explain-error``): those keys are kept out of the score tables and
  recorded as ``explanations.<site>``; an explainer's error becomes an
  ``explanation-failure`` event and a console note, never a silent gap;
- writes each site's fit and evaluation metrics and privacy summary
  (``privacy.<site>`` in metrics.json), the global weights (checkpoint) and a signed
  ``round`` entry with the model's SHA-256 and the audit-log heads the sites reported;
- keeps the last head each site reported — of a release or of a signed refusal — in
  the federation's witness record (:mod:`fedmed.server.witness`, written as soon as the
  replies arrive, before any aggregation or stop: the sites have already signed) and
  adds that record to every round's fit config as ``witnessed-heads`` (``{site: {seq,
  hash}}``, JSON), so a site whose log no longer holds its witnessed head refuses the
  round. An accepted reply whose head contradicts the record (another audit key, or a
  log that went back) is rejected, not witnessed;
- deployed (``identities``, :mod:`fedmed.server.identities`): names every reply by the
  site its node key was registered for, tells each node that site and its audit key,
  and drops a reply from an unknown node or naming another site or audit key — an
  ``identity-mismatch`` event, signed entry and console note.

It never changes what it lets through, so FedAvg stays FedAvg.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from fedmed.audit import AuditLog
from fedmed.errors import FedmedError
from fedmed.explain import outcome as explanations
from fedmed.outputs import RunDirectory
from fedmed.privacy.reply import FitReply
from fedmed.server import progress
from fedmed.server.identities import NodeIdentities
from fedmed.server.validation import check_update, screen_results
from fedmed.server.witness import WitnessRecord
from fedmed.tasks.base import fingerprint_arrays

FitResults = list[tuple[ClientProxy, FitRes]]
EvaluateResults = list[tuple[ClientProxy, EvaluateRes]]
Failures = list[tuple[ClientProxy, FitRes] | tuple[ClientProxy, EvaluateRes] | BaseException]
# Aggregation metrics of client-level DP (fedmed.server.strategies.ClientLevelDP), and
# their names in metrics.json. A site's own privacy summary is FitReply.privacy().
CLIENT_PRIVACY_METRICS = {
    "client-epsilon": "epsilon",
    "client-delta": "delta",
    "client-noise-multiplier": "noise_multiplier",
    "client-clip-norm": "clip_norm",
}


class FederationStopped(FedmedError):
    """The coordinator ended the run: too few sites accepted a round."""


def _site_of(proxy: ClientProxy, metrics: dict[str, Scalar]) -> str:
    return str(metrics.get("site", f"node-{proxy.cid}"))


def _reason(reply: FitReply) -> str:
    return "" if reply.reason is None else str(reply.reason)


# What Flower's legacy server makes of a node's exception (flwr.server.compat and the
# Simulation Engine): "... Message: <the node's exception message>'>). It originated ...",
# or, when the Ray backend wraps it in an Error's repr, "... Message: <message>\'>')" with
# the traceback's newlines written as a backslash and an n.
_NODE_MESSAGE = re.compile(r"Message: (.*?)\\?'>", re.DOTALL)


def _describe_failures(failures: Sequence[object]) -> list[str]:
    """One line per failed node: the first line of the node's own message where Flower's
    wrapping carries it (the traceback stays out of the run's records and the console)."""
    return [_describe_failure(failure) for failure in failures]


def _describe_failure(failure: object) -> str:
    if isinstance(failure, BaseException):
        text = str(failure)
        match = _NODE_MESSAGE.search(text)
        body = (match.group(1) if match else text).replace("\\n", "\n")
        lines = [line.strip() for line in body.splitlines()]
        first = next((line for line in lines if line), "")
        return first or type(failure).__name__
    if isinstance(failure, tuple) and len(failure) == 2:
        proxy, res = failure
        site = _site_of(proxy, dict(getattr(res, "metrics", {}) or {}))
        status = getattr(getattr(res, "status", None), "message", "") or "no reason given"
        return f"{site} replied with an error: {status}"
    return f"unexpected failure {failure!r}"


class RecordingStrategy(Strategy):
    """Admits, records and audits around ``inner`` (see the module docstring)."""

    def __init__(
        self,
        inner: Strategy,
        run_dir: RunDirectory,
        num_rounds: int,
        primary_metric: str,
        min_nodes: int = 1,
        audit: AuditLog | None = None,
        max_update_norm: float = 0.0,
        secure: bool = False,
        participation: Mapping[str, Mapping[str, int]] | None = None,
        evaluate_every: int = 1,
        witness: WitnessRecord | None = None,
        identities: NodeIdentities | None = None,
        explain: bool = True,
    ) -> None:
        self.inner = inner
        self.run_dir = run_dir
        self.num_rounds = num_rounds
        self.primary_metric = primary_metric
        self.min_nodes = min_nodes
        self.audit = audit
        self.max_update_norm = max_update_norm
        self.secure = secure
        self.evaluate_every = evaluate_every
        self.explain = explain  # ask the sites for explanations at the last evaluation
        self.witness = witness
        self.identities = identities
        self.latest_weights: list[np.ndarray] | None = None
        self.sent_weights: list[np.ndarray] | None = None
        self._asked_at: float | None = None  # when the current exchange's instructions left
        self.participation: dict[str, dict[str, int]] = {
            site: dict(counts) for site, counts in (participation or {}).items()
        }

    def __repr__(self) -> str:
        return f"RecordingStrategy({self.inner!r})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        parameters = self.inner.initialize_parameters(client_manager)
        if parameters is not None:
            self.latest_weights = parameters_to_ndarrays(parameters)
        return parameters

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self.sent_weights = parameters_to_ndarrays(parameters)  # updates are checked against it
        instructions = self.inner.configure_fit(server_round, parameters, client_manager)
        witnessed = self.witness.fit_config() if self.witness is not None else {}
        self._asked_at = time.monotonic()
        if not witnessed and self.identities is None:
            return instructions
        return [
            (proxy, FitIns(ins.parameters, {**ins.config, **witnessed, **self._told(proxy)}))
            for proxy, ins in instructions
        ]

    def _told(self, proxy: ClientProxy) -> dict[str, Scalar]:
        """What a deployed node is told about its own registered identity."""
        return self.identities.fit_config(proxy.cid) if self.identities is not None else {}

    def _site(self, proxy: ClientProxy, metrics: Mapping[str, Scalar]) -> str:
        """The site a reply is counted for: its node's registered site when deployed,
        else the site the simulated node names."""
        if self.identities is not None:
            identity = self.identities.of(proxy.cid)
            if identity is not None:
                return identity.site
        return _site_of(proxy, dict(metrics))

    def aggregate_fit(
        self, server_round: int, results: FitResults, failures: Failures
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        self._record_wait(server_round, "fit")
        results, impostors = self._identified(server_round, results)
        per_site = {
            self._site(proxy, res.metrics): {**res.metrics, "num-examples": res.num_examples}
            for proxy, res in results
        }
        replies = {
            self._site(proxy, res.metrics): FitReply.from_metrics(res.metrics)
            for proxy, res in results
        }
        accepted = [
            (proxy, res) for proxy, res in results if not FitReply.from_metrics(res.metrics).refused
        ]
        rejected: dict[str, str] = dict(impostors)
        accepted, contradicted = self._consistent_heads(accepted)
        rejected.update(contradicted)
        if not self.secure:
            accepted, screened, norms = self._screen(accepted)
            rejected.update(screened)
            for site, norm in norms.items():  # what honest sites send: how to pick the bound
                per_site[site]["update-norm"] = norm
        self.run_dir.record_fit(server_round, per_site)
        self._witness(server_round, {s: r for s, r in replies.items() if s not in contradicted})
        refused = {site: _reason(reply) for site, reply in replies.items() if reply.refused}
        self._record_participation(replies)
        for site, reason in sorted(refused.items()):
            self._record_refusal(server_round, site, reason, replies[site].audit_head())
        for site, reason in sorted(rejected.items()):
            if site not in impostors:  # already recorded as an identity mismatch
                self._record_rejection(server_round, site, reason)
        failed = self._record_failures(server_round, failures)
        left_out = {**refused, **rejected, **failed}
        if left_out and len(accepted) < self.min_nodes:
            self._stop(server_round, len(accepted), left_out)
        parameters, metrics = self.inner.aggregate_fit(server_round, accepted, failures)
        if parameters is not None and self.secure and not self._aggregate_ok(
            server_round, parameters, accepted
        ):
            parameters, metrics = None, {}
        if parameters is not None:
            self.latest_weights = parameters_to_ndarrays(parameters)
            self.run_dir.save_checkpoint(server_round, self.latest_weights)
            self._audit_round(server_round, accepted, sorted(refused), sorted(rejected), metrics)
        client_privacy = {
            name: metrics[key] for key, name in CLIENT_PRIVACY_METRICS.items() if key in metrics
        }
        if client_privacy:
            self.run_dir.record_client_privacy(client_privacy)
        return parameters, metrics

    def _identified(
        self, server_round: int, results: FitResults
    ) -> tuple[FitResults, dict[str, str]]:
        """The replies that come from their registered site, and the dropped ones by the
        label they are recorded under (every drop is an event, a signed entry, a note)."""
        if self.identities is None:
            return results, {}
        kept: FitResults = []
        dropped: dict[str, str] = {}
        for proxy, res in results:
            reason = self.identities.mismatch(proxy.cid, FitReply.from_metrics(res.metrics))
            if reason is None:
                kept.append((proxy, res))
                continue
            label = self._site(proxy, res.metrics) if self.identities.of(proxy.cid) else (
                f"node-{proxy.cid}"
            )
            dropped[label] = reason
            detail = {"site": label, "node": str(proxy.cid), "reason": reason}
            self.run_dir.record_event(server_round, {"kind": "identity-mismatch", **detail})
            if self.audit is not None:
                self.audit.append("identity-mismatch", {"round": server_round, **detail})
            progress.note(f"round {server_round}: the reply of {label} was dropped: {reason}")
        return kept, dropped

    def _consistent_heads(self, accepted: FitResults) -> tuple[FitResults, dict[str, str]]:
        """The accepted replies whose audit head the witness record can follow, and the
        rest with the reason (another audit key, or a log that went back)."""
        if self.witness is None:
            return accepted, {}
        kept: FitResults = []
        contradicted: dict[str, str] = {}
        for proxy, res in accepted:
            site = self._site(proxy, res.metrics)
            head = FitReply.from_metrics(res.metrics).audit_head()
            conflict = self.witness.conflict(site, head) if head is not None else None
            if conflict is None:
                kept.append((proxy, res))
            else:
                contradicted[site] = conflict
        return kept, contradicted

    def _witness(self, server_round: int, replies: Mapping[str, FitReply]) -> None:
        """Remember the log head of every site that signed something this round — a
        release (accepted or later rejected, it is signed either way) or a refusal — in
        the witness record. Heads that contradict the record are not witnessed."""
        if self.witness is None:
            return
        heads = {
            site: head
            for site, reply in replies.items()
            if (head := reply.audit_head()) is not None
            and self.witness.conflict(site, head) is None
        }
        self.witness.witness(heads, str(self.run_dir.document.get("run-id", "")), server_round)

    def _screen(
        self, results: FitResults
    ) -> tuple[FitResults, dict[str, str], dict[str, float]]:
        """The replies whose updates pass the checks, the rejected sites with reasons, and
        each site's update norm."""
        if self.sent_weights is None:
            return results, {}, {}
        screening = screen_results(
            results, self.sent_weights, self.max_update_norm, lambda p, r: self._site(p, r.metrics)
        )
        return screening.accepted, dict(screening.rejected), screening.norms

    def _aggregate_ok(
        self, server_round: int, parameters: Parameters, accepted: FitResults
    ) -> bool:
        """Under SecAgg+, check the securely aggregated update (no single site is visible).

        The mean of updates within the norm bound is within it too, so the bound keeps
        its meaning; a failing aggregate is recorded against every joined site.
        """
        if self.sent_weights is None:
            return True
        verdict = check_update(
            parameters_to_ndarrays(parameters), self.sent_weights, self.max_update_norm
        )
        if not verdict.ok:
            joined = ",".join(sorted(self._site(p, r.metrics) for p, r in accepted))
            self._record_rejection(server_round, f"aggregate of {joined}", verdict.reason)
        return verdict.ok

    def _record_rejection(self, server_round: int, site: str, reason: str) -> None:
        self.run_dir.record_event(
            server_round, {"kind": "rejected-update", "site": site, "reason": reason}
        )
        if self.audit is not None:
            self.audit.append(
                "rejected-update", {"round": server_round, "site": site, "reason": reason}
            )
        progress.note(f"round {server_round}: the update of {site} was rejected: {reason}")

    def _record_failures(self, server_round: int, failures: Failures) -> dict[str, str]:
        """Record each failed node (event, signed entry, one console line); the failures by a
        label for the stop message (the site is unknown when Flower kept only an error)."""
        failed: dict[str, str] = {}
        for number, reason in enumerate(_describe_failures(failures), start=1):
            self.run_dir.record_event(server_round, {"kind": "fit-failure", "detail": reason})
            if self.audit is not None:
                self.audit.append("fit-failure", {"round": server_round, "detail": reason})
            progress.note(f"round {server_round}: a node failed during training: {reason}")
            failed[f"failed node {number}"] = reason
        return failed

    def _record_participation(self, replies: Mapping[str, FitReply]) -> None:
        """Each site's privacy summary and its joined/refused round counts in metrics.json."""
        for site, reply in replies.items():
            counts = self.participation.setdefault(site, {"rounds_joined": 0, "rounds_refused": 0})
            counts["rounds_refused" if reply.refused else "rounds_joined"] += 1
            summary = dict(self.run_dir.document["privacy"].get(site, {}))
            summary.update(reply.privacy())
            self.run_dir.record_privacy(site, {**summary, **counts})

    def _record_refusal(
        self, server_round: int, site: str, reason: str, head: Mapping[str, Any] | None
    ) -> None:
        """A refusal: event, console note, and a signed entry with the head of the site's
        signed refusal (``site_head``), so ``fedmed audit verify`` can check the site's log
        still holds it."""
        self.run_dir.record_event(server_round, {"kind": "refusal", "site": site, "reason": reason})
        if self.audit is not None:
            payload: dict[str, Any] = {"round": server_round, "site": site, "reason": reason}
            if head is not None:
                payload["site_head"] = dict(head)
            self.audit.append("refusal", payload)
        progress.note(f"round {server_round}: {site} refused to train: {reason}")

    def _stop(self, server_round: int, accepted: int, left_out: Mapping[str, str]) -> None:
        reasons = "; ".join(f"{site}: {reason}" for site, reason in sorted(left_out.items()))
        message = (
            f"round {server_round}: only {accepted} site(s) accepted, fewer than min-nodes "
            f"{self.min_nodes}; the run stops. Refused, rejected or failed — {reasons}"
        )
        self.run_dir.record_stop(server_round, message)
        raise FederationStopped(message)

    def _audit_round(
        self,
        server_round: int,
        accepted: FitResults,
        refused: list[str],
        rejected: list[str],
        metrics: Mapping[str, Scalar],
    ) -> None:
        """Sign the round: model hash, who joined, and the log heads the sites reported."""
        if self.audit is None or self.latest_weights is None:
            return
        heads = {}
        for proxy, res in accepted:
            head = FitReply.from_metrics(res.metrics).audit_head()
            if head is not None:
                heads[self._site(proxy, res.metrics)] = head
        joined = sorted(self._site(proxy, res.metrics) for proxy, res in accepted)
        payload: dict[str, Any] = {
            "round": server_round,
            "model_sha256": fingerprint_arrays(self.latest_weights),
            "joined": joined,
            "refused": refused,
            "rejected": rejected,
            "site_heads": heads,
        }
        payload.update({k: v for k, v in metrics.items() if k.startswith("client-")})
        self.audit.append("round", payload)

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """The inner strategy's evaluation, every ``evaluate_every`` rounds and after the last."""
        due = server_round == self.num_rounds or (
            self.evaluate_every > 0 and server_round % self.evaluate_every == 0
        )
        if not due:
            return []
        run_facts: dict[str, Scalar] = {
            "run-id": str(self.run_dir.document.get("run-id", "")),
            "server-round": server_round,
            "num-rounds": self.num_rounds,
            explanations.FINAL_ROUND: server_round == self.num_rounds and self.explain,
        }
        instructions = [
            (proxy, EvaluateIns(ins.parameters, {**ins.config, **run_facts}))
            for proxy, ins in self.inner.configure_evaluate(
                server_round, parameters, client_manager
            )
        ]
        self._asked_at = time.monotonic()
        return instructions

    def _record_wait(self, server_round: int, kind: str) -> None:
        """The seconds from handing this exchange's instructions to Flower until its
        replies came back (Flower calls ``aggregate_*`` as soon as they have)."""
        if self._asked_at is not None:
            self.run_dir.record_exchange(server_round, kind, time.monotonic() - self._asked_at)
            self._asked_at = None

    def aggregate_evaluate(
        self, server_round: int, results: EvaluateResults, failures: Failures
    ) -> tuple[float | None, dict[str, Scalar]]:
        self._record_wait(server_round, "evaluate")
        per_site = {}
        for proxy, res in results:
            site = self._site(proxy, res.metrics)
            skipped = {"site", *explanations.REPLY_KEYS}
            per_site[site] = {k: float(v) for k, v in res.metrics.items() if k not in skipped}
            if server_round == self.num_rounds and self.explain:
                self._record_explanations(server_round, site, res.metrics)
        for reason in _describe_failures(failures):
            self.run_dir.record_event(server_round, {"kind": "evaluate-failure", "detail": reason})
        if per_site:
            mean = self.run_dir.record_evaluation(server_round, per_site)
            progress.round_line(server_round, self.num_rounds, self.primary_metric, per_site, mean)
        return self.inner.aggregate_evaluate(server_round, results, failures)

    def _record_explanations(
        self, server_round: int, site: str, metrics: Mapping[str, Scalar]
    ) -> None:
        """Where ``site`` holds its explanations; a failure is an event, an audit entry and a
        console note (the report shows it too)."""
        summary: dict[str, Any] = {"round": server_round}
        if explanations.COUNT not in metrics:
            summary["error"] = "the site's reply names no explanations (a node without them?)"
        else:
            summary["count"] = int(metrics[explanations.COUNT])
            summary["folder"] = str(metrics.get(explanations.FOLDER, ""))
            if explanations.ERROR in metrics:
                summary["error"] = str(metrics[explanations.ERROR])
        self.run_dir.record_explanations(site, summary)
        if "error" not in summary:
            return
        failure = {"site": site, "reason": summary["error"]}
        self.run_dir.record_event(server_round, {"kind": "explanation-failure", **failure})
        if self.audit is not None:
            self.audit.append("explanation-failure", {"round": server_round, **failure})
        progress.note(f"{site}: explanations of the final model failed: {summary['error']}")

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        return self.inner.evaluate(server_round, parameters)
