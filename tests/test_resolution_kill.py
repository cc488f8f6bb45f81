"""A resolve killed between its audit record and the queue's commit (kill -9, the OOM killer, a forced stop)
leaves a ``resolution`` record that nothing withdraws while the case stays open. Retraining's extract read
that record as the reviewer's label; with the queue at hand it now keeps only what the queue holds.

The kill is played in process: the record is written, the queue's transaction is rolled back by an exception
nothing catches, and the withdrawal a living process would write is never written."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
from ops_fixtures import TextDecider, runtime_config

from so8t_lib.cli import main as so8t
from so8t_lib.serve import resolutions
from so8t_lib.serve.audit_verify import read_chains
from so8t_lib.serve.resolutions import held_by_queue, resolve_audited
from so8t_lib.serve.runtime import Agent
from so8t_lib.workbench import retrain
from so8t_lib.workbench.retrain.extract import _moment

PHANTOM = "Please approve an expense exception for the offsite"
DECIDED = "契約書の秘密保持条項を確認してほしい"


class _Killed(BaseException):
    """The process's end: nothing in it runs after this, not even an ``except BaseException``'s cleanup."""


@contextlib.contextmanager
def _killed_after_the_record(agent: Agent, monkeypatch: pytest.MonkeyPatch):
    """Inside: a resolve dies right after its audit record is written, before the queue commits."""
    written = agent.audit.append

    def append(record: dict) -> dict:
        out = written(record)
        if record.get("event") == "resolution":
            raise _Killed
        return out

    with monkeypatch.context() as patch:
        patch.setattr(agent.audit, "append", append)
        patch.setattr(resolutions, "_withdraw", lambda *args: None)  # a killed process withdraws nothing
        with pytest.raises(_Killed):
            yield


def _escalate(agent: Agent, text: str) -> str:
    result = agent.run_agent("", text, "u1")
    assert result["decision"] == "ESCALATE"
    return result["escalation_id"]


def _cases(queue) -> dict[str, tuple]:
    with sqlite3.connect(queue) as db:
        return {row[0]: row[1:] for row in db.execute("SELECT case_id, status, human_decision FROM cases")}


def one_decided_one_killed(logs: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """(phantom, decided) case ids under ``logs``: bob resolved one case; alice's ALLOW of the other was written to
    the log and never committed by the queue."""
    agent = Agent(runtime_config(logs), decider=TextDecider())
    phantom, decided = _escalate(agent, PHANTOM), _escalate(agent, DECIDED)
    resolve_audited(agent.queue, agent.audit, decided, "REFUSE", "bob", gate_label="REFUSE")
    with _killed_after_the_record(agent, monkeypatch):
        resolve_audited(agent.queue, agent.audit, phantom, "ALLOW", "alice", gate_label="ALLOW")
    agent.close()
    return phantom, decided


def test_extract_leaves_out_a_resolution_the_queue_never_committed_and_counts_it(tmp_path, monkeypatch, capsys):
    logs = tmp_path / "logs"
    queue = logs / "escalations.sqlite"
    phantom, decided = one_decided_one_killed(logs, monkeypatch)
    assert _cases(queue)[phantom] == ("open", None)  # nobody decided, as far as the queue knows

    rows, report = retrain.extract_rows([logs], queue=queue)
    assert [(r["case_id"], r["label"]) for r in rows] == [(decided, "REFUSE")]  # the phantom ALLOW is no label
    assert report["left_out"]["resolution_not_in_queue"] == 1
    out = tmp_path / "rows.jsonl"
    assert so8t(["retrain", "extract", "--logs", str(logs), "--db", str(queue), "--out", str(out)]) == 0
    assert "'resolution_not_in_queue': 1" in capsys.readouterr().out and out.read_text(encoding="utf-8").count("\n") == 1
    alone, report = retrain.extract_rows([logs])  # without the queue the log cannot tell (docs/runtime.md)
    assert {r["case_id"] for r in alone} == {phantom, decided} and report["left_out"]["resolution_not_in_queue"] == 0

    agent = Agent(runtime_config(logs), decider=TextDecider())  # the reviewer resolves again
    resolve_audited(agent.queue, agent.audit, phantom, "REFUSE", "alice", gate_label="REFUSE")
    agent.close()
    rows, report = retrain.extract_rows([logs], queue=queue)
    assert {r["case_id"]: r["label"] for r in rows} == {phantom: "REFUSE", decided: "REFUSE"}
    assert report["left_out"]["resolution_not_in_queue"] == 1  # the killed attempt stays in the log, unpaired


def test_a_killed_supersede_keeps_the_committed_decision_and_its_time(tmp_path, monkeypatch):
    """The same decision attempted again and killed: the row's time is the committed one's, not the attempt's."""
    logs = tmp_path / "logs"
    queue = logs / "escalations.sqlite"
    agent = Agent(runtime_config(logs), decider=TextDecider())
    case_id = _escalate(agent, DECIDED)
    committed = resolve_audited(agent.queue, agent.audit, case_id, "ALLOW", "bob", gate_label="ALLOW")["resolution"]
    for decision in ("REFUSE", "ALLOW"):
        with _killed_after_the_record(agent, monkeypatch):
            resolve_audited(agent.queue, agent.audit, case_id, decision, "alice", supersede=True, gate_label=decision)
    agent.close()
    assert _cases(queue)[case_id] == ("resolved", "ALLOW")
    (row,), report = retrain.extract_rows([logs], queue=queue)
    assert (row["label"], report["left_out"]["resolution_not_in_queue"]) == ("ALLOW", 2)
    (record,) = [r for _, r in read_chains(logs) if r.get("decided_at") == committed["decided_at"]
                 and r.get("resolved_by") == "bob"]
    assert row["decided_at"] == _moment(record["timestamp"])  # the later killed ALLOW's time would have won


def test_records_are_paired_with_queue_rows_on_their_stamp_or_their_time():
    """A record written since carries the row's ``decided_at``; an older one is paired by the time it was written
    (after the row's stamp was taken), one record per row."""
    rows = {"esc_1": [{"id": 7, "decided_at": "2026-12-01T10:05:00+00:00", "decision": "ALLOW", "decided_by": "alice"}]}
    base = {"event": "resolution", "case_id": "esc_1", "human_decision": "ALLOW", "resolved_by": "alice"}
    killed = {**base, "timestamp": "2026-12-01T10:01:00.000000Z"}  # before the row's transaction began
    retried = {**base, "timestamp": "2026-12-01T10:05:00.400000Z"}
    twice = {**base, "timestamp": "2026-12-01T10:06:00.000000Z"}  # a row holds one record
    assert held_by_queue([killed, retried, twice], rows) == ([retried], [killed, twice])
    stamped = {**base, "timestamp": "2026-12-01T10:05:00.400000Z", "decided_at": "2026-12-01T10:05:00+00:00"}
    other = {**stamped, "decided_at": "2026-12-01T10:04:59+00:00"}  # a killed attempt's own stamp
    assert held_by_queue([other, stamped], rows) == ([stamped], [other])
    assert held_by_queue([{**stamped, "resolved_by": "bob"}], rows)[0] == []
    assert held_by_queue([{**stamped, "human_decision": "REFUSE"}], rows)[0] == []
    assert held_by_queue([stamped], {}) == ([], [stamped])
