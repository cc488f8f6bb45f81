"""Step 1 of the manual's retraining flow: labelled rows from what people decided in operation.

Two sources, both read from verified audit chains (every replica's):
- **resolved escalations**: the ``gate_label`` the reviewer gave with the final resolution (a superseding one
  wins) is the label of the request the gate escalated. The reviewer's ALLOW or REFUSE alone is never one: it
  says whether this employee was helped this time, and a request the policy sends to a person (a harassment
  report, an expense exception) stays ESCALATE however it was settled; a final resolution without a gate
  label is left out (``no_gate_label``) unless a spot check labels the request. When a queue is given, its
  resolved cases are read too (the same cases, and any whose decision record has been rotated away), and it
  confirms the log: a ``resolution`` record whose row the queue does not hold (a resolve killed between its
  audit record and its commit) is no label (counted as ``resolution_not_in_queue``). Without a queue every
  standing record counts;
- **reviewed audit records**: a file of spot checks (``request_id``, ``label``: ALLOW, REFUSE or
  ESCALATE) on any decision the gate made.

Every row keeps its ``request_id`` (and ``case_id``), so it can be traced back to its audit record.
Left out, and counted: test-mode records (a spot check of one too), requests or contexts stored truncated (the label belongs to
the whole text), requests whose text is not stored, records written before the gate stored the context
(a label given to a request with a context would be trained onto the bare request), and duplicates
(the same request and context by the key preprocess's ``load_table`` uses, ``asked_keys``: punctuation, spacing
and invisible characters aside; one row is kept, the latest decision; when people labelled the same text
differently, none, so preprocess never meets two answers to one question).
A spot check that contradicts the gate label a resolution of the same request gave is refused, as two
disagreeing spot checks are: which one a person meant cannot be guessed. A signed log is read only with its
HMAC key: without it a re-hashed record would pass as verified.
Personal data is masked again here (the log is masked already when ``mask_personal_data`` is on).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from ...core.io import atomic_write_text
from ...core.schema import CATEGORIES, LABELS
from ...data.tables import asked_keys, detect_lang, read_records
from ...serve.audit_verify import read_chains, verify_chains
from ...serve.config import AUDIT_HMAC_KEY_ENV
from ...serve.escalation import UNREADABLE_TEXTS, EscalationQueue
from ...serve.masking import mask_personal_data
from ...serve.resolutions import held_by_queue, standing_resolutions

TRUNCATED = re.compile(r"…\[\d+ chars, sha256 [0-9a-f]{16}\]\Z")
SOURCE = "operations"


class ExtractError(ValueError):
    """Rows cannot be extracted as asked; the message says why."""


def _reviews(path: Path) -> dict[str, dict]:
    """request_id -> {label, reviewed_by} from a JSONL or CSV file of spot checks."""
    found = {}
    for line_no, record in read_records(path):
        request_id, label = str(record.get("request_id") or "").strip(), str(record.get("label") or "").strip().upper()
        if not request_id or label not in LABELS:
            raise ExtractError(f"{path}:{line_no}: a review needs request_id and label ({', '.join(LABELS)})")
        earlier = found.get(request_id)
        if earlier is not None and earlier["label"] != label:  # which one a person meant cannot be guessed
            raise ExtractError(f"{path}:{line_no}: {request_id} is reviewed as {label} here and as {earlier['label']} "
                               f"on line {earlier['line']}; keep one")
        found[request_id] = {"label": label, "line": line_no}
    return found


def _moment(text: str | None) -> str:
    """An audit timestamp (microseconds, ``Z``) or a queue one (seconds, ``+00:00``) in one sortable form; one
    without a zone is UTC, as everything the gate writes is (never this machine's local time)."""
    try:
        moment = dt.datetime.fromisoformat(text) if text else None
    except ValueError:
        return ""
    if moment is None:
        return ""
    moment = moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
    return moment.isoformat(timespec="microseconds")


def _row(decision: dict, label: str, origin: str, decided_at: str, case_id: str | None) -> dict:
    text = mask_personal_data(decision["input"])
    category = decision.get("category") or "none"
    return {"id": f"ops-{decision['request_id']}", "context": mask_personal_data(decision["context"]),
            "user_request": text, "label": label,
            "category": category if category in CATEGORIES else "general", "lang": detect_lang(text),
            "rationale": "", "task_output": "", "family": "", "split": "", "hard": False, "source": SOURCE,
            "request_id": decision["request_id"], "case_id": case_id, "origin": origin, "decided_at": decided_at}


def _held(queue: str | Path, key: str | bytes | None,
          standing: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """(the queue's resolved cases, the records it holds, those it does not): the queue is what says a case was
    resolved; a record it never committed (its process killed before the commit) would label a case nobody
    decided."""
    store = EscalationQueue(queue, create=False, encryption_key=key)
    try:
        resolved = store.list("resolved", include_tests=False)
        history = {case_id: store.history(case_id) for case_id in {r.get("case_id") for r in standing if not r.get("test")}
                   if isinstance(case_id, str)}
    finally:
        store.close()
    return (resolved, *held_by_queue(standing, history))


class _Label(NamedTuple):
    """What a person said a request's label is, and where: ``label`` None for a resolution without a gate
    label; ``decision`` the resolution's ALLOW or REFUSE, matched against the queue's."""

    label: str | None
    origin: str
    decided_at: str | None
    case_id: str | None
    final: bool
    decision: str | None = None


def _resolution_key(record: dict) -> tuple:
    """A resolution as a later one names it in ``supersedes``: its case, decision, reviewer and the queue's stamp."""
    return record.get("case_id"), record.get("human_decision"), record.get("resolved_by"), record.get("decided_at")


def _replaced(resolutions: list[dict]) -> set[tuple]:
    """``_resolution_key`` of each resolution a standing one says it superseded (records written before
    ``decided_at`` was stored name nothing this can match, and fall back to the timestamps)."""
    return {(r.get("case_id"), s.get("decision"), s.get("decided_by"), s.get("decided_at"))
            for r in resolutions if isinstance(s := r.get("supersedes"), dict) and s.get("decided_at")}


def _folders(logs: list[str | Path]) -> list[Path]:
    """Each log folder once: one given twice (``X`` and ``X/``, or through a link) would read every record
    twice and double the report's counts."""
    seen, folders = set(), []
    for folder in map(Path, logs):
        if folder.resolve() not in seen:
            seen.add(folder.resolve())
            folders.append(folder)
    return folders


def _unsigned_reads(verification: dict[str, dict], signed_records: set[str], hmac_key: str | bytes | None) -> list[str]:
    """A problem for each signed chain (its anchor or a record carries a ``mac``) read without the HMAC key: only
    the key tells a re-hashed record from the gate's own, so its labels cannot be trusted without it."""
    if hmac_key:
        return []
    signed = sorted(signed_records | {c for c, r in verification.items() if "mac" in (r.get("anchor") or {})})
    return [f"{chain}: the log is signed (HMAC), but no HMAC key was given; set {AUDIT_HMAC_KEY_ENV} (or the "
            f"variable --hmac-key-env names) to the key the service signs with, or pass hmac_key" for chain in signed]


def extract_rows(logs: list[str | Path], queue: str | Path | None = None, reviews: str | Path | None = None,
                 key: str | bytes | None = None, hmac_key: str | bytes | None = None,
                 require_verified: bool = True) -> tuple[list[dict], dict]:
    """(rows, report): labelled rows in the corpus's columns plus request_id, case_id, origin and
    decided_at; the report counts what was left out and why."""
    logs = _folders(logs)
    if not logs:  # no log: nothing verified, yet the queue alone would give labels
        raise ExtractError("no log folder given: name the folder(s) whose audit log recorded the decisions")
    verification = verify_chains(logs, hmac_key=hmac_key)
    problems = [f"{chain}: {e}" for chain, r in verification.items() for e in r["errors"]]
    if problems and require_verified:
        raise ExtractError("the audit log does not verify, so its records cannot be labels:\n  " + "\n  ".join(problems))
    decisions, labelled, left_out = {}, {}, {"test": 0, "truncated": 0, "no_text": 0, "undecryptable": 0,
                                             "context_not_recorded": 0, "duplicate": 0, "conflicting": 0,
                                             "no_decision_record": 0, "not_a_label": 0,
                                             "resolution_not_in_queue": 0, "no_gate_label": 0}
    try:
        read = [(str(folder / chain), record) for folder in logs for chain, record in read_chains(folder, key=key)]
    except ValueError as exc:
        raise ExtractError(str(exc)) from None
    records = [record for _, record in read]
    unsigned = _unsigned_reads(verification, {chain for chain, r in read if "mac" in r}, hmac_key)
    problems += unsigned
    if unsigned and require_verified:
        raise ExtractError("the audit log cannot be verified, so its records cannot be labels:\n  " + "\n  ".join(unsigned))
    standing = standing_resolutions(records)  # a withdrawn attempt is no label
    resolved: list[dict] = []
    if queue is not None:
        logged = sum(not r.get("test") for r in standing)
        resolved, standing, not_held = _held(queue, key, standing)
        left_out["resolution_not_in_queue"] = sum(not r.get("test") for r in not_held)
        if resolved and logged and left_out["resolution_not_in_queue"] == logged:  # labels from strangers' cases
            raise ExtractError(f"none of the {logged} resolutions in the log is a case of the queue {queue}, which "
                               "holds other resolved cases: it is another service's queue; give this log's --db")
    replaced = _replaced(standing)
    standing, tests = {id(r) for r in standing}, set()
    for record in records:
        if record.get("test"):
            left_out["test"] += record.get("event", "decision") == "decision"
            tests.add(record.get("request_id"))
            continue
        if record.get("event", "decision") == "decision" and record.get("request_id"):
            decisions[record["request_id"]] = record
        elif id(record) in standing and record.get("request_id"):
            # the resolution no other one replaced wins; among several (older records name none), the latest,
            # whichever chain holds it: replicas' clocks differ, and a supersede written through one running
            # behind read as older than the decision it replaced
            earlier, final = labelled.get(record["request_id"]), _resolution_key(record) not in replaced
            if earlier is None or (final, _moment(record.get("timestamp"))) >= (earlier.final, earlier.decided_at):
                labelled[record["request_id"]] = _Label(record.get("gate_label"), "escalation",
                                                        _moment(record.get("timestamp")), record.get("case_id"),
                                                        final, record.get("human_decision"))
    for case in resolved:  # a case's gate_label is its last resolutions row's (never the case row's copy, which
        # a replica of an earlier version leaves stale when it supersedes)
        logged = labelled.get(case["request_id"])  # the queue holds the final resolution; the log's record
        if logged is None or (logged.decision, logged.label) != (case["human_decision"], case.get("gate_label")):
            labelled[case["request_id"]] = _Label(case.get("gate_label"), "escalation",  # (finer timestamp)
                                                  _moment(case["resolved_at"]), case["case_id"], True,
                                                  case["human_decision"])
        decisions.setdefault(case["request_id"], {"request_id": case["request_id"], "input": case["input"],
                                                  "context": case.get("context"), "category": case["category"]})
    if reviews is not None:
        for request_id, review in _reviews(Path(reviews)).items():
            resolved_as = labelled.get(request_id)
            if request_id in tests:  # counted as a test-mode record already
                continue
            if resolved_as is not None and resolved_as.label not in (None, review["label"]):  # as two spot checks
                raise ExtractError(f"{reviews}:{review['line']}: {request_id} is reviewed as {review['label']} here "
                                   f"and given gate label {resolved_as.label} in escalation case "
                                   f"{resolved_as.case_id}; keep one (remove the review, or resolve the case again "
                                   "with supersede and the gate label meant)")
            if resolved_as is None or resolved_as.label is None:  # one that agrees keeps the resolution's time
                labelled[request_id] = _Label(review["label"], "review", None,
                                              resolved_as.case_id if resolved_as else None, True)
    rows = []
    for request_id, (label, origin, decided_at, case_id, *_) in labelled.items():
        decision = decisions.get(request_id)
        if label is None:  # a reviewer's ALLOW or REFUSE alone says nothing of what the gate should decide
            left_out["no_gate_label"] += 1
        elif decision is None:
            left_out["no_decision_record"] += 1
        elif not isinstance(decision.get("input"), str) or not decision["input"].strip():
            left_out["no_text"] += 1
        elif decision["input"] in UNREADABLE_TEXTS:  # the queue's stand-in for a text under another key, or none
            left_out["undecryptable"] += 1
        elif not isinstance(decision.get("context"), str):  # written before contexts were stored
            left_out["context_not_recorded"] += 1
        elif decision["context"] in UNREADABLE_TEXTS:
            left_out["undecryptable"] += 1
        elif TRUNCATED.search(decision["input"]) or TRUNCATED.search(decision["context"]):
            left_out["truncated"] += 1
        elif label not in LABELS:  # a resolution record whose gate label is not one of the three
            left_out["not_a_label"] += 1
        else:
            rows.append(_row(decision, label, origin, decided_at or _moment(decision.get("timestamp")), case_id))
    rows.sort(key=lambda r: (r["decided_at"], r["request_id"]))
    by_text: dict[str, list[dict]] = {}  # load_table's own key, so what it calls one question is one here
    for key, row in zip(asked_keys(pd.DataFrame(rows, columns=["context", "user_request"])), rows, strict=True):
        by_text.setdefault(key, []).append(row)
    kept = []
    for same in by_text.values():
        if len({r["label"] for r in same}) > 1:
            left_out["conflicting"] += len(same)
            continue
        left_out["duplicate"] += len(same) - 1
        kept.append(same[-1])
    kept.sort(key=lambda r: r["request_id"])
    report = {"rows": len(kept), "labels": {label: sum(r["label"] == label for r in kept) for label in LABELS},
              "origins": {o: sum(r["origin"] == o for r in kept) for o in ("escalation", "review")},
              "left_out": left_out, "chains": len(verification), "verified": not problems}
    return kept, report


def check_extract_out(out: str | Path, logs: list[str | Path], inputs: list[str | Path | None]) -> None:
    """ExtractError before anything is read when ``out`` would replace what an operator keeps: a file in a log
    folder (the audit chain, the queue), one of the inputs, or an existing file that is not extracted rows."""
    out = Path(out)
    if out.is_dir():
        raise ExtractError(f"--out {out} is a folder; name the JSONL file to write")
    target = out.resolve()
    for folder in map(Path, logs):
        if target.is_relative_to(folder.resolve()):
            raise ExtractError(f"--out {out} lies in the log folder {folder}, which holds the audit chain and the "
                               "queue; write the rows elsewhere (e.g. experiments/runs/retrain/additional_training.jsonl)")
    if any(given is not None and "://" not in str(given) and Path(given).resolve() == target for given in inputs):
        raise ExtractError(f"--out {out} is one of the inputs (--db or --reviews); write the rows elsewhere")
    if out.is_file() and out.stat().st_size:
        with out.open("rb") as handle:
            first = handle.readline()
        try:
            row = json.loads(first)
        except ValueError:
            row = None
        if not (isinstance(row, dict) and {"request_id", "label", "user_request"} <= set(row)):
            raise ExtractError(f"--out {out} exists and holds no extracted rows; choose another file, or move it "
                               "away if it may be replaced")


def write_rows(rows: list[dict], out: str | Path) -> Path:
    """The rows as JSON lines, written whole."""
    return atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
