"""The command line: help for every command, one-line errors with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedmed.cli import build_parser, main


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for command in ("run", "demo", "baseline"):
        assert command in text
    subparsers = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, parser in subparsers.items():
        assert parser.format_help().strip(), name


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "/nonexistent/federation"], "federation folder not found"),
        (["run", "{heart}", "--set", "task=ecgz"], "unknown task 'ecgz'"),
        (["run", "{heart}", "--set", "num-server-rounds=zero"], "expected int"),
        (["run", "{heart}", "--set", "colour=blue"], "unknown federation setting 'colour'"),
        (["run", "{heart}", "--set", "data-dir=/nonexistent/data"], "/nonexistent/data"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    repo: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    argv = [a.replace("{heart}", str(repo / "examples" / "heart")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_unknown_strategy_is_rejected_by_the_parser(repo: Path) -> None:
    with pytest.raises(SystemExit) as done:
        main(["run", str(repo / "examples" / "heart"), "--strategy", "fedsomething"])
    assert done.value.code == 2


def test_malformed_federation_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.flwr.app.config\n")
    proc = subprocess.run(
        [sys.executable, "-m", "fedmed.cli", "run", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert str(tmp_path / "pyproject.toml") in proc.stderr and "invalid TOML" in proc.stderr


def test_baseline_reports_local_and_pooled(repo: Path, tmp_path: Path) -> None:
    import json

    out = tmp_path / "baseline"
    assert (
        main(["baseline", str(repo / "examples" / "heart"), "--rounds", "5", "--out", str(out)])
        == 0
    )
    result = json.loads((out / "baseline.json").read_text())
    assert set(result) >= {"cleveland", "hungary", "switzerland", "va", "pooled"}
    assert set(result["pooled"]["per_site"]) == {"cleveland", "hungary", "switzerland", "va"}
    assert result["pooled"]["mean"]["accuracy"] > 0.7
