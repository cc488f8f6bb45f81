"""The escalation queue's contract, run on both stores: the SQLite file (the embedded default) and
PostgreSQL (a throwaway cluster started by tests/pg_support.py). Cases are added once, listed in order,
resolved once (a second resolution needs supersede, and a failed audit write resolves nothing), marked
overdue once, stored encrypted when a key is set; threads racing to resolve one case leave exactly one
resolution; and errors name the queue, never its password."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from pg_support import cluster

from so8t_lib.serve import escalation
from so8t_lib.serve.escalation import (
    AlreadyResolved,
    EscalationQueue,
    NothingToSupersede,
    QueueError,
    QueueUnavailable,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path):
    if request.param == "sqlite":
        return tmp_path / "cases.sqlite"
    return cluster().database()  # a fresh database on the PostgreSQL the tests started


@pytest.fixture
def queue(target):
    store = EscalationQueue(target, escalation_timeout_s=60)
    yield store
    store.close()


def _case(n: int, **extra) -> dict:
    return {"case_id": f"esc_{n:04d}", "request_id": f"req_{n:04d}", "user_id": "u1", "category": "legal",
            "input": f"request {n}", "rationale": "needs legal", "confidence": 0.4,
            "created_at": f"2026-11-0{1 + n % 9}T09:00:00+00:00", **extra}


def test_cases_are_added_once_and_listed_oldest_first(queue):
    assert isinstance(queue, escalation.CaseStore)
    assert [queue.add(_case(n)) for n in (3, 1, 2)] == [True, True, True]
    assert queue.add(_case(1, input="changed")) is False  # a replayed case changes nothing
    listed = queue.list()
    assert [c["case_id"] for c in listed] == ["esc_0001", "esc_0002", "esc_0003"]
    assert listed[0]["input"] == "request 1" and listed[0]["status"] == "open" and listed[0]["test"] is False
    assert queue.count() == {"cases": 3, "resolutions": 0}
    queue.add(_case(4, test=True))
    assert len(queue.list(include_tests=False)) == 3 and queue.get("esc_0004")["test"] is True
    with pytest.raises(KeyError, match="esc_9999"):
        queue.get("esc_9999")


def test_notifications_move_the_status_but_never_undo_a_resolution(queue):
    queue.add(_case(1))
    queue.add(_case(2))
    queue.record_notifications("esc_0001", [{"channel": "webhook", "ok": True}])
    queue.record_notifications("esc_0002", [{"channel": "none", "ok": False}])
    assert queue.get("esc_0001")["status"] == "notified" and queue.get("esc_0002")["status"] == "notify_failed"
    queue.resolve("esc_0001", "ALLOW", "Sato")
    queue.record_notifications("esc_0001", [{"channel": "webhook", "ok": False, "reminder": True}])
    case = queue.get("esc_0001")
    assert case["status"] == "resolved" and case["notifications"][-1]["reminder"] is True  # appended, not replaced
    assert [c["case_id"] for c in queue.list("notify_failed")] == ["esc_0002"]


def test_a_resolution_is_kept_a_second_needs_supersede_and_a_failed_audit_resolves_nothing(queue):
    queue.add(_case(1))

    def failing_audit(resolution):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        queue.resolve("esc_0001", "REFUSE", "Sato", before_commit=failing_audit)
    assert queue.get("esc_0001")["status"] == "open" and queue.history("esc_0001") == []
    with pytest.raises(NothingToSupersede, match=r"esc_0001 has no resolution \(open\): there is nothing to"):
        queue.resolve("esc_0001", "REFUSE", "Sato", supersede=True, before_commit=failing_audit)
    assert queue.get("esc_0001")["status"] == "open" and queue.history("esc_0001") == []
    seen = []
    first = queue.resolve("esc_0001", "ALLOW", " Sato ", "first look", before_commit=seen.append)
    assert first["human_decision"] == "ALLOW" and first["resolved_by"] == "Sato" and seen[0]["request_id"] == "req_0001"
    with pytest.raises(AlreadyResolved, match="already resolved as ALLOW by Sato"):
        queue.resolve("esc_0001", "REFUSE", "Suzuki")
    second = queue.resolve("esc_0001", "REFUSE", "Suzuki", "on reflection", supersede=True)
    assert second["resolution"]["supersedes"]["decision"] == "ALLOW"
    history = queue.history("esc_0001")
    assert [(h["decision"], h["decided_by"], h["note"]) for h in history] == [
        ("ALLOW", "Sato", "first look"), ("REFUSE", "Suzuki", "on reflection")]
    assert history[1]["supersedes"] == history[0]["id"] and queue.count()["resolutions"] == 2
    with pytest.raises(ValueError, match="decision must be one of"):
        queue.resolve("esc_0001", "ESCALATE", "x", supersede=True)
    with pytest.raises(KeyError):
        queue.resolve("esc_0404", "ALLOW", "x")


def test_overdue_cases_are_marked_once(queue):
    queue.add(_case(1, created_at="2026-11-01T09:00:00+00:00"))
    queue.add(_case(2, created_at="2026-11-01T09:00:30+00:00"))
    queue.add(_case(3, created_at="2026-11-01T09:00:00+00:00"))
    queue.resolve("esc_0003", "ALLOW", "Sato")
    at = dt.datetime(2026, 11, 1, 9, 1, 10, tzinfo=dt.UTC)
    assert queue.mark_overdue(at) == ["esc_0001"]  # due at 09:01:00; the second is due at 09:01:30
    assert queue.mark_overdue(at) == []
    assert queue.mark_overdue(at + dt.timedelta(minutes=1)) == ["esc_0002"]
    assert {c["case_id"] for c in queue.list(overdue_only=True)} == {"esc_0001", "esc_0002"}


def test_a_resolved_case_is_no_longer_overdue_but_keeps_when_it_was_marked(queue):
    """A case marked overdue stayed ``overdue: true`` and in ``list --overdue`` after a person resolved it."""
    queue.add(_case(1, created_at="2026-11-01T09:00:00+00:00"))
    at = dt.datetime(2026, 11, 1, 9, 1, 10, tzinfo=dt.UTC)
    assert queue.mark_overdue(at) == ["esc_0001"] and queue.get("esc_0001")["overdue"] is True
    queue.resolve("esc_0001", "REFUSE", "Sato")
    case = queue.get("esc_0001")
    assert case["overdue"] is False and case["overdue_at"] == escalation.iso(at)  # the history stays
    assert queue.list(overdue_only=True) == [] and queue.list()[0]["overdue"] is False
    assert queue.mark_overdue(at + dt.timedelta(hours=1)) == []


def test_redaction_blanks_only_old_resolved_texts_in_one_transaction(queue):
    for n in (1, 2, 3):
        queue.add(_case(n))
    queue.resolve("esc_0001", "REFUSE", "Sato", note="about Tanaka-san")
    queue.resolve("esc_0002", "ALLOW", "Ito", note="ok")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    assert queue.redact_resolved(later, dry_run=True) == ["esc_0001", "esc_0002"]

    def audit_fails(ids):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        queue.redact_resolved(later, before_commit=audit_fails)
    assert queue.get("esc_0001")["input"] == "request 1" and queue.history("esc_0001")[0]["note"] == "about [NAME]-san"
    seen = []
    assert queue.redact_resolved(later, before_commit=seen.append) == ["esc_0001", "esc_0002"] and seen == [
        ["esc_0001", "esc_0002"]]
    first = queue.get("esc_0001")
    assert (first["input"], first["user_id"], first["rationale"], first["note"]) == (None, None, None, None)
    assert (first["human_decision"], first["resolved_by"], first["category"]) == ("REFUSE", "Sato", "legal")
    assert [h["note"] for h in queue.history("esc_0001")] == [None]
    assert queue.get("esc_0003")["input"] == "request 3"                     # open: untouched
    assert queue.redact_resolved(later) == []                                 # nothing left to blank


def test_with_a_key_the_texts_are_stored_encrypted(target):
    fernet = pytest.importorskip("cryptography.fernet")
    key = fernet.Fernet.generate_key()
    sealed = EscalationQueue(target, encryption_key=key)
    sealed.add(_case(1, input="健康診断の結果"))
    sealed.resolve("esc_0001", "REFUSE", "Sato", note="内密に")
    plain = EscalationQueue(target)
    raw = plain.get("esc_0001")
    assert raw["input"].startswith("[encrypted") and plain.history("esc_0001")[0]["note"].startswith("[encrypted")
    assert sealed.get("esc_0001")["input"] == "健康診断の結果" and sealed.history("esc_0001")[0]["note"] == "内密に"
    sealed.close()
    plain.close()


def test_threads_racing_to_resolve_one_case_leave_exactly_one_resolution(target):
    stores = [EscalationQueue(target, timeout_s=10) for _ in range(4)]
    for n in range(6):
        stores[0].add(_case(n))
    outcomes: list[str] = []
    lock = threading.Lock()

    def resolve(store: EscalationQueue, case_id: str, who: str) -> None:
        try:
            store.resolve(case_id, "REFUSE", who)
            result = "ok"
        except AlreadyResolved:
            result = "already"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=resolve, args=(store, f"esc_{n:04d}", f"reviewer{i}"))
               for n in range(6) for i, store in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert outcomes.count("ok") == 6 and outcomes.count("already") == 18
    assert all(len(stores[0].history(f"esc_{n:04d}")) == 1 for n in range(6))
    for store in stores:
        store.close()


def test_create_false_refuses_a_target_that_is_not_a_queue(target, tmp_path):
    if isinstance(target, str):  # a server database without the tables
        with pytest.raises(QueueError, match="not an escalation queue \\(no cases table\\)"):
            EscalationQueue(target, create=False)
    else:
        with pytest.raises(QueueError, match="no escalation queue at"):
            EscalationQueue(target, create=False)
        assert not target.exists()


def test_an_unreachable_server_is_unavailable_and_its_password_is_never_shown():
    with pytest.raises(QueueUnavailable) as raised:
        EscalationQueue("postgresql://so8t:s3cret-pw@127.0.0.1:1/none", timeout_s=1, create=False)
    assert "does not answer" in str(raised.value) and "s3cret-pw" not in str(raised.value)
    with pytest.raises(QueueError, match="unsupported escalation queue URL"):
        EscalationQueue("mysql://u@h/db")


def test_the_urgent_column_is_stored_and_added_to_a_queue_made_before_it(target):
    """A queue from before the ``urgent`` column gets it on opening (NOT NULL, 0 for its old cases); new cases
    keep the flag they are added with."""
    from sqlalchemy import text

    store = EscalationQueue(target, escalation_timeout_s=60)
    store.add(_case(1))
    with store.engine.connect() as conn, conn.begin():
        conn.execute(text("ALTER TABLE cases DROP COLUMN urgent"))  # as a queue made by an earlier version
    store.close()
    reopened = EscalationQueue(target, escalation_timeout_s=60)
    try:
        assert reopened.get("esc_0001")["urgent"] is False
        reopened.add(_case(2, urgent=True))
        reopened.add(_case(3))
        assert [(c["case_id"], c["urgent"]) for c in reopened.list()] == [
            ("esc_0001", False), ("esc_0002", True), ("esc_0003", False)]
    finally:
        reopened.close()


def test_a_resolution_keeps_its_channel_and_the_column_is_added_to_a_queue_made_before_it(target):
    """``by`` is the name a reviewer types, and a desk's key may type anyone's: the history kept only that, so
    which key resolved a case was in the audit log alone."""
    from sqlalchemy import text

    store = EscalationQueue(target, escalation_timeout_s=60)
    for n in (1, 2, 3):
        store.add(_case(n))
    store.resolve("esc_0001", "REFUSE", by="Sato")
    with store.engine.connect() as conn, conn.begin():
        conn.execute(text("ALTER TABLE resolutions DROP COLUMN via"))  # as a queue made by an earlier version
    store.close()
    reopened = EscalationQueue(target, escalation_timeout_s=60)
    try:
        assert reopened.history("esc_0001")[0]["via"] is None  # not known for a resolution made before
        resolved = reopened.resolve("esc_0002", "ALLOW", by="Sato", via="api key hr-desk")
        assert resolved["resolution"]["via"] == "api key hr-desk"
        assert reopened.history("esc_0002")[0]["via"] == "api key hr-desk"
        reopened.resolve("esc_0003", "ALLOW", by="Ito")
        assert reopened.history("esc_0003")[0]["via"] == "command line"
    finally:
        reopened.close()
