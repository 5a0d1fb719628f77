"""``fedmed site backup`` / ``fedmed site restore``: a checked archive of a site home."""

from __future__ import annotations

import io
import json
import shutil
import stat
import tarfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from test_privacy_node import SITE, initial_weights, instructions, node

from fedmed.cli import main
from fedmed.clients.hospital import HospitalClient


def cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(out):
        code = main([str(a) for a in args])
    return code, out.getvalue()


def trained(client: HospitalClient, server_round: int) -> dict:
    _, count, metrics = client.fit(initial_weights(), instructions(rounds=5)(server_round))
    assert metrics["refused"] == 0 and count > 0, metrics
    return metrics


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A home trained one round, and its backup; the reply metrics (with the head)."""
    root = tmp_path_factory.mktemp("site")
    client = node(root / "home")
    head = trained(client, 1)
    code, out = cli("site", "backup", "--site-home", root / "home", "--out", root / "b.tar.gz")
    assert code == 0, out
    assert f"seq {head['audit-seq']}" in out and str(root / "b.tar.gz") in out
    return root / "home", root / "b.tar.gz", head


def witness_record(path: Path, seq: int, digest: str) -> Path:
    path.write_text(json.dumps({"federation": "heart", "sites": {
        SITE: {"key": "k", "seq": seq, "hash": digest, "run": "r", "round": 1, "time": "t"}}}))
    return path


def test_backup_restore_round_trip_and_the_node_trains_again(backed_up, tmp_path: Path) -> None:
    home, archive, head = backed_up
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    shutil.rmtree(copy)
    code, out = cli("site", "restore", archive, "--site-home", copy)
    assert code == 0, out
    assert "NOT checked" in out
    for name in ("audit.jsonl", "ledger.json", "policy.toml", "keys/audit-ed25519.pem"):
        assert (copy / name).read_bytes() == (home / name).read_bytes(), name
    assert stat.S_IMODE((copy / "keys/audit-ed25519.pem").stat().st_mode) == 0o600
    assert cli("audit", "verify", copy)[0] == 0
    trained(node(copy), 2)  # same key, same chain: the restored node signs on


def test_a_broken_log_is_not_backed_up(backed_up, tmp_path: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(backed_up[0], home)
    log = home / "audit.jsonl"
    log.write_bytes(log.read_bytes().replace(b'"seq":1', b'"seq":7', 1))
    code, out = cli("site", "backup", "--site-home", home, "--out", tmp_path / "x.tar.gz")
    assert code == 1 and "audit.jsonl" in out and "broken" in out, out
    assert not (tmp_path / "x.tar.gz").exists()


def rewrite(archive: Path, out: Path, change) -> Path:  # noqa: ANN001
    """A copy of ``archive`` with ``change(name, bytes) -> (name, bytes)`` applied to files."""
    with tarfile.open(archive) as src, tarfile.open(out, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            if data is not None:
                member.name, data = change(member.name, data)
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    return out


def test_a_tampered_archive_is_refused_and_nothing_is_written(backed_up, tmp_path: Path) -> None:
    def edit(name: str, data: bytes) -> tuple[str, bytes]:
        if name == "home/policy.toml":
            data = data[:-2] + b"#\n"  # one byte changed
        return name, data

    bad = rewrite(backed_up[1], tmp_path / "bad.tar.gz", edit)
    code, out = cli("site", "restore", bad, "--site-home", tmp_path / "home")
    assert code == 1 and "policy.toml differs" in out, out
    assert not (tmp_path / "home").exists()
    assert not list(tmp_path.glob(".home.restoring-*"))


def test_an_archive_escaping_the_home_is_refused(backed_up, tmp_path: Path) -> None:
    def escape(name: str, data: bytes) -> tuple[str, bytes]:
        return ("home/../../evil.toml" if name == "home/policy.toml" else name), data

    bad = rewrite(backed_up[1], tmp_path / "bad.tar.gz", escape)
    code, out = cli("site", "restore", bad, "--site-home", tmp_path / "x" / "home")
    assert code == 2 and "unsafe archive member" in out and "bad.tar.gz" in out, out
    assert not (tmp_path / "evil.toml").exists() and not (tmp_path / "x" / "home").exists()


def test_missing_or_not_an_archive_is_a_usage_error(tmp_path: Path) -> None:
    code, out = cli("site", "restore", tmp_path / "none.tar.gz", "--site-home", tmp_path / "h")
    assert code == 2 and "none.tar.gz" in out
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
    code, out = cli("site", "restore", tmp_path / "junk.tar.gz", "--site-home", tmp_path / "h")
    assert code == 2 and "junk.tar.gz" in out


def test_a_non_empty_home_is_replaced_only_with_force_and_kept_aside(
    backed_up, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "note.txt").write_text("old home")
    code, out = cli("site", "restore", backed_up[1], "--site-home", home)
    assert code == 2 and "--force" in out and (home / "note.txt").exists()
    code, out = cli("site", "restore", backed_up[1], "--site-home", home, "--force")
    assert code == 0, out
    (aside,) = tmp_path.glob("home.replaced-*")
    assert (aside / "note.txt").read_text() == "old home" and str(aside) in out
    assert (home / "audit.jsonl").read_bytes() == (backed_up[0] / "audit.jsonl").read_bytes()


def test_the_witnessed_head_must_be_in_the_backup(backed_up, tmp_path: Path) -> None:
    _, archive, head = backed_up
    seq, digest = int(head["audit-seq"]), str(head["audit-hash"])
    later = witness_record(tmp_path / "later.json", seq + 3, "a" * 64)
    code, out = cli("site", "restore", archive, "--site-home", tmp_path / "h1",
                    "--witness", later, "--site", SITE)
    assert code == 1 and "older than what the coordinator witnessed" in out, out
    assert "refuse to train" in out and not (tmp_path / "h1").exists()
    other = witness_record(tmp_path / "other.json", seq, "b" * 64)
    assert cli("site", "restore", archive, "--site-home", tmp_path / "h2",
               "--witness", other)[0] == 1
    same = witness_record(tmp_path / "same.json", seq, digest)
    code, out = cli("site", "restore", archive, "--site-home", tmp_path / "h3",
                    "--witness", same, "--site", SITE)
    assert code == 0 and "holds the head the coordinator witnessed" in out, out
    code, out = cli("site", "restore", archive, "--site-home", tmp_path / "h4",
                    "--witness", same, "--site", "nowhere")
    assert code == 2 and "same.json" in out and "nowhere" in out
