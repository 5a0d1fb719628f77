"""``fedmed deid scrub --site-home`` signs its batch into the home's audit log (issue 13).

Through ``fedmed.cli.main``: two notes scrubbed into a home made by ``fedmed site init``
leave one ``deid-batch`` entry whose counts are the run's, the log still verifies, and no
PHI of the notes is in it; a folder without a site audit log is told its batch was not
signed.
"""

from __future__ import annotations

import json

from fedmed.cli import main
from fedmed.deid.sitekey import SECRET_RELPATH

NOTES = {
    "a.txt": "Patient John Carter, MRN 4455123, seen 03/04/2021 by Dr. Maria Lopez. "
             "Tel 617-555-0143.\n",
    "b.txt": "Mrs. Ellen Ward (SSN 078-05-1120) came back on 05/06/2021; e-mail "
             "ellen.ward@quackenbush-mail.org.\n",
}
PHI = ("John", "Carter", "4455123", "03/04/2021", "Maria Lopez", "617-555-0143", "Ellen",
       "Ward", "078-05-1120", "05/06/2021", "quackenbush")


def notes(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    for name, text in NOTES.items():
        (folder / name).write_text(text)
    return folder


def test_scrub_into_a_site_home_signs_one_deid_batch(tmp_path, capsys) -> None:
    home = tmp_path / "home"
    assert main(["site", "init", "--site-home", str(home), "--site", "cleveland",
                 "--task", "icd"]) == 0
    secret = home / SECRET_RELPATH  # fixed: the surrogates are the same at every run
    secret.parent.mkdir()
    secret.write_text(bytes(range(32)).hex())
    secret.chmod(0o600)
    capsys.readouterr()

    out = tmp_path / "out"
    assert main(["deid", "scrub", str(notes(tmp_path)), str(out),
                 "--site-home", str(home)]) == 0
    assert "signed into the audit log" in capsys.readouterr().err
    assert main(["audit", "verify", str(home)]) == 0

    log = (home / "audit.jsonl").read_text()
    batches = [e for e in map(json.loads, log.splitlines()) if e["kind"] == "deid-batch"]
    assert len(batches) == 1
    signed = batches[0]["payload"]
    manifest = json.loads((tmp_path / "out.manifest.json").read_text())
    assert signed["batch"] == manifest["batch"] and manifest["signed"] is True
    assert signed["items"] == {"received": 2, "released": 2, "quarantined": 0}
    assert manifest["files"]["scrubbed"] == 2 and manifest["items_quarantined"] == 0
    assert signed["input"] == "text" and signed["task"] == "deid scrub"
    assert signed["phi_counts"]["PATIENT"] >= 2 and signed["phi_counts"]["DATE"] == 2
    report = home / "deid" / "reports" / f"{signed['batch']}.json"
    assert json.loads(report.read_text()) == signed
    assert not [p for p in PHI if p in log]
    assert not [p for p in PHI if any(p in f.read_text() for f in out.iterdir())]


def test_scrub_without_a_site_audit_log_says_it_did_not_sign(tmp_path, capsys) -> None:
    folder = tmp_path / "plain"
    assert main(["deid", "scrub", str(notes(tmp_path)), str(tmp_path / "out"),
                 "--site-home", str(folder)]) in (0, 2)
    err = capsys.readouterr().err
    assert "NOT signed" in err and "holds no site audit log" in err
    assert json.loads((tmp_path / "out.manifest.json").read_text())["signed"] is False
    assert not (folder / "audit.jsonl").exists()
