"""What a first-day user meets: a wrong folder for `so8t audit show`, output piped into `head`, and the case id
of an escalation shown by `so8t runtime --pretty`."""

import io
import subprocess
import sys

import pytest

from so8t_lib.cli import audit as cli_audit
from so8t_lib.cli import runtime as cli_runtime
from so8t_lib.serve import audit
from tests.test_runtime import FakeDecider, _agent


def _fill(folder, n: int, name: str = "audit.jsonl") -> None:
    log = audit.AuditLog(folder / name)
    for i in range(n):
        log.append({"request_id": f"req_{i}", "input": f"request {i} " + "x" * 200, "decision": "ALLOW"})


def test_audit_show_names_a_wrong_target_instead_of_printing_nothing(tmp_path, capsys):
    """A typo in the folder, the log file instead of its folder, or a replica's chain under the default name
    printed nothing and exited 0: it read as "no records"."""
    _fill(tmp_path, 2, "audit-r2.jsonl")
    for target, said in ((tmp_path / "nope", "no folder"), (tmp_path / "audit-r2.jsonl", "is a file; pass its folder"),
                         (tmp_path, "no audit log audit.jsonl .* it holds audit-r2.jsonl: pick one with --name")):
        with pytest.raises(SystemExit, match=f"error: .*{said}"):
            cli_audit.main(["show", str(target)])
    assert cli_audit.main(["show", str(tmp_path), "--name", "audit-r2.jsonl"]) == 0
    assert capsys.readouterr().out.count('"request_id"') == 2


def test_audit_show_names_lines_that_are_no_record_instead_of_passing_over_them(tmp_path, capsys):
    """A damaged log printed only its good records and exited 0, as if the rest had never been decided; the live
    file's last line (a write in progress, or cut by a crash: verify's torn tail) is not damage."""
    _fill(tmp_path, 3)
    log = tmp_path / "audit.jsonl"
    lines = log.read_bytes().split(b"\n")
    log.write_bytes(b"\n".join([lines[0], b"\xff\xfe not a record", lines[1], b'{"seq": "x"}', lines[2], b'{"seq": 3, "ha']))
    with pytest.raises(SystemExit, match=r"error: 2 line\(s\) are not audit records \(audit\.jsonl:2, audit\.jsonl:4\); "
                                         "run: so8t audit verify"):
        cli_audit.main(["show", str(tmp_path)])
    assert capsys.readouterr().out.count('"request_id"') == 3  # the good records are still shown
    for tail in (b'{"seq": 3, "ha', b'{"seq": 3, "ha\n'):  # only a torn tail, as verify calls it: not damage
        log.write_bytes(b"\n".join([lines[0], lines[1], lines[2], tail]))
        assert cli_audit.main(["show", str(tmp_path)]) == 0
        assert cli_audit.main(["verify", str(tmp_path)]) == 0


def test_output_piped_into_a_reader_that_stops_early_ends_without_a_traceback(tmp_path):
    _fill(tmp_path, 2000)
    shell = (f"{sys.executable} -m so8t_lib audit show {tmp_path} | head -c 100 > /dev/null; "
             "echo \"so8t=${PIPESTATUS[0]}\" >&2")
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr
    assert "so8t=141" in done.stderr  # as a program stopped by SIGPIPE


def test_pretty_output_names_the_escalation_case(tmp_path, monkeypatch, capsys):
    """--pretty said "passed to ..." but not the case id an operator needs for history or resolve."""
    agent = _agent(tmp_path, FakeDecider((0.3, 0.3, 0.4)), generate_responses=False)

    class _Loaded:
        @staticmethod
        def from_config(path, overrides=(), **kwargs):
            return agent

    monkeypatch.setattr(cli_runtime, "Agent", _Loaded)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b'{"user_request": "a contract question"}\n')))
    assert cli_runtime.main(["--config", "unused.yaml", "--pretty"]) == 0
    shown = capsys.readouterr().out
    assert "ESCALATE" in shown and "escalation: esc_" in shown and "(queued)" in shown
