"""Reading the audit chains a report is made from: every replica's chain of every log folder,
verified first, decrypted with the key when the log is encrypted, cut to a date range.

Records keep what they were written with plus ``chain`` (``<folder>/<log name>``), ``replica`` (which
process wrote it, see ``replica_label``) and ``at`` (the timestamp as an aware UTC datetime). Nothing here
prints a record.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from ...serve.audit_files import GENESIS
from ...serve.audit_verify import read_chains, verify_chains
from ...serve.escalation import EscalationQueue, QueueError
from ...serve.outcome import parse_time
from ...serve.queue_sql import display, sqlite_path
from ...serve.resolutions import RESOLUTION

PERIODS = ("daily", "weekly")
MAIN_REPLICA = "main"  # the chain named by the log name itself (the process without a replica name)


class ReportError(ValueError):
    """A report that cannot be made as asked (bad range, unreadable or encrypted log without its key, a queue
    that cannot be opened)."""


def day_range(date_from: dt.date, date_to: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start of date_from, start of the day after date_to) in UTC; both days are included. ReportError for a
    range that ends before it starts or whose end has no next day (the last date Python can hold)."""
    if date_to < date_from:
        raise ReportError(f"--to {date_to} is before --from {date_from}; give the first day, then the last")
    if date_to >= dt.date.max:
        raise ReportError(f"--to {date_to} is the last date there is, so the range has no end to count up to; "
                          f"give the real last day of the report (at most {dt.date.max - dt.timedelta(days=1)})")
    start = dt.datetime.combine(date_from, dt.time(), dt.UTC)
    return start, dt.datetime.combine(date_to + dt.timedelta(days=1), dt.time(), dt.UTC)


def period_of(moment: dt.datetime, period: str | None, date_from: dt.date, date_to: dt.date) -> str:
    """The period a moment falls in: the day, the ISO week (Monday first), or the whole range."""
    if period == "daily":
        return moment.date().isoformat()
    if period == "weekly":
        year, week, _ = moment.isocalendar()
        return f"{year}-W{week:02d}"
    return f"{date_from.isoformat()}..{date_to.isoformat()}"


@dataclass
class Collected:
    """What a report reads: verification of every chain, and the records."""

    verification: dict[str, dict]
    records: list[dict]  # every verified record of every chain, any date (resolutions may come after the range)
    test_times: list[dt.datetime | None] = field(default_factory=list)  # of the test-mode records left out
    undated: int = 0
    notes: list[str] = field(default_factory=list)

    def tests_left_out(self, start: dt.datetime, end: dt.datetime) -> int:
        """How many test-mode records made in [start, end) were left out (the report's range, not the log's)."""
        return sum(1 for at in self.test_times if at is not None and start <= at < end)

    @property
    def verified(self) -> bool:
        return all(not r["errors"] for r in self.verification.values())

    def problems(self) -> list[str]:
        return [f"{Path(chain).name}: {e}" for chain, r in self.verification.items() for e in r["errors"]]


def replica_label(chain: str, name: str = "audit.jsonl", folder: str | None = None) -> str:
    """``audit-r2.jsonl`` -> ``r2``, the log name itself -> ``main``, read against the configured ``name``
    (a hyphen in it, ``so8t-audit.jsonl``, is no replica); ``folder`` tells the same chain name in
    different log folders apart (``r1/main``, ``r2/main``)."""
    stem, suffix = Path(name).stem, Path(name).suffix
    replica = MAIN_REPLICA
    if chain != name and chain.startswith(f"{stem}-") and chain.endswith(suffix):
        replica = chain[len(stem) + 1:len(chain) - len(suffix)]
    return f"{folder}/{replica}" if folder else replica


def _folder_labels(folders: list[Path]) -> dict[Path, str | None]:
    """No label for one folder; otherwise each folder's name, or its whole path where two names are alike."""
    if len(folders) < 2:
        return {folder: None for folder in folders}
    names = [folder.name for folder in folders]
    return {folder: folder.name if folder.name and names.count(folder.name) == 1 else str(folder)
            for folder in folders}


def collect(folders: list[str | Path] | str | Path, key: str | bytes | None = None,
            hmac_key: str | bytes | None = None, include_tests: bool = False, name: str = "audit.jsonl") -> Collected:
    """Verify every chain of ``folders``, then read their records (decrypted with ``key``); test-mode
    records are left out (and counted) unless ``include_tests``; one folder may be given bare."""
    if not isinstance(include_tests, bool):  # the string "false" is truthy: test records would count unasked
        raise ReportError(f"include_tests must be True or False, got {include_tests!r}")
    unique: dict[Path, Path] = {}
    for folder in map(Path, [folders] if isinstance(folders, str | Path) else folders):
        unique.setdefault(folder.resolve(), folder)  # a folder given twice (logs, logs/) is read once
    folders = list(unique.values())
    if not folders:  # the report would say "audit chains verified (0 chains)" over no decisions
        raise ReportError("no log folder given: name the folder(s) that hold the audit log")
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        raise ReportError(f"no log folder at {', '.join(missing)}")
    verification = verify_chains(folders, name, hmac_key)
    records, tests, undated, unreadable = [], [], 0, []
    unverified = {"appended": 0, "outside": 0}
    labels = _folder_labels(folders)
    owners: dict = {}
    try:
        for folder in folders:
            for chain, record in read_chains(folder, name, key, unreadable):
                _refuse_a_copy(owners, record, str(folder / chain))
                where = _outside_verified(record, verification.get(str(folder / chain)))
                if where is not None:  # never checked: written since (a live gate), or in no verified stretch
                    unverified[where] += 1
                    continue
                if record.get("test") and not include_tests:
                    tests.append(parse_time(record.get("timestamp")))
                    continue
                at = parse_time(record.get("timestamp"))
                if at is None:
                    undated += 1
                    continue
                records.append({**record, "chain": str(folder / chain), "at": at,
                                "replica": replica_label(chain, name, labels[folder])})
    except ValueError as exc:  # encrypted without the key, or with another key
        raise ReportError(str(exc)) from None
    notes = [f"{undated} record(s) without a readable timestamp were left out"] if undated else []
    notes += [f"{problem}: this report does not count them" for problem in unreadable]
    if unverified["appended"]:
        notes.append(f"{unverified['appended']} record(s) written after the chains were verified were left out (a "
                     "report counts only verified records; the next one counts them)")
    if unverified["outside"]:
        notes.append(f"{unverified['outside']} record(s) outside the verified stretch of their chain were left out")
    return Collected(verification, records, tests, undated, notes)


def _refuse_a_copy(owners: dict, record: dict, chain: str) -> None:
    """ReportError when a record was read from another chain before: a backup or a restored copy given beside the
    live folder would count every decision twice. A record is known by its hash (an encrypted one, decrypted, by
    its place after the record before it; two chains' first records share that place, so those are not compared)."""
    identity = record.get("hash") or (None if record.get("prev_hash") == GENESIS else
                                      (record.get("seq"), record.get("prev_hash")))
    if identity is None:
        return
    if (owner := owners.setdefault(identity, chain)) != chain:
        raise ReportError(f"{chain} and {owner} hold the same records (a copy of one chain, such as a backup or a "
                          "restored folder): give only one of the folders")


def _outside_verified(record: dict, verification: dict | None) -> str | None:
    """None for a record in the stretch of its chain that ``verify`` walked, else why not: ``appended`` past its
    end (the gate keeps writing between verifying and reading, and a line added by hand lands there too) or
    ``outside`` it (a chain that could not be walked, a record without a sequence number)."""
    first, last, seq = (verification or {}).get("first_seq"), (verification or {}).get("last_seq"), record.get("seq")
    if first is None or last is None or not isinstance(seq, int) or isinstance(seq, bool) or seq < first:
        return "outside"
    return "appended" if seq > last else None


def open_queue(target: str | Path, key: str | bytes | None = None) -> EscalationQueue:
    """The escalation queue that confirms the log's resolutions, opened as it stands: a mistyped ``--db`` must
    neither create an empty queue nor make every resolution look uncommitted."""
    try:
        path = sqlite_path(target)
        if path is not None and not path.is_file():
            raise QueueError(f"no escalation queue at {path}")
        return EscalationQueue(target, create=False, encryption_key=key)
    except (QueueError, ValueError) as exc:
        raise ReportError(f"--db {display(target)}: the escalation queue cannot be read: {exc}") from None


def queue_history(queue: EscalationQueue, records: list[dict]) -> dict[str, list[dict]]:
    """case id -> the queue's resolution rows, for every case the records hold a ``resolution`` of."""
    cases = sorted(c for c in {r.get("case_id") for r in records if r.get("event") == RESOLUTION} if isinstance(c, str))
    try:
        history = {case_id: queue.history(case_id) for case_id in cases}
        if cases and not any(history.values()) and not any(_holds(queue, case_id) for case_id in cases):
            raise ReportError(f"--db {queue.where} holds none of the {len(cases)} escalation case(s) the logs record "
                              f"resolutions of (e.g. {cases[0]}): another service's queue? Give the queue this "
                              "service writes, or leave --db out to count the log's resolutions as written")
        return history
    except QueueError as exc:
        raise ReportError(f"the escalation queue {queue.where} cannot be read: {exc}") from None


def _holds(queue: EscalationQueue, case_id: str) -> bool:
    try:
        queue.get(case_id)
        return True
    except KeyError:
        return False
