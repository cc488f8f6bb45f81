"""so8t report --db: the escalation queue, not the audit log, says which resolutions happened.

A resolve killed between its audit record and the queue's commit (kill -9, the OOM killer) leaves a
``resolution`` record while the case stays open. Read alone, the log made that a resolution (its time the
first resolution's, and the reviewer's retry a supersede); with the queue the report keeps only the records the
queue holds and says how many it left out. The kill is played in process as tests/test_resolution_kill.py
plays it."""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3

import pandas as pd
import pytest
from ops_fixtures import TextDecider, runtime_config
from test_resolution_kill import one_decided_one_killed

from so8t_lib.cli import main as so8t
from so8t_lib.serve.resolutions import resolve_audited
from so8t_lib.serve.runtime import Agent
from so8t_lib.workbench.reports import ReportError, make_report

TODAY = dt.datetime.now(dt.UTC).date()
FROM, TO = TODAY - dt.timedelta(days=1), TODAY + dt.timedelta(days=1)  # whatever the clock says near midnight
RANGE = ["--from", FROM.isoformat(), "--to", TO.isoformat()]


@pytest.fixture
def killed(tmp_path, monkeypatch):
    """(log folder, queue, phantom case, decided case): bob resolved one case; alice's ALLOW of the other was
    written to the log and never committed by the queue."""
    logs = tmp_path / "logs"
    phantom, decided = one_decided_one_killed(logs, monkeypatch)
    queue = logs / "escalations.sqlite"
    with sqlite3.connect(queue) as db:
        assert db.execute("SELECT status FROM cases WHERE case_id = ?", (phantom,)).fetchone() == ("open",)
    return logs, queue, phantom, decided


def _cases(report) -> dict[str, dict]:
    return {row["case_id"]: row for row in report.tables["escalations"].to_dict("records")}


def test_with_the_queue_a_resolution_it_never_committed_is_left_out_and_counted(killed):
    logs, queue, phantom, decided = killed
    report, _ = make_report([logs], FROM, TO, queue=queue)
    s = report.summary
    assert (s["escalations_opened"], s["escalations_resolved"], s["resolutions_not_in_queue"]) == (2, 1, 1)
    cases = _cases(report)
    assert cases[phantom]["status_at_cutoff"] == "open" and cases[phantom]["resolutions"] == 0
    assert pd.isna(cases[phantom]["human_decision"]) and pd.isna(cases[phantom]["first_resolved_at"])
    assert (cases[decided]["status_at_cutoff"], cases[decided]["human_decision"]) == ("resolved", "REFUSE")

    alone, _ = make_report([logs], FROM, TO)  # without the queue: as before, the log alone
    assert alone.summary["escalations_resolved"] == 2 and "resolutions_not_in_queue" not in alone.summary
    assert (_cases(alone)[phantom]["status_at_cutoff"], _cases(alone)[phantom]["human_decision"]) == ("resolved", "ALLOW")


def test_a_retry_after_the_kill_is_one_resolution_not_a_supersede(killed):
    logs, queue, phantom, _ = killed
    agent = Agent(runtime_config(logs), decider=TextDecider())  # the reviewer resolves again
    retried = resolve_audited(agent.queue, agent.audit, phantom, "REFUSE", "alice")["resolution"]
    agent.close()
    report, _ = make_report([logs], FROM, TO, queue=queue)
    case = _cases(report)[phantom]
    assert (case["human_decision"], case["resolutions"], case["status_at_cutoff"]) == ("REFUSE", 1, "resolved")
    assert case["first_resolved_at"] >= retried["decided_at"][:19]  # the retry's time, not the killed attempt's
    assert report.summary["resolutions_not_in_queue"] == 1  # the killed attempt stays in the log, unpaired
    assert int(report.tables["escalation_summary"]["superseded"].sum()) == 0
    alone, _ = make_report([logs], FROM, TO)
    assert _cases(alone)[phantom]["resolutions"] == 2 and int(alone.tables["escalation_summary"]["superseded"].sum()) == 1


def test_the_command_shows_the_count_on_its_line_and_the_page_only_with_db(killed, tmp_path, capsys):
    logs, queue, _, _ = killed
    assert so8t(["report", "--logs", str(logs), *RANGE, "--db", str(queue), "--out", str(tmp_path / "q")]) == 0
    out = capsys.readouterr().out
    assert "2 escalations, 1 resolved" in out and "1 record(s) it does not hold" in out
    (folder,) = (tmp_path / "q").iterdir()
    assert json.loads((folder / "summary.json").read_text(encoding="utf-8"))["summary"]["resolutions_not_in_queue"] == 1
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert 'id="queue-check"' in page and "1 resolution record(s)" in page

    assert so8t(["report", "--logs", str(logs), *RANGE, "--out", str(tmp_path / "log")]) == 0
    out = capsys.readouterr().out
    assert "2 escalations, 2 resolved" in out and "does not hold" not in out
    (folder,) = (tmp_path / "log").iterdir()
    assert "resolutions_not_in_queue" not in json.loads((folder / "summary.json").read_text(encoding="utf-8"))["summary"]
    assert 'id="queue-check"' not in (folder / "report.html").read_text(encoding="utf-8")


def test_a_queue_that_cannot_be_opened_is_an_error_naming_it_and_nothing_is_written(killed, tmp_path):
    logs = killed[0]
    missing = tmp_path / "typo.sqlite"
    with pytest.raises(SystemExit, match=re.escape(f"error: --db {missing}: the escalation queue cannot be read")):
        so8t(["report", "--logs", str(logs), *RANGE, "--db", str(missing), "--out", str(tmp_path / "out")])
    assert not missing.exists() and not (tmp_path / "out").exists()  # no empty queue made, no report written
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).close()
    with pytest.raises(ReportError, match="not an escalation queue"):
        make_report([logs], FROM, TO, tmp_path / "out", queue=other)
    assert not (tmp_path / "out").exists()


def test_another_services_queue_holding_none_of_the_logs_cases_is_refused(killed, tmp_path):
    """Every resolution looked "never committed" and was left out: the report counted no resolution at all."""
    from so8t_lib.serve.escalation import EscalationQueue

    logs = killed[0]
    elsewhere = tmp_path / "elsewhere.sqlite"
    EscalationQueue(elsewhere).close()  # a real queue, of another service, holding none of these cases
    with pytest.raises(SystemExit, match=r"elsewhere.sqlite holds none of the 2 escalation case\(s\).*another serv"):
        so8t(["report", "--logs", str(logs), *RANGE, "--db", str(elsewhere), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    report, _ = make_report([logs], FROM, TO, queue=killed[1])  # this service's own queue still reads
    assert report.summary["resolutions_not_in_queue"] == 1
