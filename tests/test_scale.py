"""Many sites and client sampling: the rhDNase trial's real institutions as sites, and a
sampled site's ledger composing only the rounds it trained (issue 17 item 3).

The federation test goes through ``fedmed run``'s real path (CLI, preflight, Simulation
Engine, the coordinator's recording, each site's private round): 6 institutions, half of
them sampled per round (``fraction-train = 0.5``), 2 rounds. Flower samples at random, so
the test checks what must hold whatever it picks: 3 sites a round, and every site's ledger
and signed audit log hold a release for exactly the rounds the coordinator recorded it in.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedmed.cli import main
from fedmed.privacy.ledger import Ledger
from fedmed.tasks import get_task
from fedmed.tasks.rhdnase import DATA_DIR, TABLE_FILE, patients, read_table, split_sites

SITES = [f"inst0{i}" for i in range(1, 7)]


def test_the_sites_are_the_trials_51_institutions() -> None:
    per_patient = patients(read_table(DATA_DIR / TABLE_FILE))
    assert len(per_patient) == 647
    pack = get_task("rhdnase")
    assert pack.site_names() == [f"inst{i:02d}" for i in range(1, 52)]
    assert sorted(per_patient["inst"].unique()) == list(range(1, 52))
    loaded = [pack.load_site(site, None, 0) for site in ("inst03", "inst20")]
    # inst03 is the smallest institution (4 patients), inst20 the largest (24).
    assert [len(d.train) + len(d.test) for d in loaded] == [4, 24]


def test_the_split_partition_has_100_sites_each_of_one_institution() -> None:
    per_patient = patients(read_table(DATA_DIR / TABLE_FILE))
    sites = split_sites(per_patient)
    assert len(sites) == 100
    assert list(sites) == get_task("rhdnase-split").site_names()
    every = np.concatenate(list(sites.values()))
    assert len(every) == len(set(every)) == 647  # a partition of the patients
    for site, ids in sites.items():
        assert per_patient.loc[ids, "inst"].nunique() == 1, site
        assert int(site[4:6]) == int(per_patient.loc[ids[0], "inst"])
    halves = [len(ids) for site, ids in sites.items() if site.endswith(("a", "b"))]
    assert len(halves) == 98 and min(halves) >= 4


@pytest.fixture(scope="module")
def sampled_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    state = tmp_path_factory.mktemp("scale-state")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEDMED_STATE", str(state))
        patch.setenv("FLWR_HOME", str(state / "flwr"))
        sites_home, out = state / "sites", state / "run"
        code = main([
            "run", str(Path(__file__).resolve().parents[1] / "examples" / "rhdnase"),
            "--rounds", "2", "--sites-home", str(sites_home), "--out", str(out),
            "--set", f"sites={','.join(SITES)}", "--set", "fraction-train=0.5",
            "--set", "evaluate-every=0", "--set", "explain=false",
        ])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    return {"metrics": metrics, "sites_home": sites_home}


def _trained_rounds(metrics: dict) -> dict[str, list[int]]:
    trained: dict[str, list[int]] = {site: [] for site in SITES}
    for entry in metrics["rounds"]:
        for site, fit in entry.get("fit", {}).items():
            if not fit.get("refused"):
                trained[site].append(int(entry["round"]))
    return trained


def test_each_round_trains_the_sampled_half(sampled_run: dict) -> None:
    rounds = sampled_run["metrics"]["rounds"]
    assert [len(entry["fit"]) for entry in rounds] == [3, 3]
    assert all(set(entry["fit"]) <= set(SITES) for entry in rounds)


def test_a_ledger_composes_only_the_rounds_its_site_trained(sampled_run: dict) -> None:
    metrics = sampled_run["metrics"]
    run_id = metrics["run-id"]
    trained = _trained_rounds(metrics)
    epsilons: dict[int, set[float]] = {}
    for site in SITES:
        home = sampled_run["sites_home"] / site
        ledger = Ledger.load(home / "ledger.json")
        released = [entry.round for entry in ledger.releases if entry.run == run_id]
        assert released == trained[site], site  # not sampled: no release for that round
        signed = [
            json.loads(line)["payload"]["round"]
            for line in (home / "audit.jsonl").read_text(encoding="utf-8").splitlines()
            if json.loads(line)["kind"] == "dp-release"
        ]
        assert signed == trained[site], site
        summary = metrics["privacy"].get(site)
        if not trained[site]:
            assert summary is None  # never sampled: nothing to report, nothing spent
            continue
        assert summary["rounds_joined"] == len(trained[site])
        assert summary["epsilon"] == pytest.approx(ledger.releases[-1].epsilon_after)
        epsilons.setdefault(len(trained[site]), set()).add(round(summary["epsilon"], 9))
    # Same data sizes aside, ε grows with the number of releases composed: a site sampled
    # once spent less than one sampled twice (each of these sites has ≤ 16 training rows,
    # so the sample rate is 1 and one release's ε is the same at every site).
    if 1 in epsilons and 2 in epsilons:
        assert max(epsilons[1]) < min(epsilons[2])
