"""Bad-update checks (fedmed.server.validation): NaN/Inf, shapes, norm bound."""

from __future__ import annotations

import numpy as np
import pytest

from fedmed.server.validation import check_update, update_norm

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
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    from fedmed.server.validation import screen_results

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
