"""Validate before spending (issue 14): bad data and bad settings are refused by ``fedmed run``
before any site trains — one line naming the file, row and column or the setting, exit 2.

Each of these fails before the simulation starts (no Ray), so each takes well under a second.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from fedmed.cli import main
from fedmed.commands.federation import privacy_table
from fedmed.data.ecg_export import main as export_ecg
from fedmed.data.imaging_readers import ImageVolume, read_labels_csv, to_model_input
from fedmed.errors import DataError
from fedmed.tasks.heart import DATA_DIR, SITE_FILES


def run_fails(repo: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """``fedmed run examples/heart ARGV`` exits 2 with one line, no traceback; that line."""
    code = main(["run", str(repo / "examples" / "heart"), "--rounds", "1", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def heart_copy(tmp_path: Path, site: str, row: int, column: int, value: str) -> Path:
    """The vendored heart tables with one cell of ``site``'s table (1-based row) replaced."""
    folder = tmp_path / "heart"
    shutil.copytree(DATA_DIR, folder)
    table = folder / SITE_FILES[site]
    lines = table.read_text().splitlines()
    cells = lines[row - 1].split(",")
    cells[column] = value
    lines[row - 1] = ",".join(cells)
    table.write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize(
    ("column", "name", "value"),
    [
        (4, "column 'chol'", "inf"),
        (0, "column 'age'", "1e308"),
        (13, "label 'num'", "-7"),
        (13, "label 'num'", "99"),
    ],
)
def test_a_heart_table_with_impossible_values_is_refused_naming_file_row_and_column(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], column: int, name: str,
    value: str,
) -> None:  # fmt: skip
    folder = heart_copy(tmp_path, "hungary", 5, column, value)
    err = run_fails(repo, capsys, "--set", f"data-dir={folder}")
    assert f"{folder / SITE_FILES['hungary']}: row 5, {name}" in err


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("lr=nan", "lr must be a finite number"),
        ("clip-norm=nan", "clip-norm must be a finite number"),
        ("noise-multiplier=nan", "noise-multiplier must be a finite number"),
        ("epsilon=inf", "epsilon must be a finite number"),
        ("batch-size=0", "batch-size must be >= 1, got 0"),
        ("local-epochs=0", "local-epochs must be >= 1, got 0"),
        ("round-timeout=-1", "round-timeout must be >= 0, got -1.0"),
        ("lr=0", "lr must be > 0"),
        ("momentum=1.5", "momentum must be in [0, 1)"),
        ("foo", "--set expects KEY=VALUE, got 'foo'"),
        ("=3", "--set expects KEY=VALUE"),
    ],
)
def test_impossible_settings_are_refused_before_any_site_trains(
    repo: Path, capsys: pytest.CaptureFixture[str], setting: str, message: str
) -> None:
    assert message in run_fails(repo, capsys, "--set", setting)


def test_ecg_labels_outside_the_classes_are_refused_naming_row_and_column(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert export_ecg(["--out", str(tmp_path), "--recordings", "8", "--sites", "osaka"]) == 0
    table = tmp_path / "osaka" / "labels.csv"
    lines = table.read_text().splitlines()
    for bad in ("-7", "99"):
        lines[3] = lines[3].rsplit(",", 1)[0] + "," + bad
        table.write_text("\n".join(lines) + "\n")
        code = main(["run", str(repo / "examples" / "ecg"), "--set", f"data-dir={tmp_path}",
                     "--set", "sites=osaka"])  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert f"{table}: row 4, column 'label': '{bad}' is not a class index" in err


def test_imaging_labels_and_non_finite_pixels_are_refused(tmp_path: Path) -> None:
    table = tmp_path / "labels.csv"
    for bad in ("-7", "99"):
        table.write_text(f"file,label\na.png,1\nb.png,{bad}\n")
        with pytest.raises(DataError, match=rf"line 3, column 'label': '{bad}' is not one of"):
            read_labels_csv(table)
    pixels = np.ones((8, 8), dtype=np.float32)
    pixels[2, 3] = np.inf
    with pytest.raises(DataError, match="1 non-finite pixel value"):
        to_model_input(ImageVolume(pixels, "OT", (1.0, 1.0), tmp_path / "x.nii"), 4)


def test_privacy_table_says_no_ledger_for_a_site_that_reported_no_account() -> None:
    from rich.console import Console

    metrics = {
        "privacy": {
            "a": {"rounds_joined": 0, "rounds_refused": 1},  # site home unusable: no account
            "b": {"epsilon": 0.5, "delta": 1e-5, "epsilon_budget": None, "rounds_joined": 1},
        }
    }
    console = Console(width=200, record=True)
    console.print(privacy_table(metrics))
    rows = {line.split("│")[1].strip(): line for line in console.export_text().splitlines()
            if line.count("│") > 2}  # fmt: skip
    assert "no ledger" in rows["a"] and "no policy" in rows["a"]
    assert "unbounded" not in rows["a"] and "nan" not in rows["a"]
    assert "0.500" in rows["b"] and "unbounded" in rows["b"]  # a null budget is ∞
