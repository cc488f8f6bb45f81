"""The escalation desk's replay of the spool: an entry of the wrong shape is set aside for a person and the others
are still replayed; a backlog larger than the process's descriptor budget drains in one pass, in bounded batches,
each entry giving one queue case and one audit record."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import resource

import pytest
from desk_support import scratch_desk, spooled_case

from so8t_lib.serve import audit as audit_module
from so8t_lib.serve import escalation_desk
from so8t_lib.serve.escalation_desk import EscalationDesk
from so8t_lib.serve.spool import SUFFIX, UNREADABLE


@pytest.fixture
def desk(tmp_path):
    desk = scratch_desk(tmp_path)
    yield desk
    desk.close()


def _spool(desk: EscalationDesk, n: int, audited: bool = False) -> None:
    """An orphan: spooled, not queued (the queue was locked, or the process died); audited or not."""
    case, record = spooled_case(n)
    entry = desk.spool.put(case, record)
    if audited:
        desk.audit.append(record)
        entry.update(audited=True)
    entry.release()


def _decisions(tmp_path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in audit_module.read_records(tmp_path):
        if record.get("event") == "decision":
            counts[record["request_id"]] = counts.get(record["request_id"], 0) + 1
    return counts


BAD_ENTRIES = {
    "record null": {"record": None},
    "record a list": {"record": ["req_bad"]},
    "request_id unhashable": {"record": {"request_id": ["req_bad"]}},
    "case a list": {"case": ["esc_bad"]},
    "case_id a number": {"case": {"case_id": 7}},
    "input an object": {"case": {"case_id": "esc_bad", "input": {"text": "x"}}},
    "created_at not a time": {"case": {"case_id": "esc_bad", "created_at": "yesterday"}},
    "confidence text": {"case": {"case_id": "esc_bad", "confidence": "high"}},
    "flags text": {"record": {"request_id": "req_bad", "flags": "recovered"}},
    "queued text": {"queued": "no"},
}


@pytest.mark.parametrize("change", BAD_ENTRIES.values(), ids=BAD_ENTRIES.keys())
@pytest.mark.parametrize("as_update_line", [False, True], ids=["whole", "update-line"])
def test_an_entry_of_the_wrong_shape_is_set_aside_and_the_others_are_replayed(desk, tmp_path, caplog, change,
                                                                             as_update_line):
    """``"record": null`` passed the spool's check (it read only case.case_id), then an AttributeError failed every
    replay pass: the good orphans never reached the queue and the bad one was never set aside."""
    for n in range(3):
        _spool(desk, n)
    entry = {"case": {"case_id": "esc_bad", "request_id": "req_bad"}, "record": {"request_id": "req_bad"},
             "queued": False, "audited": False}
    lines = [entry, change] if as_update_line else [{**entry, **change}]  # a later line's changes are merged in
    bad = desk.spool.folder / f"esc_bad{SUFFIX}"
    bad.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with caplog.at_level(logging.ERROR, logger="so8t.escalation"):
        outcome = desk.replay()
    assert outcome == {"finished": ["esc_00000", "esc_00001", "esc_00002"], "failed": []}
    assert f"esc_bad{SUFFIX} could not be read (ValueError: its" in caplog.text
    assert not bad.exists() and bad.with_name(bad.name + UNREADABLE).is_file()  # kept for a person
    assert desk.spool.count() == 1  # the spooled gauge stays up until one looks
    assert [c["case_id"] for c in desk.store.list()] == ["esc_00000", "esc_00001", "esc_00002"]
    assert _decisions(tmp_path) == {"req_00000": 1, "req_00001": 1, "req_00002": 1}
    assert desk.replay() == {"finished": [], "failed": []}


def test_a_minimal_well_formed_entry_is_still_replayed(desk):
    desk.spool.put({"case_id": "esc_1"}, {"request_id": "req_1"}).release()
    assert desk.replay() == {"finished": ["esc_1"], "failed": []}


def _spool_fds(desk: EscalationDesk) -> int:
    """Descriptors this process holds open on spool entries (a locked entry holds one)."""
    folder = str(desk.spool.folder)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(folder)
        except OSError:
            continue
    return count


FREE_FDS = 64  # what the replay below may open: two batches' worth, far fewer than the backlog


def _limit_leaving(free: int) -> int:
    """The open-file limit under which this process can open exactly ``free`` more descriptors (a new one takes the
    lowest free number, so the gaps below the highest open one count)."""
    used = {int(fd) for fd in os.listdir("/proc/self/fd")}
    limit = 0
    while free:
        free -= limit not in used
        limit += 1
    return limit


def test_a_backlog_larger_than_the_open_file_limit_drains_in_one_pass(desk, tmp_path):
    """replay() locked every orphan at once: with more entries than descriptors it had none left for the queue,
    failed every entry, let them all go, and the next pass did the same; no case ever reached the queue."""
    backlog = 3 * escalation_desk.REPLAY_BATCH + 5
    for n in range(backlog):
        _spool(desk, n, audited=n % 2 == 0)
    for n in range(1, backlog, 4):  # audited by a process that died before it could mark the entry
        desk.audit.append(spooled_case(n)[1])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (_limit_leaving(FREE_FDS), hard))
    try:
        outcome = desk.replay()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert outcome["failed"] == [] and sorted(outcome["finished"]) == [f"esc_{n:05d}" for n in range(backlog)]
    assert desk.spool.count() == 0 and desk.store.count()["cases"] == backlog
    assert _decisions(tmp_path) == {f"req_{n:05d}": 1 for n in range(backlog)}  # one record each, none twice


def test_a_replay_holds_one_batch_at_a_time_and_skips_an_entry_another_replica_holds(desk, tmp_path, monkeypatch):
    monkeypatch.setattr(escalation_desk, "REPLAY_BATCH", 4)
    for n in range(10):
        _spool(desk, n)
    held = os.open(desk.spool.folder / f"esc_00005{SUFFIX}", os.O_RDWR)  # another replica is replaying it
    fcntl.flock(held, fcntl.LOCK_EX)
    seen = []
    real = desk._finish_orphan
    monkeypatch.setattr(desk, "_finish_orphan", lambda entry, present: (seen.append(_spool_fds(desk)),
                                                                           real(entry, present)))
    try:
        outcome = desk.replay()
    finally:
        os.close(held)
    assert outcome["failed"] == [] and "esc_00005" not in outcome["finished"] and len(outcome["finished"]) == 9
    assert max(seen) <= 4 + 1  # this batch's entries, and the other replica's lock
    assert _spool_fds(desk) == 0  # every entry let go
    assert desk.replay() == {"finished": ["esc_00005"], "failed": []}
    assert desk.store.count()["cases"] == 10 and _decisions(tmp_path) == {f"req_{n:05d}": 1 for n in range(10)}
