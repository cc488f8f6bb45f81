"""A compliance report on disk: one HTML page with its figures inline (PNG as data: URIs, so the page
is one file that can be mailed or archived), a CSV per table and ``summary.json``, written together
into one folder that appears whole or not at all (with a sha256 manifest of its files).

The verification of the audit chains is the first thing on the page: green when every chain
verified, red with each problem when one did not.
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from jinja2 import Environment  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ...core.checkpoint import atomic_folder  # noqa: E402
from ...core.schema import LABELS  # noqa: E402
from .compliance import ComplianceReport  # noqa: E402

COLORS = {"ALLOW": "#2e7d32", "REFUSE": "#c62828", "ESCALATE": "#f9a825"}
TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1100px; color: #222; }
.verified { background: #e8f5e9; border-left: 6px solid #2e7d32; padding: .8em 1em; }
.failed { background: #ffebee; border-left: 6px solid #c62828; padding: .8em 1em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f5f5f5; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; } .figs { display: flex; flex-wrap: wrap; gap: 1em; } .note { color: #555; }
</style></head><body>
{% if verified %}
<div class="verified" id="verification" data-verified="true"><strong>Audit chains verified</strong>: {{ chains|length }}
chain(s), {{ summary.records_verified }} records, no problem found (hash chain, anchors{{ ', signatures' if signed else '' }}).
<ul>{% for chain, r in chains.items() %}<li>{{ chain }}: {{ r.records }} records, seq {{ r.first_seq }}..{{ r.last_seq }}</li>{% endfor %}</ul></div>
{% else %}
<div class="failed" id="verification" data-verified="false"><strong>Audit chain verification FAILED</strong>: the numbers
below come from records that may have been altered or lost.
<ul>{% for p in problems %}<li>{{ p }}</li>{% endfor %}</ul></div>
{% endif %}
<h1>{{ title }}</h1>
<p>Decisions from {{ date_from }} to {{ date_to }} (UTC, both days included){% if period %}, by {{ period }} period{% endif %}.
Escalation SLA (<code>escalation_timeout</code>): {{ sla }} s. Cutoff for resolutions: {{ summary.cutoff }}.
{{ summary.test_records_left_out }} test-mode record(s) left out. No request text, user id or note appears in this report.</p>
{% if summary.resolutions_not_in_queue is defined %}<p id="queue-check">Resolutions were checked against the escalation
queue: {{ summary.resolutions_not_in_queue }} resolution record(s) of these cases that the queue does not hold (a resolve
stopped before its commit) are left out, so those cases count as the queue has them.</p>{% endif %}
{% for note in notes %}<p class="note">{{ note }}</p>{% endfor %}
<h2>Summary</h2>{{ summary_table|safe }}
<h2>Decisions by class, category and language</h2><div class="figs">{% for f in figures.decisions %}<img alt="{{ f.alt }}" src="data:image/png;base64,{{ f.data }}">{% endfor %}</div>
{{ tables.decisions|safe }}
<h2>Escalations: opened, resolved, overdue, and how people decided</h2>
<p>A case is overdue when no person decided it within the SLA (resolved late, or still open past it at the cutoff).
The model <em>leaned</em> to whichever of ALLOW and REFUSE it found more likely; the reviewer <em>agreed</em> when
they chose that one and <em>overrode</em> it otherwise; a fail-closed case has no leaning.</p>
<div class="figs">{% for f in figures.escalations %}<img alt="{{ f.alt }}" src="data:image/png;base64,{{ f.data }}">{% endfor %}</div>
{{ tables.escalation_summary|safe }}
<h2>Fail-closed events</h2><div class="figs">{% for f in figures.fail_closed %}<img alt="{{ f.alt }}" src="data:image/png;base64,{{ f.data }}">{% endfor %}</div>
{{ tables.fail_closed|safe }}
<h2>Model versions in service</h2>{{ tables.models|safe }}
<h2>Emergency switch</h2>{{ tables.mode_changes|safe }}
<p class="note">Per-case rows: escalations.csv. Written by so8t report.</p>
</body></html>
"""


def figure_data(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _stacked(table: pd.DataFrame, by: str, title: str) -> Figure:
    counts = table.pivot_table(index=by, columns="decision", values="count", aggfunc="sum", fill_value=0)
    counts = counts.reindex(columns=[c for c in LABELS if c in counts.columns])
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    if counts.empty:
        ax.text(0.5, 0.5, "no decisions", ha="center", va="center")
    else:
        counts.plot.bar(stacked=True, ax=ax, color=[COLORS[c] for c in counts.columns], width=0.75)
        ax.legend(fontsize=7)
    ax.set(title=title, xlabel="", ylabel="decisions")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    fig.tight_layout()
    return fig


def _bars(series: pd.Series, title: str, color: str = "#1565c0") -> Figure:
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    if series.empty or not series.sum():
        ax.text(0.5, 0.5, "none", ha="center", va="center")
    else:
        series.plot.bar(ax=ax, color=color)
    ax.set(title=title, ylabel="count")
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.tight_layout()
    return fig


def figures(report: ComplianceReport) -> dict[str, list[dict]]:
    """The page's figures as base64 PNGs, by section."""
    t = report.tables
    decisions = [
        {"alt": "decisions by period and class", "data": figure_data(_stacked(t["decisions"], "period", "by period"))},
        {"alt": "decisions by category and class", "data": figure_data(_stacked(t["decisions"], "category",
                                                                                "by routing category"))},
        {"alt": "decisions by language and class", "data": figure_data(_stacked(t["decisions"], "lang", "by language"))},
    ]
    summary = t["escalation_summary"].set_index("period")
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    summary[["opened", "resolved", "overdue"]].plot.bar(ax=ax, color=["#1565c0", "#2e7d32", "#c62828"])
    ax.set(title="escalations by period", ylabel="cases", xlabel="")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    fig.tight_layout()
    human = pd.Series({"agreed": summary["agreed"].sum(), "overrode": summary["overridden"].sum(),
                       "no leaning": summary["no_leaning"].sum(), "superseded": summary["superseded"].sum()})
    escalations = [{"alt": "escalations opened, resolved and overdue", "data": figure_data(fig)},
                   {"alt": "reviewers compared with the model's leaning",
                    "data": figure_data(_bars(human, "reviewers vs the model's leaning", "#6a1b9a"))}]
    reasons = t["fail_closed"].groupby("reason")["count"].sum() if len(t["fail_closed"]) else pd.Series(dtype=int)
    fail = [{"alt": "fail-closed events by reason", "data": figure_data(_bars(reasons, "fail-closed by reason",
                                                                             "#ef6c00"))}]
    return {"decisions": decisions, "escalations": escalations, "fail_closed": fail}


def _html_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "<p class='note'>none</p>"
    return table.to_html(index=False, escape=True, na_rep="", border=0)


def render_html(report: ComplianceReport) -> str:
    problems = [f"{Path(chain).name}: {e}" for chain, r in report.verification.items() for e in r["errors"]]
    signed = any((r.get("anchor") or {}).get("mac") for r in report.verification.values())
    summary = pd.DataFrame([{k: v for k, v in report.summary.items() if k not in ("cutoff", "verified")}]).T
    summary = summary.reset_index().set_axis(["measure", "value"], axis=1)
    tables = {name: _html_table(table) for name, table in report.tables.items() if name != "escalations"}
    return Environment(autoescape=True).from_string(TEMPLATE).render(
        title=report.title, verified=report.verified, chains=report.verification, problems=problems, signed=signed,
        summary=report.summary, date_from=report.date_from, date_to=report.date_to, period=report.period,
        sla=f"{report.sla_s:g}", notes=report.notes, summary_table=_html_table(summary), tables=tables,
        figures=figures(report))


def report_folder_name(report: ComplianceReport) -> str:
    return f"compliance_{report.date_from}_{report.date_to}" + (f"_{report.period}" if report.period else "")


def write_report(report: ComplianceReport, out: str | Path) -> Path:
    """``out/compliance_<from>_<to>[_<period>]/``: report.html, one CSV per table, summary.json and a
    manifest; a report of the same range is replaced whole."""
    target = Path(out) / report_folder_name(report)
    html = render_html(report)
    with atomic_folder(target) as tmp:
        (tmp / "report.html").write_text(html, encoding="utf-8")
        for name, table in report.tables.items():
            table.to_csv(tmp / f"{name}.csv", index=False)
        problems = {chain: r["errors"] for chain, r in report.verification.items() if r["errors"]}
        (tmp / "summary.json").write_text(json.dumps(
            {"title": report.title, "from": report.date_from.isoformat(), "to": report.date_to.isoformat(),
             "period": report.period, "summary": report.summary, "verification_problems": problems,
             "chains": {chain: {k: r[k] for k in ("records", "first_seq", "last_seq")}
                        for chain, r in report.verification.items()}, "notes": report.notes},
            indent=1, ensure_ascii=False, allow_nan=False), encoding="utf-8")
    return target
