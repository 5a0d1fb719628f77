"""The node's de-identification admission stage (issue 13, holes 5–7), without Ray.

Through the node's own data loading (``fedmed.clients.hospital.site_for_context``, what
``fedmed node start`` and each simulated node run): the ``[deid]`` table of ``policy.toml``
configures the gate and is validated; the gate's state lives in the site home; every admitted
batch is a signed ``deid-batch`` entry (once per batch, before any training); DICOM headers are
de-identified and burnt-in files quarantined. The full federation over DICOM sites is
``tests/test_explanations.py::test_a_short_federation_leaves_explanations_at_the_sites_and_links_them``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tomli_w
import wfdb
from dicom_sites import files_holding, header_values, write_dicom_site
from flwr.common import Context, RecordDict
from pydicom.data import get_testdata_file

from fedmed.audit import verify_log
from fedmed.cli import main
from fedmed.clients.hospital import HospitalClient, _open_site, site_for_context
from fedmed.clients.site_home import SiteHome
from fedmed.config import FederationConfig
from fedmed.errors import ConfigError, DataError
from fedmed.privacy.policy import Policy, parse_policy
from fedmed.server.app import fit_config_fn
from fedmed.tasks import get_task
from fedmed.tasks.ecg import CLASS_NAMES
from fedmed.tasks.heart import COLUMNS, DATA_DIR, SITE_FILES
from fedmed.training.loop import get_weights

SITE = "academic"


def deployed_node(task: str, home: Path, data_dir: Path | None = None,
                  site: str = SITE, **settings: object) -> HospitalClient:
    """The node ``fedmed node start`` runs: its site, site home and data folder from the node
    config, its data loaded through the site home's admission stage; ``settings``: the
    federation's (e.g. ``train_size``)."""
    _open_site.cache_clear()  # a fresh node process
    node_config = {"site": site, "site-home": str(home)}
    if data_dir is not None:
        node_config["data-dir"] = str(data_dir)
    context = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(),
                      run_config={})
    config = FederationConfig(task=task, **settings)  # type: ignore[arg-type]
    return HospitalClient(*site_for_context(context, config))


def entries(home: Path, kind: str) -> list[dict]:
    log = [json.loads(line) for line in (home / "audit.jsonl").open()]
    return [e["payload"] for e in log if e["kind"] == kind]


def with_deid(home: Path, site: str, task: str, deid: dict) -> None:
    """A site home whose policy carries ``deid`` as its ``[deid]`` table."""
    SiteHome.open(home, site, task)
    (home / "policy.toml").write_text(Policy(allowed_tasks=(task,), deid=deid).to_toml())


def test_a_deid_table_in_the_policy_is_read_signed_and_trained_under(tmp_path: Path) -> None:
    """Before: every round refused ("unknown policy setting(s) deid")."""
    home = tmp_path / "home"
    deid = {"mode": "redact", "pattern_threshold": 0.5, "date_shift_max_days": 30,
            "site_patterns": [{"name": "lab accession", "type": "IDNUM",
                               "regex": "\\bLAB-\\d{6}\\b"}]}
    with_deid(home, "switzerland", "heart", deid)
    policy = SiteHome(home, "switzerland").policy()
    assert policy.deid == deid and policy.to_json()["deid"] == deid
    assert parse_policy(policy.to_toml()) == policy  # written and read back the same
    assert SiteHome(home, "switzerland").deid_config().mode == "redact"

    client = deployed_node("heart", home, site="switzerland")
    (table,) = entries(home, "deid-batch")  # the built-in table passed the gate too, signed
    assert table["input"] == "table" and table["items"]["released"] == 1 and table["mode"] == (
        "redact")
    fit_config = fit_config_fn(FederationConfig(num_server_rounds=2), get_task("heart"))
    weights = get_weights(get_task("heart").build_model())
    _, count, metrics = client.fit(weights, fit_config(1))
    assert metrics["refused"] == 0 and count > 0, metrics
    # A changed [deid] is a changed policy: the next round signs a new policy-change.
    with_deid(home, "switzerland", "heart", {**deid, "mode": "surrogate"})
    _, count, metrics = client.fit(weights, fit_config(2))
    assert metrics["refused"] == 0, metrics
    assert len(entries(home, "policy-change")) == 2
    assert verify_log(home / "audit.jsonl").ok


@pytest.mark.parametrize(
    ("deid", "match"),
    [
        ({"engine": "combined", "treshold": 0.4}, r"unknown deid setting\(s\) \['treshold'\]; "
                                                  r"allowed: \['date_shift_max_days', "),
        ({"pattern_threshold": "high"}, "deid.pattern_threshold must be a number, got 'high'"),
        ({"date_shift_max_days": 1.5}, "deid.date_shift_max_days must be an integer"),
        ({"mode": "blank"}, "deid.mode 'blank': expected one of"),
        ({"site_patterns": [{"name": "x", "type": "IDNUM", "regex": "("}]}, "bad regex"),
    ],
)
def test_a_bad_deid_table_stops_the_node_naming_file_and_key(
    tmp_path: Path, deid: dict, match: str
) -> None:
    home = tmp_path / "home"
    with_deid(home, "switzerland", "heart", deid)
    with pytest.raises(ConfigError, match=match) as excinfo:
        deployed_node("heart", home, site="switzerland")
    assert str(excinfo.value).startswith(f"{home / 'policy.toml'}: ")


def test_a_deid_table_that_is_not_a_table_is_refused(tmp_path: Path) -> None:
    text = Policy().to_toml() + tomli_w.dumps({"other": 1}).replace("other", "deid")
    with pytest.raises(Exception, match=r"policy.toml: \[deid\] must be a table"):
        parse_policy(text)


def test_dicom_sites_pass_the_gate_into_the_site_home_signed_once(tmp_path: Path) -> None:
    """Before: headers were never de-identified on a node, the burnt-in file was trained on,
    and no deid-batch entry was written."""
    data, home = tmp_path / "data", tmp_path / "home"
    write_dicom_site(data / SITE, SITE, n=10)
    client = deployed_node("imaging-cls", home, data)
    assert len(client.site.data.train) + len(client.site.data.test) == 9  # 1 quarantined
    (batch,) = entries(home, "deid-batch")
    assert batch["input"] == "dicom" and batch["dicom_profile"].startswith("PS3.15")
    assert batch["items"] == {"received": 10, "released": 9, "quarantined": 1}
    assert batch["phi_counts"]["pseudonymised"] == 18  # name and ID of every released file
    assert batch["phi_counts"]["dates_shifted"] >= 18 and batch["phi_counts"]["uid_remapped"]
    quarantined = batch["quarantine"][0]
    assert set(quarantined) == {"item", "reason"} and "BurnedInAnnotation=YES" in (
        quarantined["reason"])
    assert len(batch["input_digest"]) == 64 and len(batch["released_sha256"]) == 64
    assert (home / "deid" / "site_secret.key").is_file()  # the gate's state: in the home
    assert (home / "deid" / "reports" / f"{batch['batch']}.json").is_file()
    assert [p.name for p in (home / "quarantine").iterdir()] == [
        f"{batch['batch']}-0000.reason.json"]

    deployed_node("imaging-cls", home, data)  # another process, same data: not signed again
    assert len(entries(home, "deid-batch")) == 1
    with_deid(home, SITE, "imaging-cls", {"date_shift_max_days": 30})  # new settings: new batch
    deployed_node("imaging-cls", home, data)
    assert len(entries(home, "deid-batch")) == 2
    assert files_holding([home], header_values([SITE], n=10)) == []
    assert verify_log(home / "audit.jsonl").ok

    # fedmed audit report shows them per site (before: only a count of entries).
    out = tmp_path / "report" / "report.html"
    assert main(["audit", "report", str(home), "--out", str(out)]) == 0
    page, data = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    (site,) = data["sites"]
    assert [b["batch"] for b in site["deid_batches"]] == [
        e["batch"] for e in entries(home, "deid-batch")]
    assert site["deid_batches"][0]["versions"]["dicom_profile"].startswith("PS3.15")
    assert "De-identification batches (signed)" in page and "BurnedInAnnotation=YES" in page
    assert "10 / 9 / 1" in page and "date_shift_max_days" in page  # the [deid] in force
    assert files_holding([out.parent], header_values([SITE], n=10)) == []


def test_clinical_notes_are_admitted_in_the_site_home_and_signed(
    tmp_path: Path, isolated_state: Path
) -> None:
    """Before: the ICD gate kept its state in ``<state>/gate/icd/<site>`` and signed nothing."""
    data, home = tmp_path / "data", tmp_path / "home"
    notes = [("n1", "train", "Pt Zebulon Quixote, MRN 48213377, seen 03/04/2024 for HTN."),
             ("n2", "train", "Follow-up: hypertension and hyperlipidemia, on statin."),
             ("n3", "test", "Seen by Dr. Ada Brandt for type 2 diabetes.")]
    (data / SITE).mkdir(parents=True)
    (data / SITE / "notes.jsonl").write_text("".join(
        json.dumps({"id": i, "text": t, "codes": ["I10"], "split": s}) + "\n"
        for i, s, t in notes))
    client = deployed_node("icd", home, data)
    assert len(client.site.data.train) == 2 and len(client.site.data.test) == 1
    (batch,) = entries(home, "deid-batch")
    assert batch["input"] == "text" and batch["task"] == "icd"
    assert batch["items"] == {"received": 3, "released": 3, "quarantined": 0}
    assert batch["phi_counts_by_category"]["NAME"] >= 2 and batch["detector"]["tagger"]
    assert (home / "admitted" / "icd").is_dir() and not (isolated_state / "gate").exists()
    deployed_node("icd", home, data)  # the cached admission of another process: not re-signed
    assert len(entries(home, "deid-batch")) == 1
    assert files_holding([home / "admitted", home / "audit.jsonl"],
                         [b"Zebulon", b"Quixote", b"48213377"]) == []


def test_built_in_clinical_notes_are_signed_by_the_node_too(tmp_path: Path) -> None:
    """Before: a node serving a built-in ICD site passed its notes through the gate without
    the site's signer (the stage was dropped on the way), so no deid-batch entry recorded it."""
    home = tmp_path / "home"
    client = deployed_node("icd", home, train_size=6)
    assert len(client.site.data.train) == 6
    (batch,) = entries(home, "deid-batch")
    assert batch["task"] == "icd" and batch["items"]["received"] == 6 + 40
    assert (home / "admitted" / "icd").is_dir()


def hospital_export(folder: Path, extra: dict[str, list[str]]) -> Path:
    """Switzerland's UCI table as a hospital exports it: a header row and ``extra`` columns."""
    rows = (DATA_DIR / SITE_FILES["switzerland"]).read_text().splitlines()
    header = [*extra, *COLUMNS]
    lines = [",".join(header)] + [
        ",".join([*(values[i % len(values)] for values in extra.values()), row])
        for i, row in enumerate(rows)]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SITE_FILES["switzerland"]
    path.write_text("\n".join(lines) + "\n")
    return path


IDENTIFIERS = {
    "mrn": [f"MR{480000 + i}" for i in range(200)],
    "patient_name": [f"Quixote, Zebulon{chr(65 + i % 26)}" for i in range(200)],
    "contact": [f"Ada Brandt{chr(97 + i % 26)}" for i in range(200)],
}


def test_table_identifiers_are_dropped_or_hashed_and_undeclared_ones_refused(
    tmp_path: Path
) -> None:
    """Before: a table's identifier columns were never looked at (a table with extra columns
    was refused only for its column count, naming no column)."""
    data, home = tmp_path / "data", tmp_path / "home"
    path = hospital_export(data, IDENTIFIERS)
    with_deid(home, "switzerland", "heart", {"identifier_columns": {"mrn": "hash"}})
    with pytest.raises(DataError, match="column 'patient_name' looks like a patient identifier"
                       ) as excinfo:
        deployed_node("heart", home, data, "switzerland")
    assert str(excinfo.value).startswith(f"{path}: ")
    with_deid(home, "switzerland", "heart", {"identifier_columns": {
        "mrn": "hash", "patient_name": "drop"}})
    with pytest.raises(DataError, match="column 'contact' .* look like person names"):
        deployed_node("heart", home, data, "switzerland")  # a harmless name, names inside
    assert entries(home, "deid-batch") == []  # nothing admitted, nothing signed

    with_deid(home, "switzerland", "heart", {"identifier_columns": {
        "mrn": "hash", "patient_name": "drop", "contact": "drop"}})
    client = deployed_node("heart", home, data, "switzerland")
    assert len(client.site.data.train) + len(client.site.data.test) == 123
    (batch,) = entries(home, "deid-batch")
    assert batch["phi_counts"] == {"column_dropped": 2, "column_hashed": 1, "values_hashed": 123}
    assert batch["table_rules"].startswith("fedmed-table-screen")
    assert files_holding([home], [b"MR48000", b"Zebulon", b"Brandt"]) == []


def write_ecg_site(folder: Path) -> list[bytes]:
    """WFDB records whose header comments carry a name and MRN, and DICOM ECGs from pydicom's
    waveform_ecg.dcm with patient headers (one burnt-in); the identity values written."""
    folder.mkdir(parents=True)
    fs, rows = 100, ["file,label"]
    t = np.arange(6 * fs) / fs
    for i in range(8):
        signal = np.sin(2 * np.pi * (1 + i % 2) * t)[:, None]
        wfdb.wrsamp(f"w{i}", fs=fs, units=["mV"], sig_name=["II"], p_signal=signal,
                    fmt=["16"], write_dir=str(folder),
                    comments=[f"Patient: Zebulon Quixote{i}", f"MRN: 48213{i:03d}", "age: 63"])
        rows.append(f"w{i}.hea,{CLASS_NAMES[i % 2]}")
    for i in range(3):
        ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = f"Quixote^Ada{i}", f"QXE{i:05d}", (
            "19370217")
        if i == 2:
            ds.BurnedInAnnotation = "YES"
        ds.save_as(folder / f"d{i}.dcm")
        rows.append(f"d{i}.dcm,{CLASS_NAMES[i % 2]}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return [b"Zebulon", b"48213", b"Quixote^Ada", b"QXE0000", b"19370217"]


def test_ecg_headers_pass_the_gate_and_burnt_in_waveforms_are_quarantined(
    tmp_path: Path
) -> None:
    """Before: WFDB comments and DICOM ECG headers were read past any gate, unaudited."""
    data, home = tmp_path / "data", tmp_path / "home"
    identity = write_ecg_site(data / SITE)
    client = deployed_node("ecg", home, data)
    assert len(client.site.data.train) + len(client.site.data.test) == 10  # 1 quarantined
    (batch,) = entries(home, "deid-batch")
    assert batch["input"] == "ecg" and batch["wfdb_header"].startswith("fedmed-wfdb")
    assert batch["items"] == {"received": 11, "released": 10, "quarantined": 1}
    assert batch["phi_counts"]["wfdb_comments_removed"] == 24
    assert batch["phi_counts"]["pseudonymised"] == 4  # name and ID of the two released DICOMs
    assert "BurnedInAnnotation=YES" in batch["quarantine"][0]["reason"]
    deployed_node("ecg", home, data)
    assert len(entries(home, "deid-batch")) == 1
    assert files_holding([home], identity) == []
