"""The compliance report as one self-contained HTML file (plots embedded), for people.

Written for a hospital's privacy officer, not for ML engineers: it leads with
"is the record intact?" and "how much of each budget is used?", explains ε in plain
words, then gives the evidence (policy, mechanism parameters, refusals, logs).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedmed.audit.report import gather  # noqa: E402
from fedmed.outputs import format_epsilon, json_safe  # noqa: E402

EXPLANATION = """
<p><b>What ε (epsilon) means.</b> Each hospital trains the shared model on its own patients
with <i>differential privacy</i>: random noise is added to every training step so that the
released model would look almost the same whether or not any single patient's record had
been used. ε measures how much one patient's record can change what anyone learns from
everything this hospital has released — the smaller, the stronger the protection. As a guide:
ε below 1 is strong, 1–10 is the range commonly used in practice, and above 10 the
protection is weak. δ is the small probability (here far below one in a hundred thousand)
that the guarantee does not hold at all.</p>
<p><b>What the budget means.</b> Privacy loss adds up: every round of training spends some
of it, across all studies. Each hospital sets its own lifetime budget in its policy file; its
node computes, <i>before</i> each round, what ε would be after it and refuses to train if
that would exceed the budget or break any other rule of the policy. A refusal is the
system working as intended: no training happened and nothing left the hospital.</p>
<p><b>Why you can trust these numbers.</b> Every hospital and the coordinator keep an
append-only audit log. Each entry is chained to the previous one by a cryptographic hash and
signed with that party's key, so changing, removing or reordering any entry is detected
below. ε is recomputed here from the recorded noise levels, not copied.</p>
"""

STYLE = """
body{font-family:Helvetica,Arial,sans-serif;max-width:1100px;margin:24px auto;color:#1d2430;
line-height:1.45;padding:0 16px}
h1{margin-bottom:4px}h2{border-bottom:2px solid #d6dbe3;padding-bottom:4px;margin-top:36px}
.muted{color:#5b6573;font-size:.92em}
.banner{padding:14px 18px;border-radius:6px;font-size:1.15em;margin:16px 0}
.ok{background:#e3f4e8;border:1px solid #2f8a4c}.bad{background:#fbe4e4;border:1px solid #b3261e}
.explain{background:#f4f6fa;border-left:4px solid #3a6ea5;padding:4px 16px;margin:16px 0}
table{border-collapse:collapse;margin:10px 0;font-size:.93em}
td,th{border:1px solid #d6dbe3;padding:4px 8px;text-align:left}th{background:#eef1f6}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.pill{padding:1px 8px;border-radius:10px;font-size:.9em}
.pill.ok{background:#2f8a4c;color:#fff;border:0}.pill.bad{background:#b3261e;color:#fff;border:0}
.site{border:1px solid #d6dbe3;border-radius:6px;padding:4px 18px 14px;margin:20px 0}
code{font-size:.88em;word-break:break-all}
"""


def write_report(roots: Sequence[Path], out: Path) -> dict[str, Any]:
    """Write ``out`` (HTML) and ``out`` with ``.json`` beside it; return the data."""
    data = gather(roots)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(data), encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(json_safe(data), indent=2), encoding="utf-8")
    return data


def _e(value: Any) -> str:
    return html.escape(str(value))


def _budget(policy: Mapping[str, Any] | None) -> float:
    if not policy:
        return math.nan
    return math.inf if policy.get("epsilon") is None else float(policy["epsilon"])


def render(data: Mapping[str, Any]) -> str:
    """The whole HTML page for the data of :func:`fedmed.audit.report.gather`."""
    ok = data["verification"]["ok"]
    banner = (
        '<div class="banner ok">&#10004; All audit logs are intact: every entry verified.</div>'
        if ok
        else '<div class="banner bad">&#10008; Audit verification FAILED — see "Audit logs" '
        "below. The numbers in this report cannot be relied on until this is explained.</div>"
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Privacy compliance report"
        f"</title><style>{STYLE}</style></head><body>",
        "<h1>Privacy compliance report</h1>",
        f"<div class='muted'>Generated {_e(data['generated'])} from "
        f"{', '.join(_e(r) for r in data['roots'])}</div>",
        banner,
        f"<div class='explain'>{EXPLANATION}</div>",
        _summary(data["sites"]),
        *(_site_section(site) for site in data["sites"]),
        _coordinator_section(data["coordinator"]),
        _privacy_audit_section(data.get("privacy_audits") or []),
        _logs_section(data["verification"]["logs"]),
        "</body></html>",
    ]
    return "\n".join(parts)


def _summary(sites: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for site in sites:
        budget = _budget(site.get("policy"))
        spent = site.get("spent_epsilon")
        used = (
            f"{100 * spent / budget:.0f}%"
            if spent is not None and math.isfinite(budget) and budget > 0
            else "–"
        )
        audit = site.get("audit")
        status = (
            "<span class='pill ok'>intact</span>"
            if audit and audit["ok"]
            else "<span class='pill bad'>problem</span>"
        )
        rows.append(
            f"<tr><td>{_e(site['site'])}</td><td class='num'>{format_epsilon(budget)}</td>"
            f"<td class='num'>{format_epsilon(spent)}</td><td class='num'>{used}</td>"
            f"<td class='num'>{(site.get('policy') or {}).get('delta', '–')}</td>"
            f"<td class='num'>{site['rounds_joined']}</td>"
            f"<td class='num'>{site['rounds_refused']}</td><td>{status}</td></tr>"
        )
    return (
        "<h2>Summary by hospital</h2><table><tr><th>Hospital</th><th>ε budget</th>"
        "<th>ε spent</th><th>budget used</th><th>δ</th><th>rounds trained</th>"
        "<th>rounds refused</th><th>audit log</th></tr>" + "".join(rows) + "</table>"
    )


def _site_section(site: Mapping[str, Any]) -> str:
    policy = site.get("policy")
    parts = [f"<div class='site'><h2>{_e(site['site'])}</h2>"]
    parts.append(f"<div class='muted'>Site home: <code>{_e(site['home'])}</code></div>")
    for problem in site["problems"]:
        parts.append(f"<div class='banner bad'>{_e(problem)}</div>")
    if site["releases"]:
        parts.append(
            f"<img alt='epsilon spent over rounds' src='data:image/png;base64,"
            f"{_epsilon_plot(site)}'>"
        )
    if policy:
        allowed = ", ".join(policy["allowed_tasks"])
        parts.append(
            "<h3>Policy in force</h3><table>"
            f"<tr><th>Lifetime ε budget</th><td>{format_epsilon(_budget(policy))}</td></tr>"
            f"<tr><th>δ</th><td>{policy['delta']}</td></tr>"
            f"<tr><th>Minimum noise multiplier σ</th><td>{policy['min_noise_multiplier']}</td></tr>"
            f"<tr><th>Allowed tasks</th><td>{_e(allowed)}</td></tr>"
            f"<tr><th>Accountant</th><td>{_e(policy['accountant'])}</td></tr>"
            f"<tr><th>De-identification [deid]</th><td>{_deid_settings(policy)}</td></tr></table>"
        )
    parts.append(_policy_changes(site.get("policy_changes") or []))
    if site.get("epsilon_source"):
        parts.append(f"<p class='muted'>ε recomputed from the {_e(site['epsilon_source'])}.</p>")
    parts.append(_releases_table(site["releases"]))
    if site["refusals"]:
        rows = "".join(
            f"<tr><td>{_e(r['time'])}</td><td><code>{_e(r.get('run') or '')}</code></td>"
            f"<td class='num'>{_e(r.get('round'))}</td><td>{_e(r.get('reason'))}</td></tr>"
            for r in site["refusals"]
        )
        parts.append(
            "<h3>Rounds refused</h3><table><tr><th>time</th><th>run</th><th>round</th>"
            f"<th>reason</th></tr>{rows}</table>"
        )
    parts.append(_deid_batches(site.get("deid_batches") or []))
    audit = site.get("audit")
    if audit:
        deid = len(site.get("deid_batches") or [])
        batches = f"; {deid} de-identification batches" if deid else ""
        parts.append(
            f"<p class='muted'>Signing key {_e(audit['key'])}; "
            f"{audit['entries']} signed entries{batches}.</p>"
        )
    parts.append("</div>")
    return "".join(parts)


def _deid_settings(policy: Mapping[str, Any]) -> str:
    """The policy's ``[deid]`` table as compact JSON, or the defaults' name."""
    deid = policy.get("deid")
    if not deid:
        return "defaults (docs/deid.md)"
    return f"<code>{_e(json.dumps(deid, sort_keys=True))}</code>"


def _deid_batches(batches: Sequence[Mapping[str, Any]]) -> str:
    """The signed ``deid-batch`` entries: one row per admitted batch (no PHI in any field:
    counts, pseudonymous item ids, reasons, versions, digests)."""
    if not batches:
        return ""
    rows = []
    for b in batches:
        items = b.get("items") or {}
        counts = ", ".join(f"{k} {v}" for k, v in (b.get("phi_counts_by_category") or {}).items())
        held = "<br>".join(f"<code>{_e(q.get('item'))}</code>: {_e(q.get('reason'))}"
                           for q in b.get("quarantine") or [])
        versions = "<br>".join(f"{_e(k)}: {_e(_version(v))}"
                               for k, v in (b.get("versions") or {}).items())
        rows.append(
            f"<tr><td>{_e(b.get('time'))}</td><td>{_e(b.get('input'))}</td>"
            f"<td>{_e(b.get('task') or '')}</td>"
            f"<td class='num'>{_e(items.get('received'))} / {_e(items.get('released'))} / "
            f"{_e(items.get('quarantined'))}</td><td>{_e(counts) or '–'}</td>"
            f"<td>{held or '–'}</td><td>{versions}</td>"
            f"<td><code>{_e(str(b.get('input_digest') or '')[:16])}</code> → "
            f"<code>{_e(str(b.get('released_sha256') or '')[:16])}</code></td></tr>")
    return (
        "<h3>De-identification batches (signed)</h3><table><tr><th>time</th><th>input</th>"
        "<th>task</th><th>received / released / quarantined</th><th>PHI by category</th>"
        "<th>quarantined (pseudonymous id: reason)</th><th>versions</th>"
        f"<th>input (keyed) → released digest</th></tr>{''.join(rows)}</table>"
    )


def _version(value: Any) -> str:
    """A version field: text as is, the detector's nested versions as compact JSON."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _policy_changes(changes: Sequence[Mapping[str, Any]]) -> str:
    """The signed ``policy-change`` entries: when each policy was first seen, its budget,
    and the budget it replaced."""
    if not changes:
        return ""
    rows = "".join(
        f"<tr><td>{_e(c['time'])}</td>"
        f"<td class='num'>{_e(_was(c.get('previous_epsilon'), c.get('previous_sha256')))}</td>"
        f"<td class='num'>{format_epsilon(c.get('epsilon'))}</td>"
        f"<td class='num'>{_e(c.get('delta'))}</td>"
        f"<td><code>{_e(str(c.get('sha256') or '')[:16])}</code></td></tr>"
        for c in changes
    )
    return (
        "<h3>Policy changes (signed)</h3><table><tr><th>time</th><th>ε budget before</th>"
        f"<th>ε budget</th><th>δ</th><th>policy.toml SHA-256</th></tr>{rows}</table>"
    )


def _was(epsilon: Any, digest: Any) -> str:
    """The budget before a policy change; the first policy a node saw has none."""
    return "first seen" if digest is None else format_epsilon(epsilon)


def _releases_table(releases: Sequence[Mapping[str, Any]]) -> str:
    """One row per study (run), then every round in a collapsed table."""
    if not releases:
        return "<p>No training on this hospital's data has been recorded.</p>"
    runs: dict[str, list[Mapping[str, Any]]] = {}
    for release in releases:
        runs.setdefault(release["run"], []).append(release)
    summary = "".join(
        f"<tr><td><code>{_e(run)}</code></td><td>{_e(rows[0]['task'])}</td>"
        f"<td class='num'>{len(rows)}</td>{_mechanism_cells(rows[0])}"
        f"<td class='num'>{format_epsilon(rows[-1]['epsilon_after'])}</td></tr>"
        for run, rows in runs.items()
    )
    every = "".join(
        f"<tr><td><code>{_e(r['run'])}</code></td><td class='num'>{r['round']}</td>"
        f"{_mechanism_cells(r)}<td class='num'>{format_epsilon(r['epsilon_after'])}</td>"
        f"<td><code>{_e(r['dataset'][:12])}</code></td></tr>"
        for r in releases
    )
    mechanism = (
        "<th>σ</th><th>q</th><th>steps / round</th><th>clip</th><th>accountant</th><th>δ</th>"
    )
    return (
        "<h3>Studies that trained on this hospital's data (mechanism parameters)</h3>"
        "<p class='muted'>σ: noise multiplier (noise relative to one patient's clipped "
        "influence); q: chance each patient is used in a step; steps: noisy updates per "
        "round; clip: bound on one patient's influence per step; ε after: total spent, all "
        "studies, once the study's last round was released.</p>"
        f"<table><tr><th>run</th><th>task</th><th>rounds</th>{mechanism}<th>ε after</th></tr>"
        f"{summary}</table>"
        f"<details><summary>Every round ({len(releases)})</summary><table><tr><th>run</th>"
        f"<th>round</th>{mechanism}<th>ε after</th><th>data fingerprint</th></tr>{every}"
        "</table></details>"
    )


def _mechanism_cells(release: Mapping[str, Any]) -> str:
    return (
        f"<td class='num'>{release['noise_multiplier']:.3f}</td>"
        f"<td class='num'>{release['sample_rate']:.4f}</td>"
        f"<td class='num'>{release['steps']}</td><td class='num'>{release['clip_norm']:g}</td>"
        f"<td>{_e(release['accountant'])}</td><td class='num'>{release['delta']:g}</td>"
    )


def _epsilon_plot(site: Mapping[str, Any]) -> str:
    """PNG (base64) of cumulative ε after each release, against the budget line."""
    releases = site["releases"]
    budget = _budget(site.get("policy"))
    xs = list(range(len(releases) + 1))
    ys = [0.0] + [math.nan if r["epsilon_after"] is None else r["epsilon_after"] for r in releases]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    runs: list[str] = []
    for r in releases:
        if r["run"] not in runs:
            runs.append(r["run"])
    ax.plot(xs, ys, color="#3a6ea5", linewidth=2, marker="o", markersize=3,
            label="ε spent (all studies)")
    for index, run in enumerate(runs):
        first = next(i for i, r in enumerate(releases, start=1) if r["run"] == run)
        if index:
            ax.axvline(first - 0.5, color="#9aa5b4", linestyle=":", linewidth=1)
        ax.annotate(f"run {index + 1}", (first - 0.4, 0), textcoords="offset points",
                    xytext=(0, 4), fontsize=8, color="#5b6573")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if math.isfinite(budget):
        ax.axhline(
            budget, color="#b3261e", linestyle="--", linewidth=1.5, label=f"budget {budget:g}"
        )
        ax.set_ylim(0, budget * 1.1)
    ax.set(xlabel="training round on this hospital's data", ylabel="ε",
           title=f"{site['site']}: privacy spent against budget")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _coordinator_section(coordinators: Sequence[Mapping[str, Any]]) -> str:
    if not coordinators:
        return "<h2>Coordinator</h2><p>No coordinator log was found in these folders.</p>"
    parts = ["<h2>Coordinator</h2>"]
    for coordinator in coordinators:
        rows = "".join(
            f"<tr><td><code>{_e(r['run'])}</code></td><td>{_e(r['task'])}</td>"
            f"<td>{_e(r['started'])}</td><td>{_e(r['status'])}</td>"
            f"<td><code>{_e((r.get('config_sha256') or '')[:16])}</code></td>"
            f"<td><code>fedmed {_e((r.get('code') or {}).get('fedmed'))} / "
            f"{_e(((r.get('code') or {}).get('source_sha256') or '')[:16])}</code></td></tr>"
            for r in coordinator["runs"]
        )
        parts.append(
            f"<p class='muted'>Log <code>{_e(coordinator['log'])}</code>, key "
            f"{_e(coordinator['key'])}: {coordinator['rounds']} aggregated rounds signed.</p>"
            "<table><tr><th>run</th><th>task</th><th>started</th><th>status</th>"
            f"<th>settings hash</th><th>code version</th></tr>{rows}</table>"
        )
        client = coordinator.get("client_privacy") or {}
        if client:
            parts.append(
                "<p>Client-level DP at the coordinator (protects each hospital's whole "
                f"contribution): ε = {format_epsilon(client.get('epsilon'))} "
                f"at δ = {client.get('delta')}, "
                f"noise multiplier {client.get('noise_multiplier')}.</p>"
            )
    return "".join(parts)


def _logs_section(logs: Sequence[Mapping[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td><code>{_e(log['path'])}</code></td><td>{_e(log['party'])}</td>"
        f"<td class='num'>{log['entries']}</td><td>"
        + (
            "<span class='pill ok'>intact</span>"
            if log["ok"]
            else f"<span class='pill bad'>line {_e(log['line'])}</span> {_e(log['reason'])}"
        )
        + "</td></tr>"
        for log in logs
    )
    return (
        "<h2>Audit logs</h2><p class='muted'>Checked: hash chain, Ed25519 signatures, exact "
        "bytes, and the signed end-of-log marker. Verify yourself with "
        "<code>fedmed audit verify FOLDER</code>.</p><table><tr><th>log</th><th>party</th>"
        f"<th>entries</th><th>status</th></tr>{rows}</table>"
    )


def _privacy_audit_section(audits: Sequence[Mapping[str, Any]]) -> str:
    """``fedmed audit privacy`` results: per site, the accounted ε of the audit's run
    beside the empirical lower bound and the membership attack (docs/auditor-guide.md)."""
    if not audits:
        return ""
    parts = [
        "<h2>Empirical privacy audit</h2><p class='muted'>A lower bound is evidence, not "
        "proof: the real ε may be far above it. A bound above the accounted ε means the DP "
        'training or its accounting is wrong. See docs/auditor-guide.md, "Reading the '
        'empirical privacy audit".</p>'
    ]
    for audit in audits:
        if "problem" in audit:
            parts.append(f"<p><code>{_e(audit['path'])}</code>: {_e(audit['problem'])}</p>")
            continue
        dp, training = audit["dp"], audit["training"]
        mechanism = (
            f"DP-SGD, target ε {_e(dp.get('target_epsilon'))} at δ {_e(dp.get('delta'))}, "
            f"clip {_e(dp.get('clip_norm'))}"
            if dp.get("enabled")
            else "no DP"
        )
        rows = "".join(
            f"<tr><td>{_e(site)}</td>"
            f"<td class='num'>{format_epsilon(found.get('epsilon_accounted'))}</td>"
            f"<td class='num'>{float(found['epsilon_lower_bound']):.3f}</td>"
            f"<td class='num'>{_e(found.get('correct_guesses'))} / {_e(found.get('guesses'))}"
            f" ({_e(found.get('canaries'))})</td>"
            f"<td class='num'>{float(found['mia_auc']):.3f}</td>"
            f"<td class='num'>{float(found['tpr_at_0.1pct_fpr']):.3f}</td></tr>"
            for site, found in audit["per_site"].items()
        )
        parts.append(
            f"<p><code>{_e(audit['path'])}</code>: federation {_e(audit['federation'])}, "
            f"{mechanism}; {_e(training.get('rounds'))} rounds of "
            f"{_e(training.get('local_epochs'))} local epochs.</p>"
            "<table><tr><th>Hospital</th><th>ε accounted (audit run)</th>"
            f"<th>ε lower bound ({_e(audit.get('confidence'))} confidence)</th>"
            "<th>right / guesses (canaries)</th><th>membership AUC</th>"
            f"<th>TPR at 0.1% FPR</th></tr>{rows}</table>"
        )
    return "".join(parts)
