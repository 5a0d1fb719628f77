"""A run in which every site failed exits non-zero, one line per site, no ε spent (issue 14).

The one simulation of the validation tests (Ray start dominates its time). A learning rate
that is finite (so the coordinator lets it through) but beyond float32, so training raises
at every site — before, a Flower failure per node with a Ray traceback and a run that
exited 0 with an untrained "final" table. Now each node refuses (signed, no ledger entry,
no ε) and the coordinator stops the run instead of publishing an untrained model.
"""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from fedmed.cli import main
from fedmed.privacy.ledger import Ledger

SITES = ("cleveland", "hungary", "switzerland", "va")


def test_every_site_failing_exits_non_zero_with_one_line_per_site(
    repo: Path, tmp_path: Path
) -> None:
    homes = tmp_path / "homes"
    output = io.StringIO()
    with redirect_stdout(output), redirect_stderr(output):
        code = main(["run", str(repo / "examples" / "heart"), "--rounds", "1",
                     "--set", "lr=1e39", "--set", "explain=false", "--sites-home", str(homes),
                     "--out", str(tmp_path / "run")])  # fmt: skip
    text = output.getvalue()
    assert code == 2, text
    for site in SITES:
        lines = [line for line in text.splitlines() if f"{site} refused to train" in line]
        assert len(lines) == 1 and "training failed, nothing released" in lines[0], text
        assert Ledger.load(homes / site / "ledger.json").releases == []  # no ε spent
    assert "only 0 site(s) accepted" in text and "final global model" not in text
    assert "Traceback" not in text
