"""What ``fedmed audit verify`` trusts, and what ``--kit`` anchors (issue 13, hole 3).

One federation through the production entry points: ``fedmed provision`` issues the
keys, each site home is seeded from its kit as ``fedmed node start`` seeds it, the
coordinator home holds the kit's audit key as ``fedmed coordinator start`` copies it,
and ``fedmed run`` (Simulation Engine) trains two rounds in which hungary refuses
(its budget is too small). Then an operator with full control of a site home — its
private key included — tries what hole 3 reproduced:

- cut hungary's last signed refusal and re-sign the head: the home alone still
  verifies (a single log cannot show it), beside the coordinator's log it fails,
  because the coordinator witnessed the refusal's head;
- replace cleveland's log by one re-signed under a fresh key without its releases
  (ledger emptied to match): fails beside the coordinator's log (another key than the
  witnessed one), and against the kit alone (not the provisioned key).
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from fedmed.audit import AuditLog
from fedmed.audit.entries import canonical, head_message, head_path, pub_path
from fedmed.audit.keys import load_or_create_key
from fedmed.cli import main
from fedmed.deploy.coordinator import seed_coordinator_keys
from fedmed.deploy.kit import load_coordinator_kit, load_site_kit
from fedmed.deploy.node import seed_site_home
from fedmed.privacy.policy import Policy

REPO = Path(__file__).resolve().parents[1]
SITES = ["cleveland", "hungary", "switzerland"]


def cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(out):
        code = main(list(args))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("anchored")
    with pytest.MonkeyPatch.context() as patch:  # this module's own state folder
        patch.setenv("FEDMED_STATE", str(root / "state"))
        patch.setenv("FLWR_HOME", str(root / "state" / "flwr"))
        yield run_federation(root)


def run_federation(root: Path) -> dict[str, Path]:
    kits, homes, coordinator = root / "kits", root / "homes", root / "coordinator"
    code, text = cli("provision", "--out", str(kits), "--federation", "heart",
                     "--sites", ",".join(SITES))  # fmt: skip
    assert code == 0, text
    for site in SITES:
        assert seed_site_home(load_site_kit(kits / "sites" / site), homes / site)
    stingy = Policy(epsilon=0.01, allowed_tasks=("heart",)).to_toml()
    (homes / "hungary" / "policy.toml").write_text(stingy)
    seed_coordinator_keys(load_coordinator_kit(kits), coordinator / "keys")
    code, text = cli(
        "run", str(REPO / "examples" / "heart"), "--rounds", "2", "--out", str(root / "run"),
        "--sites-home", str(homes), "--set", f"sites={','.join(SITES)}",
        "--set", f"coordinator-home={coordinator}", "--set", "evaluate-every=0",
    )  # fmt: skip
    assert code == 0, text
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    assert metrics["privacy"]["hungary"]["rounds_refused"] == 2
    return {"kits": kits, "homes": homes, "run": root / "run", "root": root}


def copy_of(federation: dict[str, Path], name: str) -> tuple[Path, Path]:
    """A private copy of the homes and the run directory for one attack."""
    target = federation["root"] / name
    shutil.copytree(federation["homes"], target / "homes")
    shutil.copytree(federation["run"], target / "run")
    return target / "homes", target / "run"


def test_an_intact_federation_verifies_against_its_kit(federation: dict[str, Path]) -> None:
    code, text = cli("audit", "verify", str(federation["homes"]), str(federation["run"]),
                     "--kit", str(federation["kits"]))  # fmt: skip
    assert code == 0, text
    assert "TRUSTED ON FIRST USE" not in text and "NOT CHECKED" not in text
    code, text = cli("audit", "verify", str(federation["homes"]), str(federation["run"]))
    assert code == 0, text
    assert text.count("TRUSTED ON FIRST USE") == 4  # three sites and the coordinator
    code, text = cli("audit", "verify", str(federation["run"]))
    assert code == 0 and text.count("NOT CHECKED") == 3  # witnessed sites are named


def test_a_cut_refusal_fails_beside_the_coordinator_log(federation: dict[str, Path]) -> None:
    homes, run = copy_of(federation, "cut")
    log = homes / "hungary" / "audit.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    # The last refusal and what follows it (the site's explanations of the final model).
    cut = max(i for i, line in enumerate(lines) if json.loads(line)["kind"] == "refusal")
    log.write_text("".join(lines[:cut]))
    last = json.loads(lines[cut - 1])
    key = load_or_create_key(homes / "hungary" / "keys")  # the operator holds the key
    head = {"seq": last["seq"], "hash": last["hash"],
            "sig": key.sign(head_message(last["seq"], last["hash"])).hex()}  # fmt: skip
    head_path(log).write_text(canonical(head) + "\n")

    code, text = cli("audit", "verify", str(homes / "hungary"))
    assert code == 0, text  # alone, a re-signed shorter log looks whole
    code, text = cli("audit", "verify", str(homes), str(run))
    assert code == 1
    assert f"FAIL  {log}" in text and "entries were removed from the end" in text


def test_a_log_re_signed_under_a_fresh_key_fails(federation: dict[str, Path]) -> None:
    homes, run = copy_of(federation, "resigned")
    home = homes / "cleveland"
    forged = AuditLog.open(home / "forged.jsonl", home / "forged-keys", "site:cleveland")
    forged.append("policy-change", {"sha256": "0" * 64, "epsilon": 10.0, "delta": 1e-5})
    for suffix in ("", ".pub", ".head"):
        (home / f"forged.jsonl{suffix}").replace(home / f"audit.jsonl{suffix}")
    ledger = json.loads((home / "ledger.json").read_text())
    (home / "ledger.json").write_text(json.dumps({**ledger, "releases": []}))
    assert pub_path(home / "audit.jsonl").exists()

    code, text = cli("audit", "verify", str(home))
    assert code == 0, text  # alone, trusted on first use
    assert "TRUSTED ON FIRST USE  site:cleveland" in text
    code, text = cli("audit", "verify", str(homes), str(run))
    assert code == 1 and "the log was replaced or re-signed" in text
    code, text = cli("audit", "verify", str(home), "--kit", str(federation["kits"]))
    assert code == 1 and "the key was replaced" in text
