"""The numbers of a compliance report, as tables (pandas), from verified audit records.

- **decisions** by period, class, routing category and language (the language is read from the
  stored, masked request: kana or kanji means Japanese);
- **escalations**, one row per case opened in the range: when it was first and last decided by a
  person up to the report's cutoff (the end of ``--to``, or now if earlier, so a report of a closed
  month reads the same whenever it is made), whether that took longer than ``escalation_timeout``
  (overdue against the SLA, or still open past it), and how the person decided compared with the
  model: the model *leaned* to whichever of ALLOW and REFUSE had the higher probability; the person
  *agreed* when they chose that one and *overrode* it otherwise (a fail-closed case has no leaning);
- **escalation_summary** per period; **fail_closed** events by reason; **models** in service
  (first and last decision, how many, on which replicas); **mode_changes** (the emergency switch).

A resolution is a ``resolution`` record that was not withdrawn. Given the escalation queue's history, only the
records the queue holds count: a resolve killed between its record and the queue's commit leaves a record of a
decision nobody committed (the case is still open), and a retry would make it look superseded. The records of the
report's cases so left out are counted (``resolutions_not_in_queue``); without the queue the log cannot tell.

No table holds a request text, a user id or a note: only ids, counts, categories and times.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ...core.schema import HUMAN_DECISIONS, LABELS
from ...data.tables import detect_lang
from ...serve.masking import mask_personal_data
from ...serve.resolutions import held_by_queue, standing_resolutions
from .collect import Collected, ReportError, day_range, period_of, replica_label

DECISION_COLUMNS = ["period", "decision", "category", "lang", "count"]
CASE_COLUMNS = ["case_id", "request_id", "replica", "period", "opened_at", "category", "lang", "fail_closed",
                "model_leaning", "first_resolved_at", "minutes_to_first_resolution", "human_decision",
                "resolutions", "agreement", "overdue", "status_at_cutoff"]
SUMMARY_COLUMNS = ["period", "opened", "resolved", "open_at_cutoff", "overdue", "within_sla_rate",
                   "median_minutes_to_resolution", "human_allow", "human_refuse", "agreed", "overridden",
                   "no_leaning", "superseded"]


@dataclass
class ComplianceReport:
    date_from: dt.date
    date_to: dt.date
    period: str | None
    sla_s: float
    cutoff: dt.datetime
    verification: dict[str, dict]
    tables: dict[str, pd.DataFrame]
    summary: dict
    notes: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return all(not r["errors"] for r in self.verification.values())

    @property
    def title(self) -> str:
        return f"SO8T compliance report {self.date_from.isoformat()} to {self.date_to.isoformat()}"


def replica_of(record: dict) -> str:
    """The replica ``collect`` worked out from the configured log name and folder; for a record made
    elsewhere, its chain read against the default log name."""
    return record.get("replica") or replica_label(Path(record["chain"]).name)


def _leaning(record: dict) -> str | None:
    probs = record.get("probabilities")
    if "fail_closed" in (record.get("flags") or []) or not isinstance(probs, dict):
        return None
    known = {label: probs.get(label) for label in HUMAN_DECISIONS if isinstance(probs.get(label), (int, float))}
    return max(known, key=known.get) if len(known) == len(HUMAN_DECISIONS) else None


def _fail_reason(record: dict) -> str:
    from ...serve.http.metrics import fail_reason  # the service's reason labels: one list of them

    return fail_reason(record) or "other"


def _lang(record: dict) -> str:
    text = record.get("input")
    return detect_lang(text) if isinstance(text, str) and text.strip() else "unknown"


def _cases(decisions: list[dict], resolutions: dict[str, list[dict]], period, sla_s: float,
           cutoff: dt.datetime) -> pd.DataFrame:
    rows = []
    for record in decisions:
        case_id = record.get("escalation_id")
        if record.get("decision") != "ESCALATE" or not case_id:
            continue
        done = [r for r in resolutions.get(case_id, []) if r["at"] < cutoff]
        first = done[0] if done else None
        leaning = _leaning(record)
        final = done[-1].get("human_decision") if done else None
        minutes = (first["at"] - record["at"]).total_seconds() / 60 if first else None
        waited = (first["at"] if first else cutoff) - record["at"]
        rows.append({
            "case_id": case_id, "request_id": record.get("request_id"), "replica": replica_of(record),
            "period": period(record["at"]), "opened_at": record["at"].isoformat(timespec="seconds"),
            "category": record.get("category"), "lang": _lang(record),
            "fail_closed": "fail_closed" in (record.get("flags") or []), "model_leaning": leaning,
            "first_resolved_at": first["at"].isoformat(timespec="seconds") if first else None,
            "minutes_to_first_resolution": None if minutes is None else round(minutes, 2),
            "human_decision": final, "resolutions": len(done),
            "agreement": None if final is None or leaning is None else final == leaning,
            "overdue": waited.total_seconds() > sla_s, "status_at_cutoff": "resolved" if done else "open"})
    return pd.DataFrame(rows, columns=CASE_COLUMNS)


def _case_summary(cases: pd.DataFrame, periods: list[str]) -> pd.DataFrame:
    rows = []
    for key in periods:
        part = cases[cases["period"] == key]
        resolved = part[part["status_at_cutoff"] == "resolved"]
        opened = len(part)
        rows.append({
            "period": key, "opened": opened, "resolved": len(resolved), "open_at_cutoff": opened - len(resolved),
            "overdue": int(part["overdue"].sum()),
            "within_sla_rate": None if not opened else round(1 - part["overdue"].sum() / opened, 4),
            "median_minutes_to_resolution": None if resolved.empty else
            round(float(resolved["minutes_to_first_resolution"].median()), 2),
            "human_allow": int((resolved["human_decision"] == "ALLOW").sum()),
            "human_refuse": int((resolved["human_decision"] == "REFUSE").sum()),
            "agreed": int((resolved["agreement"] == True).sum()),  # noqa: E712 - a column of True/False/None
            "overridden": int((resolved["agreement"] == False).sum()),  # noqa: E712
            "no_leaning": int(resolved["model_leaning"].isna().sum()),
            "superseded": int((resolved["resolutions"] > 1).sum())})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def build_report(collected: Collected, date_from: dt.date, date_to: dt.date, period: str | None = None,
                 sla_s: float = 300.0, now: dt.datetime | None = None,
                 queue_history: Mapping[str, list[dict]] | None = None) -> ComplianceReport:
    """The report's tables for decisions made from ``date_from`` to ``date_to`` (both included, UTC).
    ``queue_history``: case id -> the queue's resolution rows (``CaseStore.history``); with it the queue, not
    the log, says which resolutions happened."""
    if not (isinstance(sla_s, (int, float)) and not isinstance(sla_s, bool) and math.isfinite(sla_s) and sla_s >= 0):
        raise ReportError(f"the SLA must be a finite number of seconds, 0 or more (got {sla_s!r}), as --sla-seconds "
                          "takes it: with NaN or infinity no case would ever be overdue")
    start, end = day_range(date_from, date_to)
    cutoff = min(end, now or dt.datetime.now(dt.UTC))

    def period_key(moment: dt.datetime) -> str:
        return period_of(moment, period, date_from, date_to)

    in_range = [r for r in collected.records if start <= r["at"] < end]
    decisions = [r for r in in_range if r.get("event", "decision") == "decision"]
    standing, not_held = standing_resolutions(collected.records), []  # not the withdrawn ones
    if queue_history is not None:
        standing, not_held = held_by_queue(standing, queue_history)
    resolutions: dict[str, list[dict]] = {}
    for record in sorted(standing, key=lambda r: r["at"]):
        resolutions.setdefault(record.get("case_id"), []).append(record)

    counted = pd.DataFrame([{"period": period_key(r["at"]), "decision": r.get("decision"),
                             "category": r.get("category") or "none", "lang": _lang(r)} for r in decisions],
                           columns=DECISION_COLUMNS[:-1])
    decision_table = (counted.groupby(DECISION_COLUMNS[:-1]).size().reset_index(name="count")
                      if len(counted) else pd.DataFrame(columns=DECISION_COLUMNS))
    periods = sorted({period_key(r["at"]) for r in decisions}) or [period_key(start)]
    cases = _cases(decisions, resolutions, period_key, sla_s, cutoff)
    failed = [r for r in decisions if "fail_closed" in (r.get("flags") or [])]
    fail_table = pd.DataFrame([{"period": period_key(r["at"]), "reason": _fail_reason(r)} for r in failed],
                              columns=["period", "reason"])
    fail_table = (fail_table.groupby(["period", "reason"]).size().reset_index(name="count") if len(fail_table)
                  else pd.DataFrame(columns=["period", "reason", "count"]))
    models = pd.DataFrame([{"model_version": r.get("model_version") or "unknown", "at": r["at"],
                            "replica": replica_of(r)} for r in decisions],
                          columns=["model_version", "at", "replica"])
    model_table = pd.DataFrame(
        [{"model_version": version, "first_decision": group["at"].min().isoformat(timespec="seconds"),
          "last_decision": group["at"].max().isoformat(timespec="seconds"), "decisions": len(group),
          "replicas": ", ".join(sorted(set(group["replica"])))} for version, group in models.groupby("model_version")],
        columns=["model_version", "first_decision", "last_decision", "decisions", "replicas"])
    switches = pd.DataFrame(
        [{"at": r["at"].isoformat(timespec="seconds"), "mode": r.get("mode"), "enabled": r.get("enabled"),
          "source": r.get("source"), "by": mask_personal_data(str(r.get("by") or "")),
          "replica": replica_of(r)} for r in in_range if r.get("event") == "mode_change"],
        columns=["at", "mode", "enabled", "source", "by", "replica"])
    by_class = {label: sum(1 for r in decisions if r.get("decision") == label) for label in LABELS}
    summary = {
        "decisions": len(decisions), **{f"decisions_{k.lower()}": v for k, v in by_class.items()},
        "escalation_rate": round(by_class["ESCALATE"] / len(decisions), 4) if decisions else None,
        "fail_closed": len(failed), "escalations_opened": len(cases),
        "escalations_resolved": int((cases["status_at_cutoff"] == "resolved").sum()),
        **({} if queue_history is None else {"resolutions_not_in_queue": _left_out(not_held, cases, cutoff)}),
        "escalations_overdue": int(cases["overdue"].sum()), "human_agreed": int((cases["agreement"] == True).sum()),  # noqa: E712
        "human_overrode": int((cases["agreement"] == False).sum()),  # noqa: E712
        "model_versions": len(model_table), "chains": len(collected.verification),
        "records_verified": sum(r["records"] for r in collected.verification.values()),
        "test_records_left_out": collected.tests_left_out(start, end), "sla_seconds": sla_s,
        "cutoff": cutoff.isoformat(timespec="seconds"), "verified": collected.verified}
    tables = {"decisions": decision_table, "escalations": cases, "escalation_summary": _case_summary(cases, periods),
              "fail_closed": fail_table, "models": model_table, "mode_changes": switches}
    return ComplianceReport(date_from, date_to, period, sla_s, cutoff, collected.verification, tables, summary,
                            [*collected.notes, *_rotated_away(collected, start),
                             *_coverage(collected, start, end, cutoff, bool(in_range))])


def _left_out(not_held: list[dict], cases: pd.DataFrame, cutoff: dt.datetime) -> int:
    """How many of the records the queue does not hold would have counted: those of the report's cases, made
    before its cutoff."""
    reported = set(cases["case_id"])
    return sum(1 for r in not_held if r.get("case_id") in reported and r["at"] < cutoff)


def _rotated_away(collected: Collected, start: dt.datetime) -> list[str]:
    """A chain whose oldest records were rotated away (backup_count) before the range's start is read from its
    first kept record on: the report says so, rather than counting fewer decisions as if that were all."""
    first_at: dict[str, dt.datetime] = {}
    for record in collected.records:
        first_at[record["chain"]] = min(first_at.get(record["chain"], record["at"]), record["at"])
    notes = []
    for chain, verified in collected.verification.items():
        first_seq, kept_from = verified.get("first_seq"), first_at.get(chain)
        if first_seq and kept_from is not None and kept_from > start:
            notes.append(f"{chain}: its records up to seq {first_seq - 1} were rotated away (backup_count); it is "
                         f"read from {kept_from.isoformat(timespec='seconds')}, so the counts before that may be "
                         "incomplete")
    return notes


def _coverage(collected: Collected, start: dt.datetime, end: dt.datetime, cutoff: dt.datetime,
              any_in_range: bool) -> list[str]:
    """Notes for a range the logs cannot fill: one that has not ended yet (a later report counts more) and one
    no record falls in (a mistyped year reads as a quiet month otherwise)."""
    when = cutoff.isoformat(timespec="seconds")
    notes = []
    if start >= cutoff:
        notes.append(f"the range starts after this report was made ({when}): nothing in it can have happened yet")
    elif end > cutoff:
        notes.append(f"the range has not ended: the counts cover it up to {when}, when this report was made")
    if not any_in_range and collected.records:
        first, last = (min(r["at"] for r in collected.records), max(r["at"] for r in collected.records))
        notes.append(f"no record falls in the range; the logs hold records from {first.isoformat(timespec='seconds')} "
                     f"to {last.isoformat(timespec='seconds')}")
    return notes
