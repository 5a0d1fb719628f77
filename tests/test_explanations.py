"""Explanations of the final model: each pack's hook, the node writing them into its site home
(never sending them), the coordinator recording where they are, and the run report linking
them — down to one short simulated federation."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from dicom_sites import files_holding, header_values, write_dicom_site
from flwr.common import Code, EvaluateRes, Status, ndarrays_to_parameters
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from fedmed.audit import AuditLog, verify_log
from fedmed.cli import main
from fedmed.clients.explanations import explain_final_round, write_explanations
from fedmed.clients.node import HospitalSite
from fedmed.clients.site_home import SiteHome
from fedmed.explain.base import Explainer
from fedmed.explain.outcome import (
    COUNT,
    ERROR,
    FINAL_ROUND,
    FOLDER,
    explanation_folder,
)
from fedmed.outputs import RunDirectory
from fedmed.server.recording import RecordingStrategy
from fedmed.server.run_report import write_markdown_report
from fedmed.tasks import SiteData, TaskPack, get_task, task_names
from fedmed.tasks.icd import IcdTask
from fedmed.training.loop import get_weights

EXPLAINED = {  # pack → the file names its hook writes for a site
    "imaging-cls": "gradcam-{site}-{i}.png",
    "imaging-seg": "segmentation-{site}-{i}.png",
    "ecg": "saliency-{site}-{i}.png",
    "ecg-lstm": "saliency-{site}-{i}.png",
    "ecg-rhythm": "saliency-{site}-{i}.png",
}
PNG = b"\x89PNG\r\n\x1a\n"


def _site(name: str) -> HospitalSite:
    pack = get_task(name)
    site = pack.site_names()[0]
    data = pack.load_site(site, None, 0)
    return HospitalSite(name=site, pack=pack, data=data, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def icd_site(
    tmp_path_factory: pytest.TempPathFactory, seeded_gate_home: Callable[[Path], Path]
) -> HospitalSite:
    """One icd site through its de-identification gate (slow: once per module)."""
    pack = get_task("icd")
    assert isinstance(pack, IcdTask)
    site = pack.site_names()[0]
    data = pack.load_builtin_site(site, seeded_gate_home(tmp_path_factory.mktemp("icd-gate")))
    return HospitalSite(name=site, pack=pack, data=data, device=torch.device("cpu"))


# --- each pack's hook ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPLAINED))
def test_image_and_signal_packs_write_pngs_and_leave_the_model_alone(
    name: str, tmp_path: Path
) -> None:
    site = _site(name)
    torch.manual_seed(0)
    model = site.pack.build_model()
    before = [w.copy() for w in get_weights(model)]
    paths = site.pack.explain(model, site.data, tmp_path)
    expected = [EXPLAINED[name].format(site=site.name, i=i) for i in range(4)]
    assert [p.name for p in paths] == expected and site.pack.explanation_kind
    for path in paths:
        assert path.parent == tmp_path and path.read_bytes()[:8] == PNG
        assert path.stat().st_size > 2000
    for new, old in zip(get_weights(model), before, strict=True):
        np.testing.assert_array_equal(new, old)


def test_icd_writes_evidence_json_and_markdown(icd_site: HospitalSite, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = icd_site.pack.build_model()
    paths = icd_site.pack.explain(model, icd_site.data, tmp_path)
    assert [p.name for p in paths] == [f"evidence-{icd_site.name}.json",
                                       f"evidence-{icd_site.name}.md"]
    records = json.loads(paths[0].read_text())
    assert len(records) == icd_site.pack.explain_examples
    assert all({"note", "true_codes", "predicted"} <= set(r) for r in records)
    markdown = paths[1].read_text()
    assert markdown.startswith(f"# ICD coding evidence: {icd_site.name}")
    assert all(f"## Note {r['note']}" in markdown for r in records)


def test_evidence_markdown_quotes_spans_safely(tmp_path: Path) -> None:
    from fedmed.explain.text_evidence import write_evidence

    records = [{"note": "n-1", "true_codes": ["J18"], "predicted": [
        {"code": "J18", "description": "pneumonia", "probability": 0.9,
         "spans": [{"start": 0, "end": 9, "text": "a `b`\n| c", "weight": 0.5}]}]}]
    data, markdown = write_evidence(records, tmp_path, "x")
    assert (data.name, markdown.name) == ("evidence-x.json", "evidence-x.md")
    assert json.loads(data.read_text()) == records
    text = markdown.read_text()
    assert "`a 'b' | c` (attention 0.50)" in text and "**J18** pneumonia (p = 0.90)" in text


def test_phi_review_sorts_gold_spans_into_found_and_missed_and_marks_the_note() -> None:
    from fedmed.deid.phi import Document, Span
    from fedmed.explain.text_review import review_note

    text = "Pt John Smith, MRN 12345, seen 3/4."
    doc = Document("n-1", text, [Span(3, 13, "PATIENT"), Span(19, 24, "MEDICALRECORD"),
                                 Span(31, 34, "DATE")])
    predicted = [Span(3, 8, "PATIENT", 0.9), Span(8, 13, "PATIENT", 0.7),  # John + Smith
                 Span(19, 22, "MEDICALRECORD", 0.6),  # "123": "45" left uncovered → a leak
                 Span(0, 2, "DOCTOR", 0.55)]  # "Pt" is not PHI
    review = review_note(doc, predicted)
    assert [(f["type"], f["text"], f["probability"]) for f in review["found"]] == [
        ("PATIENT", "John Smith", 0.9)]
    assert [(m["type"], m["text"]) for m in review["missed"]] == [
        ("MEDICALRECORD", "12345"), ("DATE", "3/4")]
    assert review["missed"][1].get("probability") is None  # nothing touched it
    assert [(e["type"], e["text"]) for e in review["extra"]] == [("DOCTOR", "Pt")]
    assert review["marked"] == ("[NOT PHI? DOCTOR p=0.55: Pt] [PATIENT: John Smith], "
                                "MRN [MISSED MEDICALRECORD: 12345], seen [MISSED DATE: 3/4].")


def test_deid_ner_writes_a_phi_review_of_its_own_test_notes(tmp_path: Path) -> None:
    site = _site("deid-ner")
    torch.manual_seed(0)
    paths = site.pack.explain(site.pack.build_model(), site.data, tmp_path)
    assert [p.name for p in paths] == [f"phi-review-{site.name}.json",
                                       f"phi-review-{site.name}.md"]
    records = json.loads(paths[0].read_text())
    documents = site.data.test.documents[: site.pack.explain_examples]
    assert [r["note"] for r in records] == [d.doc_id for d in documents]
    for record, doc in zip(records, documents, strict=True):
        assert len(record["found"]) + len(record["missed"]) == len(doc.spans)
        for item in record["found"] + record["missed"] + record["extra"]:
            assert doc.text[item["start"]:item["end"]] == item["text"]
    markdown = paths[1].read_text()
    assert markdown.startswith(f"# PHI review: {site.name}")
    assert "stays in the site home" in markdown


def test_packs_declare_their_explainer_and_its_kind_is_the_report_text() -> None:
    explaining = {name for name in EXPLAINED} | {
        "icd", "icd-minilm", "icd-sentences", "deid-ner", "heart", "heart-flamby",
        "imaging-retrieval"}
    for name in task_names():
        pack = get_task(name)
        if name in explaining:
            assert isinstance(pack.explainer, Explainer) and pack.explainer.kind
            assert pack.explanation_kind == pack.explainer.kind
        else:
            assert pack.explainer is None and pack.explanation_kind == ""


def test_explainers_import_no_task_pack_node_or_coordinator() -> None:
    """The layering rule (fedmed.tasks may import fedmed.explain, never the reverse), checked
    on every import statement, those inside functions included."""
    import ast

    import fedmed.explain

    banned = ("fedmed.tasks", "fedmed.clients", "fedmed.server", "clients", "server")
    for path in Path(fedmed.explain.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(banned), f"{path.name} imports {name}"


def test_a_pack_without_an_explainer_writes_nothing(tmp_path: Path) -> None:
    pack = get_task("ecg-denoise")
    assert pack.explanation_kind == ""
    assert pack.explain(pack.build_model(), None, tmp_path) == []  # type: ignore[arg-type]


# --- failures are reported, never silent, never fatal ---------------------------------------


class _BrokenExplainer(Explainer):
    """Raises (or, with ``silent``, claims to explain but writes nothing)."""

    kind = "pictures"

    def __init__(self, silent: bool) -> None:
        self.silent = silent

    def explain(self, model, examples, site, out_dir, n=4):  # noqa: ANN001, ANN201
        if self.silent:
            return []
        raise RuntimeError("layer 'features.9' not found")


class _Broken(TaskPack):
    """A pack whose declared explainer raises (or, with ``silent``, writes nothing)."""

    name = "broken"
    metrics = ("accuracy",)
    primary_metric = "accuracy"
    default_sites = ("a",)

    def __init__(self, silent: bool = False) -> None:
        self.explainer = _BrokenExplainer(silent)  # type: ignore[misc]

    def load_site(self, site, data_dir, seed):  # noqa: ANN001, ANN201
        raise NotImplementedError

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Linear(2, 1)

    def loss(self, outputs, targets):  # noqa: ANN001, ANN201
        raise NotImplementedError

    def evaluate(self, model, dataset, device):  # noqa: ANN001, ANN201
        raise NotImplementedError


def test_a_failing_explainer_is_logged_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = SiteData("a", train=None, val=None, test=None, fingerprint="")  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="fedmed.explain.outcome"):
        outcome = write_explanations(_Broken(), torch.nn.Linear(2, 1), data, tmp_path)
    assert outcome.files == () and "RuntimeError: layer 'features.9' not found" in outcome.error
    assert "explainer failed" in caplog.text and "Traceback" in caplog.text
    assert outcome.to_metrics() == {COUNT: 0, FOLDER: str(tmp_path), ERROR: outcome.error}
    silent = write_explanations(_Broken(silent=True), torch.nn.Linear(2, 1), data, tmp_path)
    assert "wrote no files" in silent.error


def test_a_run_id_cannot_point_outside_the_site_home(tmp_path: Path) -> None:
    plain = explanation_folder(tmp_path, "imaging-cls-fedavg-20250101-120000-ab12cd34")
    assert plain == tmp_path / "runs" / "imaging-cls-fedavg-20250101-120000-ab12cd34" / (
        "explanations")
    for hostile in ("../../etc", "/abs/path", ".hidden", "a/b", "x" * 300):
        folder = explanation_folder(tmp_path, hostile)
        assert folder.parent.parent == tmp_path / "runs" and folder.parent.name[0].isalnum()
    assert explanation_folder(tmp_path, "a/b") != explanation_folder(tmp_path, "a_b")
    with pytest.raises(ValueError, match="run id"):
        explanation_folder(tmp_path, "")


# --- the node: only on the last round, only into its site home, audited ---------------------


def test_the_node_explains_the_last_round_into_its_site_home(tmp_path: Path) -> None:
    site = _site("imaging-cls")
    weights = get_weights(site.pack.build_model())
    home = tmp_path / "home"
    config = {"run-id": "run-1", "server-round": 3, FINAL_ROUND: True}
    assert explain_final_round(site, home, weights, {**config, FINAL_ROUND: False}) == {}
    missing = explain_final_round(site, home, weights, config)
    assert missing[COUNT] == 0 and "no site home" in str(missing[ERROR])
    assert not home.exists()  # never half-created: the first training round creates it whole
    SiteHome.open(home, site.name, site.pack.name)
    reply = explain_final_round(site, home, weights, config)
    folder = home / "runs" / "run-1" / "explanations"
    assert reply == {COUNT: 4, FOLDER: str(folder)}
    assert sorted(p.name for p in folder.iterdir()) == [f"gradcam-{site.name}-{i}.png"
                                                       for i in range(4)]
    assert verify_log(home / "audit.jsonl").ok
    entries = [json.loads(line) for line in (home / "audit.jsonl").open()]
    (entry,) = [e["payload"] for e in entries if e["kind"] == "explanations"]
    assert entry["run"] == "run-1" and entry["round"] == 3 and len(entry["files"]) == 4
    wrong = explain_final_round(site, home, weights[:-1], config)  # weights of another model
    assert wrong[COUNT] == 0 and wrong[ERROR]


def test_a_pack_without_explainer_reports_none_and_writes_nothing(tmp_path: Path) -> None:
    site = _site("ecg-denoise")
    config = {"run-id": "r", FINAL_ROUND: True}
    assert explain_final_round(site, tmp_path, [], config) == {COUNT: 0}
    assert list(tmp_path.iterdir()) == []


# --- the coordinator: config out, metadata in, report ---------------------------------------


class _Node(ClientProxy):
    """A node as the coordinator's strategy sees it; never called."""

    get_properties = get_parameters = fit = evaluate = reconnect = None  # type: ignore[assignment]


def _evaluated(proxy: ClientProxy, metrics: dict) -> tuple[ClientProxy, EvaluateRes]:
    return proxy, EvaluateRes(Status(Code.OK, ""), 0.2, 10, {"site": proxy.cid, **metrics})


def test_the_coordinator_asks_on_the_last_round_and_keeps_metadata_out_of_scores(
    tmp_path: Path,
) -> None:
    manager = SimpleClientManager()
    nodes = [_Node(name) for name in ("a", "b", "c")]
    for node in nodes:
        manager.register(node)
    run_dir = RunDirectory(tmp_path / "run", {"run-id": "r-9", "sites": ["a", "b", "c"]})
    audit = AuditLog.open(tmp_path / "run" / "audit.jsonl", tmp_path / "keys", "coordinator")
    recorder = RecordingStrategy(FedAvg(min_available_clients=3), run_dir, num_rounds=2,
                                 primary_metric="auc", audit=audit)
    parameters = ndarrays_to_parameters([np.zeros(2, np.float32)])
    first = recorder.configure_evaluate(1, parameters, manager)
    last = recorder.configure_evaluate(2, parameters, manager)
    assert {ins.config[FINAL_ROUND] for _, ins in first} == {False}
    assert all(ins.config[FINAL_ROUND] and ins.config["run-id"] == "r-9"
               and ins.config["num-rounds"] == 2 for _, ins in last)
    a, b, c = nodes
    recorder.aggregate_evaluate(2, [
        _evaluated(a, {"auc": 0.8, COUNT: 4, FOLDER: "/site-a/runs/r-9/explanations"}),
        _evaluated(b, {"auc": 0.7, COUNT: 0, FOLDER: "/site-b/x", ERROR: "RuntimeError: boom"}),
        _evaluated(c, {"auc": 0.6}),
    ], [])
    document = run_dir.document
    assert document["final"]["per_site"]["a"] == {"auc": 0.8}
    assert document["explanations"]["a"] == {
        "round": 2, "count": 4, "folder": "/site-a/runs/r-9/explanations"}
    assert document["explanations"]["b"]["error"] == "RuntimeError: boom"
    assert "names no explanations" in document["explanations"]["c"]["error"]
    events = document["rounds"][0]["events"]
    assert [(e["kind"], e["site"]) for e in events] == [
        ("explanation-failure", "b"), ("explanation-failure", "c")]
    entries = [json.loads(line) for line in (tmp_path / "run" / "audit.jsonl").open()]
    assert [e["payload"]["site"] for e in entries if e["kind"] == "explanation-failure"] == [
        "b", "c"]


def test_the_report_links_local_folders_and_names_remote_ones(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "r"
    (run_dir / "plots").mkdir(parents=True)
    (run_dir / "plots" / "auc_per_round.png").write_bytes(PNG)
    local = tmp_path / "sites" / "a b" / "runs" / "r" / "explanations"
    local.mkdir(parents=True)
    (local / "gradcam-a-0.png").write_bytes(PNG)
    document = {
        "run-id": "r", "federation": "f", "task": "imaging-cls", "strategy": "fedavg",
        "sites": ["a", "b", "c", "d"], "primary-metric": "auc",
        "config": {"num-server-rounds": 1},
        "rounds": [{"round": 1, "events": [
            {"kind": "evaluate-failure", "detail": "node d vanished"}]}],
        "final": {"per_site": {"a": {"auc": 0.8, "accuracy": float("nan")}},
                  "mean": {"auc": 0.8, "accuracy": None}},
        "privacy": {"a": {"epsilon": 0.9, "delta": 1e-5, "rounds_joined": 1}},
        "explanations": {
            "a": {"round": 1, "count": 1, "folder": str(local)},
            "b": {"round": 1, "count": 4, "folder": "/srv/hospital-b/runs/r/explanations"},
            "c": {"round": 1, "count": 0, "folder": "/srv/c", "error": "ConfigError: x | y"},
        },
    }
    report = write_markdown_report(run_dir, document, "completed", "Grad-CAM overlays (PNG)")
    text = report.read_text()
    assert report == run_dir / "report.md"
    assert "| a | 0.800 | n/a |" in text and "![auc_per_round](plots/auc_per_round.png)" in text
    assert "](<../../sites/a b/runs/r/explanations>)" in text
    assert "![gradcam-a-0.png](<../../sites/a b/runs/r/explanations/gradcam-a-0.png>)" in text
    assert "at site b, `/srv/hospital-b/runs/r/explanations` on that site's machine" in text
    assert "**failed:** ConfigError: x \\| y" in text
    assert "| d | 0 | not reported" in text and "node d vanished" in text
    assert (run_dir / "../../sites/a b/runs/r/explanations/gradcam-a-0.png").is_file()


# --- end to end ----------------------------------------------------------------------------


def test_a_short_federation_leaves_explanations_at_the_sites_and_links_them(
    repo: Path, tmp_path: Path
) -> None:
    """Two imaging sites of DICOM files with patient headers, one DP round under the default
    policy: each site's Grad-CAM overlays are in its own site home, the run directory holds
    none, and report.md links them. The node's de-id gate admitted each site's files in one
    signed ``deid-batch`` entry (the burnt-in file quarantined with its reason), and no
    header value of the files is anywhere under the site homes or the run directory."""
    out, homes, data = tmp_path / "run", tmp_path / "homes", tmp_path / "data"
    sites = ["academic", "legacy"]
    for site in sites:
        write_dicom_site(data / site, site)
    code = main(["run", str(repo / "examples" / "imaging-cls"), "--rounds", "1",
                 "--sites-home", str(homes), "--out", str(out),
                 "--set", "sites=" + ",".join(sites), "--set", f"data-dir={data}"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    run_id = metrics["run-id"]
    report = (out / "report.md").read_text()
    for site in sites:
        folder = homes / site / "runs" / run_id / "explanations"
        assert metrics["explanations"][site] == {"round": 1, "count": 4, "folder": str(folder)}
        assert [p.read_bytes()[:8] for p in sorted(folder.iterdir())] == [PNG] * 4
        assert set(metrics["final"]["per_site"][site]) == {"auc", "accuracy"}
        link = os.path.relpath(folder, out)
        assert f"]({link})" in report and (out / link).is_dir()
        assert verify_log(homes / site / "audit.jsonl").ok
        entries = [json.loads(line) for line in (homes / site / "audit.jsonl").open()]
        batches = [e["payload"] for e in entries if e["kind"] == "deid-batch"]
        assert len(batches) == 1, batches  # many processes loaded the site: signed once
        assert batches[0]["items"] == {"received": 16, "released": 15, "quarantined": 1}
        assert "BurnedInAnnotation=YES" in batches[0]["quarantine"][0]["reason"]
        first_release = min(e["seq"] for e in entries if e["kind"] == "dp-release")
        assert next(e["seq"] for e in entries if e["kind"] == "deid-batch") < first_release
    assert not list(out.rglob("gradcam-*")) and not list(out.rglob("*explain*"))
    assert "## Explanations of the final model" in report and "status: **completed**" in report
    assert files_holding([homes, out], header_values(sites)) == []
