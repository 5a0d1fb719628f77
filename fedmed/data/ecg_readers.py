"""Readers for real ECG files, and the one path from a recording to a model input.

Hospitals store ECGs in a handful of formats: PhysioNet WFDB records (``.hea`` header +
``.dat`` samples), DICOM waveform objects from 12-lead carts (``.dcm``), and CSV exports
(one column per lead). :func:`read_ecg` turns any of them into an :class:`EcgRecording`
(float32 leads × samples, in millivolts where the format states units, plus the sampling
rate), so nothing downstream cares where a recording came from.

:func:`to_model_input` is deliberately the *only* way a recording becomes a model input:
the synthetic training windows (``fedmed.data.ecg_synth``), the labelled folders a site
trains on, and inference on a single file all pass through it. A preprocessing mismatch
between training and inference is therefore impossible by construction.

Every problem with a user's file — missing, truncated, wrong format, non-numeric,
non-finite — is raised as :class:`fedmed.errors.DataError` with one line naming the file
and what was wrong; the parsers' own exceptions never reach the user.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from scipy.signal import resample_poly

from fedmed.data.admission import FolderGate, ItemQuarantined
from fedmed.errors import DataError

COMMON_RATE = 100
"""Hz: every window is resampled to this rate (enough for rhythm; QRS energy is < 40 Hz)."""
WINDOW_SECONDS = 5
WINDOW_SAMPLES = COMMON_RATE * WINDOW_SECONDS
WFDB_SUFFIXES = (".hea", ".dat")
LABELS_FILE = "labels.csv"
# DICOM channel sensitivity units (UCUM codes) → factor to millivolts.
_DICOM_UNITS_TO_MV = {"uV": 1e-3, "mV": 1.0, "V": 1e3}


@dataclass(frozen=True)
class EcgRecording:
    """One recording: ``signal`` is float32 (leads × samples); ``fs`` in Hz; lead names."""

    signal: np.ndarray
    fs: float
    leads: tuple[str, ...]
    source: Path

    def lead_index(self, lead: int | str) -> int:
        """Index of ``lead`` given by position or (case-insensitive) name; DataError if absent."""
        if isinstance(lead, str) and not lead.strip().lstrip("-").isdigit():
            names = [name.lower() for name in self.leads]
            if lead.lower() not in names:
                raise DataError(
                    f"{self.source}: no lead named {lead!r}; leads: {', '.join(self.leads)}"
                )
            return names.index(lead.lower())
        index = int(lead)
        if not 0 <= index < len(self.leads):
            raise DataError(
                f"{self.source}: lead {index} requested but the file has {len(self.leads)} lead(s)"
            )
        return index


def read_ecg(
    path: str | Path, sampling_rate: float | None = None, gate: FolderGate | None = None
) -> EcgRecording:
    """Read a WFDB (``.hea``/``.dat``), CSV or DICOM waveform (``.dcm``) ECG file.

    ``sampling_rate`` is required for CSV (the format does not store it) and ignored by the
    others, which carry their own. ``gate``: the site's de-id hooks (a node's admission
    stage): a DICOM header passes the PS3.15 profile (or the file is quarantined:
    :class:`~fedmed.data.admission.ItemQuarantined`), a WFDB header's comment lines are
    removed and counted. A CSV export has no header fields beyond its lead names.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in WFDB_SUFFIXES:
        return read_wfdb(path, gate)
    if suffix == ".csv":
        return read_csv_ecg(path, sampling_rate)
    if suffix == ".dcm":
        return read_dicom_ecg(path, gate=gate)
    raise DataError(
        f"{path}: unsupported ECG file type {path.suffix!r}; expected .hea/.dat (WFDB), "
        ".csv or .dcm (DICOM waveform)"
    )


def read_wfdb(path: Path, gate: FolderGate | None = None) -> EcgRecording:
    """A WFDB record named by its ``.hea`` or ``.dat`` file (read locally, never from PhysioNet).

    Only the signal, its rate, units and lead names are kept; ``gate`` admits the header
    (its comment lines removed and counted in the site's signed batch report)."""
    header = path.with_suffix(".hea")
    _require_file(header, "WFDB header")
    with warnings.catch_warnings():  # wfdb's import warns about pandas API it uses; not ours
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        import wfdb  # lazily: every simulated node imports this module, few read WFDB
    try:
        with warnings.catch_warnings():  # wfdb calls pandas with inplace=True (pandas 3.1 warns)
            warnings.filterwarnings("ignore", message="The inplace keyword", category=Warning)
            head = wfdb.rdheader(str(path.with_suffix("")))
            _check_claimed_length(path, head)
            if gate is not None:
                gate.wfdb_header(header, [str(line) for line in head.comments or []])
            record = wfdb.rdrecord(str(path.with_suffix("")))
        signal = record.p_signal
        fs = float(record.fs)
        names = tuple(str(name) for name in (record.sig_name or []))
        units = list(record.units or [])
    # wfdb raises many types (ValueError, IndexError, struct errors, …) for malformed records;
    # at this user-data boundary each of them means the same thing.
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: not a readable WFDB record ({_describe(exc)})") from None
    if signal is None:
        raise DataError(f"{path}: WFDB record has no physical signal")
    to_mv = np.array([1e-3 if unit == "uV" else 1.0 for unit in units] or [1.0])
    return _recording(path, np.asarray(signal).T * to_mv[:, None], fs, names)


def _check_claimed_length(path: Path, header: object) -> None:
    """Refuse a header claiming more samples than its signal files hold, before wfdb
    allocates them (a 4e9-sample claim beside a 1 kB ``.dat`` would take 15 GiB)."""
    folder = path.parent
    if not hasattr(header, "fmt"):  # a multi-segment record: bound by every .dat beside it
        capacity = 16 * sum(p.stat().st_size for p in folder.glob("*.dat") if p.is_file())
        claimed = (getattr(header, "sig_len", 0) or 0) * (getattr(header, "n_sig", 0) or 0)
        if claimed > capacity:
            raise DataError(f"{path}: header claims {claimed} samples, more than its signal "
                            "files can hold (truncated or wrong header?)")  # fmt: skip
        return
    sig_len = getattr(header, "sig_len", None)
    if sig_len is None:
        return  # wfdb infers the length from the file size
    per_file: dict[str, list[tuple[float, int]]] = {}
    for fmt, name, frame in zip(
        header.fmt or [], header.file_name or [], header.samps_per_frame or [], strict=False
    ):
        per_file.setdefault(str(name), []).append((_WFDB_BYTES.get(str(fmt), 1 / 16), frame or 1))
    for name, signals in per_file.items():
        dat = folder / name
        if not dat.is_file():
            raise DataError(f"{path}: signal file {dat.name} named by the header is missing")
        needed = sig_len * sum(size * frame for size, frame in signals)
        if needed > dat.stat().st_size + 8:
            raise DataError(f"{path}: header claims {sig_len} samples per signal but "
                            f"{dat.name} holds only {dat.stat().st_size} bytes "
                            "(truncated or wrong header?)")  # fmt: skip


# Bytes per sample of the WFDB storage formats (compressed FLAC formats: at most 16
# samples per byte is assumed, generous for ECG).
_WFDB_BYTES = {"8": 1.0, "16": 2.0, "24": 3.0, "32": 4.0, "61": 2.0, "80": 1.0, "160": 2.0,
               "212": 1.5, "310": 4 / 3, "311": 4 / 3}  # fmt: skip


def read_csv_ecg(path: Path, sampling_rate: float | None) -> EcgRecording:
    """A CSV export: a header row of lead names, one numeric column per lead, values in mV."""
    _require_file(path, "CSV file")
    if sampling_rate is None:
        raise DataError(f"{path}: CSV files do not store a sampling rate; give sampling_rate")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV table ({_describe(exc)})") from None
    if table.empty:
        raise DataError(f"{path}: CSV has a header but no samples")
    bad = [str(c) for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    if bad:
        raise DataError(f"{path}: non-numeric values in column(s) {', '.join(bad)}")
    names = tuple(str(column) for column in table.columns)
    return _recording(path, table.to_numpy(dtype=np.float64).T, float(sampling_rate), names)


def read_dicom_ecg(path: Path, group: int = 0, gate: FolderGate | None = None) -> EcgRecording:
    """A DICOM waveform object (e.g. a 12-lead ECG); multiplex group ``group`` (0: rhythm).
    ``gate``: its header is de-identified (or the file quarantined) before the waveform
    is decoded."""
    _require_file(path, "DICOM file")
    try:
        # From memory, never from the file: pydicom asks the file for as many bytes as an
        # element's (possibly corrupt) length says, up to 4 GiB each; memory stops at the end.
        dataset = pydicom.dcmread(io.BytesIO(path.read_bytes()))
        _parse_all(dataset)
    # pydicom raises InvalidDicomError, OSError, EOFError, ValueError… for damaged files.
    except Exception as exc:
        raise DataError(f"{path}: not a readable DICOM file ({_describe(exc)})") from None
    if gate is not None:
        dataset.filename = str(path)  # the gate names a quarantined file by it
        dataset = gate.dicom_header(dataset)
    sequence = dataset.get("WaveformSequence")
    if not sequence or group >= len(sequence):
        raise DataError(f"{path}: DICOM file has no waveform group {group} (not an ECG waveform?)")
    try:
        samples = dataset.waveform_array(group)
        item = sequence[group]
        fs = float(item.SamplingFrequency)
        channels = list(item.ChannelDefinitionSequence)
        names = tuple(_dicom_channel_name(channel, i) for i, channel in enumerate(channels))
        to_mv = np.array([_dicom_channel_to_mv(channel) for channel in channels])
    except Exception as exc:  # same boundary as above
        raise DataError(f"{path}: malformed DICOM waveform ({_describe(exc)})") from None
    return _recording(path, np.asarray(samples).T * to_mv[:, None], fs, names)


def to_model_input(
    signal: np.ndarray, fs: float, lead: int = 0, start_s: float = 0.0
) -> np.ndarray:
    """One model window from a recording: the same steps for training and for inference.

    Picks ``lead`` (``signal`` is leads × samples, or 1-D for a single lead), resamples to
    :data:`COMMON_RATE` with a polyphase anti-aliasing filter, takes
    :data:`WINDOW_SECONDS` from ``start_s`` (zero-padding a shorter recording), and
    standardises it (median removed, divided by the standard deviation) so that the
    recorder's gain and units do not matter. Returns float32 of length
    :data:`WINDOW_SAMPLES`.
    """
    trace = _pick_lead(np.asarray(signal), lead)
    if fs <= 0:
        raise DataError(f"sampling rate must be positive, got {fs}")
    resampled = resample_to_common(trace, fs)
    first = int(round(start_s * COMMON_RATE))
    if not 0 <= first < len(resampled):
        raise DataError(f"window start {start_s} s is outside a {len(trace) / fs:.2f} s recording")
    window = resampled[first : first + WINDOW_SAMPLES]
    window = window - np.median(window)
    scale = float(window.std())
    if scale > 1e-8:
        window = window / scale
    if not np.isfinite(window).all():  # finite samples whose spread overflows (e.g. 1e308)
        raise DataError("sample values too large to standardise (not a recording in mV?)")
    padded = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    padded[: len(window)] = window
    return padded


def resample_to_common(trace: np.ndarray, fs: float) -> np.ndarray:
    """Resample a 1-D trace from ``fs`` Hz to :data:`COMMON_RATE` (rational polyphase filter)."""
    ratio = (Fraction(COMMON_RATE) / Fraction(fs)).limit_denominator(1000)
    if ratio == 1:
        return trace.astype(np.float64)
    return resample_poly(trace.astype(np.float64), ratio.numerator, ratio.denominator)


def read_labelled_folder(
    folder: Path, class_names: Sequence[str], gate: FolderGate | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Model windows and labels for a site folder holding ``labels.csv`` and ECG files.

    ``gate``: the site's de-id hooks (:func:`read_ecg`); a quarantined recording is left
    out, listed with its reason in the gate's signed batch report.

    ``labels.csv`` has columns ``file`` (relative to ``folder``) and ``label`` (a class index
    or one of ``class_names``), optionally ``sampling_rate`` (required for CSV recordings)
    and ``lead`` (index or name, default 0).
    """
    table_path = folder / LABELS_FILE
    table = _read_labels_table(table_path)
    windows, labels = [], []
    for number, row in enumerate(table.itertuples(index=False), start=2):  # line 1: header
        path = folder / str(row.file)
        label = _parse_label(row.label, class_names, table_path, number)
        fs = _sampling_rate(getattr(row, "sampling_rate", None), table_path, number)
        try:
            recording = read_ecg(path, fs, gate)
        except ItemQuarantined:
            continue
        lead = _optional(getattr(row, "lead", None))
        index = recording.lead_index(0 if lead is None else lead)
        try:
            windows.append(to_model_input(recording.signal, recording.fs, index))
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None
        labels.append(label)
    if not windows:
        raise DataError(f"{table_path}: every recording was quarantined by the de-id gate")
    return np.stack(windows), np.asarray(labels, dtype=np.int64)


def _read_labels_table(path: Path) -> pd.DataFrame:
    _require_file(path, "labels table")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV table ({_describe(exc)})") from None
    missing = {"file", "label"} - set(table.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    if table.empty:
        raise DataError(f"{path}: no rows")
    return table


def _parse_label(value: object, class_names: Sequence[str], table: Path, row: int) -> int:
    """A class index from a label cell (index or class name); DataError naming the row."""
    text = str(value).strip()
    lowered = [name.lower() for name in class_names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    if text.isdigit() and int(text) < len(class_names):
        return int(text)
    raise DataError(
        f"{table}: row {row}, column 'label': {text!r} is not a class index "
        f"0–{len(class_names) - 1} or one of {', '.join(class_names)}"
    )


def _sampling_rate(value: object, table: Path, row: int) -> float | None:
    """The optional ``sampling_rate`` cell: a finite rate > 0, or ``None`` when empty."""
    value = _optional(value)
    if value is None:
        return None
    try:
        rate = float(str(value).strip())
    except ValueError:
        rate = float("nan")
    if not (np.isfinite(rate) and rate > 0):
        raise DataError(
            f"{table}: row {row}, column 'sampling_rate': {value!r} is not a finite rate > 0 (Hz)"
        )
    return rate


def _optional(value: object) -> object | None:
    """``None`` for an absent or empty (NaN) optional column value."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value


def _pick_lead(signal: np.ndarray, lead: int) -> np.ndarray:
    if signal.ndim == 1:
        signal = signal[None, :]
    if signal.ndim != 2 or signal.shape[1] == 0:
        raise DataError(f"expected a (leads × samples) signal, got shape {signal.shape}")
    if not 0 <= lead < signal.shape[0]:
        raise DataError(f"lead {lead} requested but the signal has {signal.shape[0]} lead(s)")
    return signal[lead]


def _recording(path: Path, signal: np.ndarray, fs: float, names: tuple[str, ...]) -> EcgRecording:
    """Validate what a reader produced; every reader ends here."""
    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim != 2 or signal.shape[0] == 0 or signal.shape[1] == 0:
        raise DataError(f"{path}: no ECG samples (signal shape {signal.shape})")
    if not np.isfinite(fs) or fs <= 0:
        raise DataError(f"{path}: invalid sampling rate {fs}")
    bad = int((~np.isfinite(signal)).sum())
    if bad:
        raise DataError(f"{path}: {bad} missing or non-finite sample value(s)")
    if len(names) != signal.shape[0]:
        names = tuple(f"lead{i}" for i in range(signal.shape[0]))
    return EcgRecording(signal.astype(np.float32), fs, names, path)


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")


def _dicom_channel_name(channel: pydicom.Dataset, index: int) -> str:
    source = channel.get("ChannelSourceSequence")
    return str(source[0].CodeMeaning) if source else f"lead{index}"


def _dicom_channel_to_mv(channel: pydicom.Dataset) -> float:
    units = channel.get("ChannelSensitivityUnitsSequence")
    code = str(units[0].CodeValue) if units else "mV"
    return _DICOM_UNITS_TO_MV.get(code, 1.0)


def _parse_all(dataset: pydicom.Dataset) -> None:
    """Convert every lazily parsed element now (file meta included), so a damaged one fails
    while reading."""
    for _ in dataset.iterall():
        pass
    for _ in (getattr(dataset, "file_meta", None) or pydicom.Dataset()).iterall():
        pass


def _describe(exc: BaseException) -> str:
    """The first line of an exception's message, for one-line DataErrors."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
