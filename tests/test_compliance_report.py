"""so8t report: verified first (and said so at the top), decisions by class, category and language,
escalations opened, resolved and overdue against the SLA, reviewers against the model's leaning,
fail-closed reasons, model versions, several replicas, encrypted logs, and no personal data anywhere
in what it writes."""

from __future__ import annotations

import datetime as dt
import importlib
import json

import pandas as pd
import pytest
from ops_fixtures import PLANTED_PERSONAL_DATA, build_ops_logs

from so8t_lib.cli import main as so8t
from so8t_lib.serve.audit import AuditLog
from so8t_lib.serve.outcome import parse_time
from so8t_lib.workbench.reports import ReportError, collect, make_report

UTC = dt.UTC


def _at(day: int, hour: int, minute: int = 0) -> str:
    return dt.datetime(2026, 11, day, hour, minute, tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _decision(log: AuditLog, n: int, when: str, decision: str, lean: str | None = None, **extra) -> dict:
    probs = {"ALLOW": (0.9, 0.05, 0.05), "REFUSE": (0.05, 0.9, 0.05), None: None,
             "lean-ALLOW": (0.5, 0.2, 0.3), "lean-REFUSE": (0.2, 0.5, 0.3)}[lean or (decision if decision != "ESCALATE"
                                                                                     else None)]
    record = {"event": "decision", "timestamp": when, "request_id": f"req_{n}", "user_id": "u1",
              "input": extra.pop("input", f"経費の質問 {n}"), "decision": decision, "rationale": "r",
              "human_required": decision == "ESCALATE", "model_version": extra.pop("model", "m@1"),
              "confidence_score": 0.5, "category": extra.pop("category", "finance"), "test": False,
              "probabilities": None if probs is None else dict(zip(("ALLOW", "REFUSE", "ESCALATE"), probs)),
              "flags": [], "error": None, "escalation_id": f"esc_{n}" if decision == "ESCALATE" else None, **extra}
    return log.append(record)


def _resolution(log: AuditLog, n: int, when: str, decision: str) -> None:
    log.append({"event": "resolution", "timestamp": when, "request_id": f"req_{n}", "case_id": f"esc_{n}",
                "human_decision": decision, "resolved_by": "Sato", "note": "see tanaka@example.com", "test": False})


@pytest.fixture
def november(tmp_path):
    """Three days of November 2026 in one chain, with everything a report must count."""
    log = AuditLog(tmp_path / "logs" / "audit.jsonl")
    _decision(log, 1, _at(2, 9), "ALLOW", input="How do I book a room? mail tanaka@example.com", category="none")
    _decision(log, 2, _at(2, 10), "REFUSE", category="security")
    _decision(log, 3, _at(2, 11), "ESCALATE", "lean-REFUSE", category="legal")  # resolved REFUSE in 2 min: agreed
    _resolution(log, 3, _at(2, 11, 2), "REFUSE")
    _decision(log, 4, _at(3, 9), "ESCALATE", "lean-REFUSE", input="Can I see the payroll?")  # ALLOW after 10 min:
    _resolution(log, 4, _at(3, 9, 10), "ALLOW")  # overridden, and overdue against a 5-minute SLA
    _decision(log, 5, _at(3, 12), "ESCALATE", flags=["fail_closed"], error="model error: RuntimeError: boom",
              model="m@2")  # fail-closed: no leaning; never resolved: open and overdue at the cutoff
    _decision(log, 6, _at(9, 8), "ESCALATE", "lean-ALLOW", model="m@2")  # resolved after the range: open then
    _resolution(log, 6, _at(11, 8), "ALLOW")
    _decision(log, 7, _at(3, 13), "ALLOW", test=True)  # test mode: left out
    log.append({"event": "mode_change", "timestamp": _at(3, 14), "mode": "emergency", "previous": "normal",
                "source": "api", "enabled": True, "by": "desk", "note": "incident 42", "test": False})
    _decision(log, 8, _at(1, 8), "ALLOW")  # before the range
    return tmp_path / "logs"


def test_the_numbers_of_a_report(november, tmp_path):
    report, folder = make_report([november], dt.date(2026, 11, 2), dt.date(2026, 11, 9), tmp_path / "reports",
                                 period="daily", sla_s=300, now=dt.datetime(2026, 12, 1, tzinfo=UTC))
    assert report.verified and report.summary["decisions"] == 6 and report.summary["test_records_left_out"] == 1
    decisions = report.tables["decisions"]
    assert decisions[decisions["period"] == "2026-11-02"].set_index("decision")["count"].to_dict() == {
        "ALLOW": 1, "REFUSE": 1, "ESCALATE": 1}
    assert set(decisions["lang"]) == {"ja", "en"}
    cases = report.tables["escalations"].set_index("case_id")
    assert cases.loc["esc_3", "agreement"] == True and not cases.loc["esc_3", "overdue"]  # noqa: E712
    assert cases.loc["esc_4", "agreement"] == False and cases.loc["esc_4", "overdue"]  # noqa: E712
    assert cases.loc["esc_4", "minutes_to_first_resolution"] == 10.0
    assert pd.isna(cases.loc["esc_5", "model_leaning"]) and cases.loc["esc_5", "status_at_cutoff"] == "open"
    assert cases.loc["esc_6", "status_at_cutoff"] == "open" and cases.loc["esc_6", "overdue"]  # resolved on the 11th
    summary = report.tables["escalation_summary"].set_index("period")
    assert summary.loc["2026-11-03", ["opened", "resolved", "overdue", "overridden"]].tolist() == [2, 1, 2, 1]
    assert report.tables["fail_closed"].to_dict("records") == [{"period": "2026-11-03", "reason": "model_error",
                                                                "count": 1}]
    assert report.tables["models"]["model_version"].tolist() == ["m@1", "m@2"]
    assert report.tables["mode_changes"]["mode"].tolist() == ["emergency"]
    weekly, _ = make_report([november], dt.date(2026, 11, 2), dt.date(2026, 11, 9), period="weekly",
                            now=dt.datetime(2026, 12, 1, tzinfo=UTC))
    assert sorted(weekly.tables["escalation_summary"]["period"]) == ["2026-W45", "2026-W46"]
    # the files: a page that says it verified, figures inline, a CSV per table, and no personal data at all
    html = (folder / "report.html").read_text(encoding="utf-8")
    assert html.index('data-verified="true"') < html.index("<h1>") and html.count("data:image/png;base64,") == 6
    assert pd.read_csv(folder / "escalations.csv")["case_id"].tolist() == ["esc_3", "esc_4", "esc_5", "esc_6"]
    assert json.loads((folder / "summary.json").read_text())["summary"]["escalations_overdue"] == 3
    written = "".join(p.read_text(encoding="utf-8") for p in folder.iterdir())
    assert "tanaka" not in written and "payroll" not in written and "incident 42" not in written


def test_a_chain_that_does_not_verify_is_reported_at_the_top_and_exits_1(november, tmp_path, capsys):
    live = november / "audit.jsonl"
    lines = live.read_text(encoding="utf-8").splitlines()
    edited = json.loads(lines[1])
    edited["decision"] = "ALLOW"
    lines[1] = json.dumps(edited, ensure_ascii=False)
    live.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code = so8t(["report", "--logs", str(november), "--from", "2026-11-02", "--to", "2026-11-09", "--out",
                 str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 1 and out.startswith("AUDIT CHAIN VERIFICATION FAILED") and "seq 1 was edited" in out
    html = next((tmp_path / "out").glob("*/report.html")).read_text(encoding="utf-8")
    assert html.index('data-verified="false"') < html.index("<h1>") and "seq 1 was edited" in html


def test_the_command_on_a_live_log_with_two_replicas(tmp_path, monkeypatch, capsys):
    logs = tmp_path / "logs"
    monkeypatch.setenv("SO8T_REPLICA", "r1")
    build_ops_logs(logs)
    monkeypatch.setenv("SO8T_REPLICA", "r2")
    build_ops_logs(logs, repeat_duplicate=False)
    today = dt.datetime.now(UTC).date().isoformat()
    code = so8t(["report", "--logs", str(logs), "--from", today, "--to", today, "--out", str(tmp_path / "out"),
                 "--sla-seconds", "3600"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("audit chains verified: 2 chain(s)")
    assert "23 decisions" in out and "1 fail-closed" not in out and "2 fail-closed" in out
    folder = next((tmp_path / "out").iterdir())
    models = pd.read_csv(folder / "models.csv")
    assert models["replicas"].tolist() == ["r1, r2"] and models["decisions"].tolist() == [23]
    cases = pd.read_csv(folder / "escalations.csv")
    # per replica: three reviewers agree with the model's leaning (one after superseding), one overrides it;
    # r1 also resolved the repeated request
    assert set(cases["replica"]) == {"r1", "r2"} and cases["agreement"].value_counts().to_dict() == {True: 7,
                                                                                                     False: 2}
    written = "".join(p.read_text(encoding="utf-8") for p in folder.iterdir())
    assert not [s for s in PLANTED_PERSONAL_DATA if s in written]


def test_an_encrypted_log_needs_its_key(tmp_path, monkeypatch):
    fernet = pytest.importorskip("cryptography.fernet")
    key = fernet.Fernet.generate_key().decode()
    log = AuditLog(tmp_path / "logs" / "audit.jsonl", encryption_key=key)
    _decision(log, 1, dt.datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "REFUSE")
    with pytest.raises(ReportError, match="records are encrypted; pass the key"):
        collect([tmp_path / "logs"])
    monkeypatch.setenv("SO8T_AUDIT_KEY", key)
    today = dt.datetime.now(UTC).date().isoformat()
    assert so8t(["report", "--logs", str(tmp_path / "logs"), "--from", today, "--to", today, "--out",
                 str(tmp_path / "out")]) == 0
    with pytest.raises(SystemExit, match="no log folder at"):
        so8t(["report", "--logs", str(tmp_path / "nope"), "--from", "2026-11-01", "--to", "2026-11-30"])


@pytest.mark.parametrize("damage", ["cut short", "corrupted"])
def test_a_damaged_rotated_file_is_a_failed_chain_and_a_note_and_the_rest_is_counted(tmp_path, capsys, damage):
    """A .gz cut short ends early and a corrupted one fails to inflate: the report is still written, marked
    unverified, names the file, and counts every record it could read."""
    log = AuditLog(tmp_path / "logs" / "audit.jsonl")
    for n in range(40):
        _decision(log, n, _at(2, 9), "ALLOW")
    log.rotate()
    _decision(log, 99, _at(2, 10), "REFUSE")
    gz = tmp_path / "logs" / "audit.jsonl.1.gz"
    data = bytearray(gz.read_bytes())
    if damage == "cut short":
        del data[len(data) // 2:]
    else:
        data[40:60] = bytes(20)
    gz.write_bytes(bytes(data))
    code = so8t(["report", "--logs", str(tmp_path / "logs"), "--from", "2026-11-02", "--to", "2026-11-02",
                 "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 1 and out.startswith("AUDIT CHAIN VERIFICATION FAILED") and "audit.jsonl.1.gz" in out
    summary = json.loads(next((tmp_path / "out").glob("*/summary.json")).read_text(encoding="utf-8"))
    assert summary["summary"]["decisions_refuse"] == 1 and summary["summary"]["decisions"] < 41
    assert any(n.startswith("audit.jsonl.1.gz: cannot be read to the end") for n in summary["notes"])


def test_a_folder_given_twice_is_counted_once(november):
    once, _ = make_report([november], dt.date(2026, 11, 2), dt.date(2026, 11, 9), now=dt.datetime(2026, 12, 1, tzinfo=UTC))
    twice, _ = make_report([november, f"{november}/", november / "."], dt.date(2026, 11, 2), dt.date(2026, 11, 9),
                           now=dt.datetime(2026, 12, 1, tzinfo=UTC))
    assert twice.summary == once.summary and once.summary["decisions"] == 6


def test_a_range_whose_first_records_were_rotated_away_says_its_counts_may_be_incomplete(tmp_path):
    log = AuditLog(tmp_path / "logs" / "audit.jsonl", max_bytes=1200, backup_count=1)
    for n in range(10):
        _decision(log, n, _at(2, 9 + n), "ALLOW")
    report, _ = make_report([tmp_path / "logs"], dt.date(2026, 11, 2), dt.date(2026, 11, 2),
                            now=dt.datetime(2026, 12, 1, tzinfo=UTC))
    assert report.verified and report.summary["decisions"] < 10
    assert any("were rotated away" in n and "may be incomplete" in n for n in report.notes), report.notes
    later, _ = make_report([tmp_path / "logs"], dt.date(2026, 11, 3), dt.date(2026, 11, 3),
                           now=dt.datetime(2026, 12, 1, tzinfo=UTC))
    assert not any("rotated away" in n for n in later.notes)  # the range starts after the first kept record


def test_a_range_the_logs_cannot_fill_says_so_on_the_terminal_and_the_page(november, tmp_path, capsys):
    """A mistyped year (or a month not over yet) must not read as a quiet month."""
    now = dt.datetime(2026, 11, 5, 12, tzinfo=UTC)
    report, _ = make_report([november], dt.date(2027, 11, 2), dt.date(2027, 11, 9), now=now)
    assert report.summary["decisions"] == 0
    assert any("starts after this report was made (2026-11-05T12:00:00+00:00)" in n for n in report.notes)
    assert any("no record falls in the range; the logs hold records from 2026-11-01T08:00:00+00:00 to 2026-11-11" in n
               for n in report.notes), report.notes
    running, _ = make_report([november], dt.date(2026, 11, 1), dt.date(2026, 11, 30), now=now)
    assert running.summary["decisions"] > 0 and not any("no record falls" in n for n in running.notes)
    assert any("has not ended: the counts cover it up to 2026-11-05T12:00:00" in n for n in running.notes)
    closed, _ = make_report([november], dt.date(2026, 11, 2), dt.date(2026, 11, 9),
                            now=dt.datetime(2026, 12, 1, tzinfo=UTC))
    assert not any("has not ended" in n or "no record falls" in n for n in closed.notes)
    assert so8t(["report", "--logs", str(november), "--from", "2025-11-01", "--to", "2025-11-30",
                 "--out", str(tmp_path / "reports")]) == 0
    assert "note: no record falls in the range" in capsys.readouterr().out


def test_the_sla_is_taken_as_given_even_zero_and_nonsense_is_refused(november, tmp_path, capsys):
    args = ["report", "--logs", str(november), "--from", "2026-11-02", "--to", "2026-11-09", "--out", str(tmp_path)]
    so8t([*args, "--sla-seconds", "0"])
    assert "(SLA 0 s)" in capsys.readouterr().out
    for bad in ("-5", "nan", "inf", "soon"):
        with pytest.raises(SystemExit):
            so8t([*args, "--sla-seconds", bad])
        assert "expected a number of seconds, 0 or more" in capsys.readouterr().err


def test_a_range_that_cannot_be_reported_on_exits_2_before_any_log_is_read(november, tmp_path, capsys):
    """9999-12-31 has no next day (the range's end was an OverflowError traceback), and a reversed range
    was found only after every chain had been verified and read: a missing folder here proves the order."""
    cases = (("2026-11-01", "9999-12-31", "is the last date there is"),
             ("2026-11-30", "2026-11-01", "is before --from 2026-11-30"))
    for logs in (november, tmp_path / "nope"):
        for first, last, said in cases:
            with pytest.raises(SystemExit) as stopped:
                so8t(["report", "--logs", str(logs), "--from", first, "--to", last, "--out", str(tmp_path / "out")])
            assert stopped.value.code == 2 and said in capsys.readouterr().err
            with pytest.raises(ReportError, match=said):
                make_report([logs], dt.date.fromisoformat(first), dt.date.fromisoformat(last))
    assert not (tmp_path / "out").exists()
    assert so8t(["report", "--logs", str(november), "--from", "2026-11-02", "--to", "9999-12-30", "--out",
                 str(tmp_path / "out")]) == 0                                     # the day before is fine
    assert "audit chains verified" in capsys.readouterr().out


def test_the_report_reads_the_chain_the_config_or_name_gives(tmp_path, capsys):
    """so8t report read only audit.jsonl: with logging.audit_log logs/gate.jsonl it verified a leftover audit.jsonl
    and reported 0 decisions, exit 0."""
    logs = tmp_path / "logs"
    _decision(AuditLog(logs / "audit.jsonl"), 1, _at(2, 9), "ALLOW")  # a leftover, not the service's log
    gate = AuditLog(logs / "gate.jsonl")
    for n in range(2, 5):
        _decision(gate, n, _at(2, 10), "REFUSE")
    config = tmp_path / "gate.yaml"
    config.write_text("model: {checkpoint_path: none}\nlogging: {audit_log: logs/gate.jsonl}\n", encoding="utf-8")
    common = ["report", "--logs", str(logs), "--from", "2026-11-01", "--to", "2026-11-30"]
    assert so8t([*common, "--config", str(config), "--out", str(tmp_path / "a")]) == 0
    assert "3 decisions (0 ALLOW, 3 REFUSE" in capsys.readouterr().out
    assert so8t([*common, "--name", "gate.jsonl", "--out", str(tmp_path / "b")]) == 0
    assert "3 decisions (0 ALLOW, 3 REFUSE" in capsys.readouterr().out
    assert so8t([*common, "--name", "other.jsonl", "--out", str(tmp_path / "c")]) == 1
    assert "no audit log (other.jsonl or a replica's chain)" in capsys.readouterr().out


def test_a_withdrawn_resolution_is_not_counted(tmp_path):
    """A resolution the queue never committed (followed by ``resolution_withdrawn``) was counted: the case read as
    resolved at the failed attempt, and a retry as superseding it."""
    log = AuditLog(tmp_path / "logs" / "audit.jsonl")
    _decision(log, 1, _at(2, 9), "ESCALATE", lean="lean-ALLOW")
    log.append({"event": "resolution", "timestamp": _at(2, 9, 5), "request_id": "req_1", "case_id": "esc_1",
                "human_decision": "REFUSE", "resolved_by": "Sato", "test": False, "attempt": "a1"})
    log.append({"event": "resolution_withdrawn", "timestamp": _at(2, 9, 5), "request_id": "req_1",
                "case_id": "esc_1", "attempt": "a1", "reason": "the queue did not commit it", "test": False})
    log.append({"event": "resolution", "timestamp": _at(2, 9, 30), "request_id": "req_1", "case_id": "esc_1",
                "human_decision": "ALLOW", "resolved_by": "Sato", "test": False, "attempt": "a2"})
    report, _ = make_report([tmp_path / "logs"], dt.date(2026, 11, 2), dt.date(2026, 11, 2),
                            now=dt.datetime(2026, 12, 1, tzinfo=UTC))
    case = report.tables["escalations"].set_index("case_id").loc["esc_1"]
    assert case["resolutions"] == 1 and case["human_decision"] == "ALLOW" and case["minutes_to_first_resolution"] == 30


def test_replicas_are_named_against_the_log_name_and_told_apart_by_folder(tmp_path):
    """A hyphen in the configured log name is no replica (so8t-audit.jsonl is the main chain), and the
    main chains of replicas in their own folders (--logs logs/r1 --logs logs/r2) are not all "main"."""
    day = dt.date(2026, 11, 2)
    _decision(AuditLog(tmp_path / "a" / "so8t-audit.jsonl"), 1, _at(2, 9), "ESCALATE", "lean-ALLOW", model="m@1")
    _decision(AuditLog(tmp_path / "a" / "so8t-audit-r2.jsonl"), 2, _at(2, 9), "ALLOW", model="m@2")
    report, _ = make_report([tmp_path / "a"], day, day, name="so8t-audit.jsonl", now=dt.datetime(2026, 12, 1, tzinfo=UTC))
    assert report.tables["models"][["model_version", "replicas"]].values.tolist() == [["m@1", "main"], ["m@2", "r2"]]
    assert report.tables["escalations"]["replica"].tolist() == ["main"]

    _decision(AuditLog(tmp_path / "logs" / "r1" / "audit.jsonl"), 3, _at(2, 9), "ALLOW", model="m@1")
    _decision(AuditLog(tmp_path / "logs" / "r2" / "audit.jsonl"), 4, _at(2, 9), "ALLOW", model="m@2")
    report, _ = make_report([tmp_path / "logs" / "r1", tmp_path / "logs" / "r2"], day, day,
                            now=dt.datetime(2026, 12, 1, tzinfo=UTC))
    assert report.tables["models"][["model_version", "replicas"]].values.tolist() == [["m@1", "r1/main"],
                                                                                      ["m@2", "r2/main"]]


def test_a_record_written_after_the_verification_is_not_counted(november, monkeypatch):
    """The gate keeps appending while a report is made: verify and read are two passes, and a record written
    between them (or a line added by hand there) was never checked, so the report leaves it out and says so."""
    collect_module = importlib.import_module("so8t_lib.workbench.reports.collect")  # the package's collect is a function
    verify = collect_module.verify_chains

    def verify_then_append(*args, **kwargs):
        reports = verify(*args, **kwargs)
        _decision(AuditLog(november / "audit.jsonl"), 9, _at(2, 15), "ALLOW")  # a real, well-chained record
        with open(november / "audit.jsonl", "a", encoding="utf-8") as log:  # and a forged one
            log.write(json.dumps({"event": "decision", "timestamp": _at(2, 16), "decision": "ALLOW", "seq": 999,
                                  "prev_hash": "0" * 64, "hash": "f" * 64, "test": False}) + "\n")
        return reports

    monkeypatch.setattr(collect_module, "verify_chains", verify_then_append)
    report, _ = make_report([november], dt.date(2026, 11, 2), dt.date(2026, 11, 9),
                            now=dt.datetime(2026, 12, 1, tzinfo=UTC))
    assert report.verified and report.summary["decisions"] == 6 and report.summary["decisions_allow"] == 1
    assert report.summary["records_verified"] == 12
    assert any(note.startswith("2 record(s) written after the chains were verified were left out")
               for note in report.notes)


def test_test_records_left_out_are_those_of_the_report_s_range(november):
    inside, _ = make_report([november], dt.date(2026, 11, 3), dt.date(2026, 11, 3))
    outside, _ = make_report([november], dt.date(2026, 10, 1), dt.date(2026, 10, 31))
    assert inside.summary["test_records_left_out"] == 1 and outside.summary["test_records_left_out"] == 0


@pytest.mark.parametrize("sla", [float("nan"), float("inf"), -1, True, "300"])
def test_an_sla_the_command_would_refuse_is_refused_by_the_library_too(november, tmp_path, sla):
    """Notebook 07 calls make_report directly: with a NaN SLA every case was within it and summary.json held NaN."""
    with pytest.raises(ReportError, match="the SLA must be a finite number of seconds"):
        make_report([november], dt.date(2026, 11, 2), dt.date(2026, 11, 9), tmp_path / "out", sla_s=sla)
    assert not (tmp_path / "out").exists()


def test_a_report_folder_holding_foreign_files_is_an_error_after_the_verification_header(november, tmp_path, capsys):
    """atomic_folder's CheckpointError was a traceback; now the outcome is printed, then the error, exit 1."""
    target = tmp_path / "out" / "compliance_2026-11-02_2026-11-09"
    target.mkdir(parents=True)
    (target / "mine.txt").write_text("x")
    with pytest.raises(SystemExit) as exc:
        so8t(["report", "--logs", str(november), "--from", "2026-11-02", "--to", "2026-11-09", "--out",
              str(tmp_path / "out")])
    assert "error: the report was not written" in str(exc.value.code) and "mine.txt" in str(exc.value.code)
    out = capsys.readouterr().out
    assert out.startswith("audit chains verified: 1 chain(s)") and "decisions" in out and "report:" not in out
    assert [p.name for p in target.iterdir()] == ["mine.txt"]


def test_a_timestamp_past_the_last_utc_moment_is_unreadable_and_the_report_is_written(tmp_path):
    """``9999-12-31T23:30:00-01:00`` is valid ISO, but its UTC time is past datetime.max: an OverflowError."""
    assert parse_time("9999-12-31T23:30:00-01:00") is None
    log = AuditLog(tmp_path / "logs" / "audit.jsonl")
    _decision(log, 1, _at(2, 9), "ALLOW")
    _decision(log, 2, "9999-12-31T23:30:00-01:00", "ALLOW")
    report, folder = make_report([tmp_path / "logs"], dt.date(2026, 11, 1), dt.date(2026, 11, 30), tmp_path / "out")
    assert report.verified and report.summary["decisions"] == 1 and (folder / "report.html").is_file()
    assert "1 record(s) without a readable timestamp were left out" in report.notes


@pytest.mark.parametrize("flag", ["false", "False", 0, None])
def test_include_tests_that_is_not_a_bool_is_refused_not_read_as_on(november, tmp_path, flag):
    """papermill -p include_tests false hands notebook 07 the string "false": it was truthy, so test records counted."""
    with pytest.raises(ReportError, match="include_tests must be True or False"):
        make_report([november], dt.date(2026, 11, 2), dt.date(2026, 11, 9), tmp_path / "out", include_tests=flag)
    assert not (tmp_path / "out").exists()


def test_no_log_folder_is_refused_not_reported_as_verified(tmp_path):
    """notebook 07 with logs [] wrote a report saying "audit chains verified (0 chain(s))" over no decisions."""
    with pytest.raises(ReportError, match="no log folder given"):
        make_report([], dt.date(2026, 11, 2), dt.date(2026, 11, 9), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_one_log_folder_given_bare_is_one_folder_not_its_characters(november):
    listed, _ = make_report([november], dt.date(2026, 11, 2), dt.date(2026, 11, 9))
    for bare in (str(november), november):  # papermill -p logs logs gives notebook 07 one string
        report, _ = make_report(bare, dt.date(2026, 11, 2), dt.date(2026, 11, 9))
        assert report.summary == listed.summary and list(report.verification) == list(listed.verification)


def test_a_copy_of_a_chain_given_beside_it_is_refused_not_counted_twice(november, tmp_path):
    """`so8t report --logs logs --logs backup/logs` counted every decision of the copied chain twice."""
    import shutil

    shutil.copytree(november, tmp_path / "backup" / "logs")
    with pytest.raises(ReportError, match="hold the same records .* give only one of the folders"):
        make_report([november, tmp_path / "backup" / "logs"], dt.date(2026, 11, 2), dt.date(2026, 11, 9),
                    tmp_path / "out")
    assert not (tmp_path / "out").exists()
    other = tmp_path / "other"  # another service's chain starts at the same place but holds other records
    _decision(AuditLog(other / "audit.jsonl"), 1, _at(2, 9), "ALLOW", category="none")
    report, _ = make_report([november, other], dt.date(2026, 11, 2), dt.date(2026, 11, 9))
    alone, _ = make_report([november], dt.date(2026, 11, 2), dt.date(2026, 11, 9))
    assert report.summary["decisions"] == alone.summary["decisions"] + 1
