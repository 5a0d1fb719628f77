"""Bad-update checks (fedmed.server.validation): NaN/Inf, shapes, norm bound — and how the
coordinator's strategy (fedmed.server.recording) leaves a rejected update out and audits it.
The same path against real processes: tests/test_deploy_loopback.py (poisoned update)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from fedmed.audit import AuditLog, verify_log
from fedmed.outputs import RunDirectory
from fedmed.server.recording import RecordingStrategy
from fedmed.server.validation import check_update, screen_results, update_norm

GLOBAL = [np.zeros((3, 4), np.float32), np.zeros(4, np.float32)]


def _update(scale: float = 0.1) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [w + scale * rng.standard_normal(w.shape).astype(w.dtype) for w in GLOBAL]


def test_an_honest_update_passes_and_reports_its_norm() -> None:
    update = _update()
    verdict = check_update(update, GLOBAL, max_update_norm=10.0)
    assert verdict.ok and verdict.reason == ""
    expected = np.sqrt(sum(float((u.astype(np.float64) ** 2).sum()) for u in update))
    assert verdict.norm == pytest.approx(expected)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected(bad: float) -> None:
    update = _update()
    update[1][2] = bad
    verdict = check_update(update, GLOBAL)
    assert not verdict.ok and "array 1 holds 1 NaN/Inf" in verdict.reason


def test_wrong_shapes_and_array_counts_are_rejected() -> None:
    update = _update()
    assert "shape (4, 3), expected (3, 4)" in check_update([update[0].T, update[1]], GLOBAL).reason
    assert "1 arrays, expected 2" in check_update(update[:1], GLOBAL).reason


def test_non_numeric_arrays_are_rejected() -> None:
    update = [GLOBAL[0], np.array(["a", "b", "c", "d"])]
    assert "dtype" in check_update(update, GLOBAL).reason


def test_norm_bound_applies_to_the_delta_not_the_weights() -> None:
    reference = [w + 100.0 for w in GLOBAL]  # large weights, small change
    update = [w + 0.01 for w in reference]
    assert check_update(update, reference, max_update_norm=1.0).ok
    scaled = [w + 10.0 for w in reference]  # a scaled (poisoned) update
    verdict = check_update(scaled, reference, max_update_norm=1.0)
    assert not verdict.ok and "exceeds the bound 1" in verdict.reason
    assert verdict.norm == pytest.approx(update_norm(scaled, reference))


def test_no_bound_means_only_structural_checks() -> None:
    assert check_update([w + 1e6 for w in GLOBAL], GLOBAL, max_update_norm=0.0).ok


def test_overflowing_norm_is_rejected() -> None:
    huge = [np.full(w.shape, 1e300, np.float64) for w in GLOBAL]
    assert not check_update(huge, [w.astype(np.float64) for w in GLOBAL]).ok


def test_screening_keeps_honest_replies_and_names_the_rejected_sites() -> None:
    def reply(site: str, weights: list[np.ndarray]) -> tuple[None, FitRes]:
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), 10, {"site": site})
        return None, res

    poisoned = [w + 1000.0 for w in GLOBAL]
    broken = _update()
    broken[0][0, 0] = np.nan
    results = [reply("a", _update()), reply("b", poisoned), reply("c", broken)]
    screening = screen_results(results, GLOBAL, 5.0, lambda _, res: str(res.metrics["site"]))
    assert [res.metrics["site"] for _, res in screening.accepted] == ["a"]
    assert [site for site, _ in screening.rejected] == ["b", "c"]
    assert "exceeds the bound 5" in screening.rejected[0][1]
    assert "NaN/Inf" in screening.rejected[1][1]
    assert set(screening.norms) == {"a", "b"}  # c's norm is not a number


class Site(ClientProxy):
    """A node as the coordinator's strategy sees it; never called in these tests."""

    def get_properties(self, ins, timeout, group_id):  # noqa: ANN001, ANN201
        raise NotImplementedError

    def get_parameters(self, ins, timeout, group_id):  # noqa: ANN001, ANN201
        raise NotImplementedError

    def fit(self, ins, timeout, group_id):  # noqa: ANN001, ANN201
        raise NotImplementedError

    def evaluate(self, ins, timeout, group_id):  # noqa: ANN001, ANN201
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):  # noqa: ANN001, ANN201
        raise NotImplementedError


def configured_recorder(
    tmp_path: Path, names: list[str], weights: list[np.ndarray], **options: object
) -> tuple[RecordingStrategy, list[tuple[ClientProxy, FitIns]]]:
    """A coordinator strategy over FedAvg with one registered proxy per name in ``names``,
    its audit log and run directory under ``tmp_path``, after round 1's ``configure_fit``
    (returned: what it told each proxy) — the state in which replies are screened.
    ``options`` go to :class:`RecordingStrategy` (validation, identities, witness)."""
    manager = SimpleClientManager()
    for name in names:
        manager.register(Site(name))
    recorder = RecordingStrategy(
        FedAvg(min_fit_clients=len(names), min_available_clients=len(names),
               initial_parameters=ndarrays_to_parameters(weights)),
        RunDirectory(tmp_path / "run", {"run-id": "r"}),
        num_rounds=1, primary_metric="accuracy", min_nodes=2,
        audit=AuditLog.open(tmp_path / "run" / "audit.jsonl", tmp_path / "keys", "coordinator"),
        **options,  # type: ignore[arg-type]
    )  # fmt: skip
    sent = recorder.initialize_parameters(manager)
    assert sent is not None
    return recorder, recorder.configure_fit(1, sent, manager)


def _recorder(tmp_path: Path, secure: bool) -> tuple[RecordingStrategy, list[ClientProxy]]:
    recorder, told = configured_recorder(
        tmp_path, ["a", "b", "c"], GLOBAL, max_update_norm=5.0, secure=secure
    )
    return recorder, sorted((proxy for proxy, _ in told), key=lambda proxy: proxy.cid)


def _fit(proxy: Site, weights: list[np.ndarray]) -> tuple[Site, FitRes]:
    metrics = {"site": proxy.cid, "refused": 0}
    return proxy, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), 10, metrics)


def test_the_coordinator_leaves_a_poisoned_update_out_and_audits_it(tmp_path: Path) -> None:
    recorder, (a, b, c) = _recorder(tmp_path, secure=False)
    honest = _update(0.01)
    results = [_fit(a, honest), _fit(b, honest), _fit(c, [w + 1000.0 for w in GLOBAL])]
    parameters, _ = recorder.aggregate_fit(1, results, [])
    assert parameters is not None  # the round went on with a and b
    for new, old in zip(parameters_to_ndarrays(parameters), honest, strict=True):
        np.testing.assert_allclose(new, old, rtol=1e-6)
    entries = [json.loads(line) for line in (tmp_path / "run" / "audit.jsonl").open()]
    assert verify_log(tmp_path / "run" / "audit.jsonl").ok
    (rejected,) = [e["payload"] for e in entries if e["kind"] == "rejected-update"]
    assert rejected["site"] == "c" and "exceeds the bound 5" in rejected["reason"]
    (round_entry,) = [e["payload"] for e in entries if e["kind"] == "round"]
    assert (round_entry["joined"], round_entry["rejected"]) == (["a", "b"], ["c"])
    fit = recorder.run_dir.document["rounds"][0]["fit"]
    assert fit["a"]["update-norm"] < 5 < fit["c"]["update-norm"]


def test_under_secagg_a_bad_aggregate_keeps_the_previous_model(tmp_path: Path) -> None:
    """SecAgg+ hands every reply the same (aggregated) parameters: only the sum is checked."""
    recorder, proxies = _recorder(tmp_path, secure=True)
    aggregate = [w + 1000.0 for w in GLOBAL]
    parameters, _ = recorder.aggregate_fit(1, [_fit(p, aggregate) for p in proxies], [])
    assert parameters is None
    events = recorder.run_dir.document["rounds"][0]["events"]
    assert [(e["kind"], e["site"]) for e in events] == [("rejected-update", "aggregate of a,b,c")]
    assert not (tmp_path / "run" / "checkpoints" / "round-0001.npz").exists()
