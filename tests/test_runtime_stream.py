"""`so8t runtime` on a stream: each line decided when it comes (not when a batch of 32 has), a signal that leaves
every complete line read decided and recorded (and the process exiting cleanly, not aborting on a reader left
blocked on stdin), a read error that costs no line read before it, and lines that are no requests said as such."""

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from so8t_lib.cli import runtime as cli_runtime
from so8t_lib.cli import runtime_input
from so8t_lib.cli.runtime_input import StdinBatches, read_items
from so8t_lib.serve.request_checks import Unparsed
from tests.test_runtime import FakeDecider, _agent, _records

ALLOW_PROBS = (0.95, 0.03, 0.02)
ROOT = Path(__file__).resolve().parents[1]


def _recorded(folder) -> int:
    """How many audit records the agent on ``folder`` has written (none before its log exists)."""
    return len(_records(folder)) if (folder / "logs" / "audit.jsonl").exists() else 0


def _until(predicate, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "waited too long"
        time.sleep(0.01)


@pytest.mark.timeout(120)
def test_lines_that_come_now_and_then_are_decided_as_they_come(tmp_path):
    """Two lines and a producer that stays open (`tail -f`): both decided before it closes, not held for 30 more."""
    agent = _agent(tmp_path, FakeDecider(ALLOW_PROBS), generate_responses=False)
    read_end, write_end = os.pipe()
    results: list[dict] = []
    with open(read_end, "rb") as reader:
        with open(write_end, "wb", buffering=0) as writer:
            deciding = threading.Thread(target=lambda: results.extend(
                cli_runtime.decide_in_chunks(agent, StdinBatches(reader, 32))), daemon=True)
            deciding.start()
            writer.write(b'{"user_request": "first"}\n\n{"user_request": "second"}\n')
            _until(lambda: len(results) == 2)  # the producer is still open
            assert [r["line"] for r in results] == [1, 3] and _recorded(tmp_path) == 2
            writer.write(b'{"user_request": "thi')  # a line written in two pieces is one line
            time.sleep(0.2)
            writer.write(b'rd"}\n')
            _until(lambda: len(results) == 3)
        deciding.join(30)  # the producer closed: the end of the input ends the batches
        assert not deciding.is_alive() and [r["line"] for r in results] == [1, 3, 4]
    agent.close()


def test_a_file_still_fills_whole_batches(tmp_path):
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps({"user_request": str(n)}) + "\n" for n in range(70)))
    with open(requests, "rb") as stream:
        assert [len(batch) for batch in StdinBatches(stream, 32)] == [32, 32, 6]
    assert [len(batch) for batch in StdinBatches(io.BytesIO(requests.read_bytes()), 32)] == [32, 32, 6]


@pytest.mark.parametrize("with_descriptor", [True, False])
def test_a_read_error_comes_after_the_lines_read_before_it(tmp_path, monkeypatch, with_descriptor):
    """EIO on a hung-up terminal: the three lines read before it were dropped with the batch being gathered."""
    lines = b"".join(json.dumps({"user_request": str(n)}).encode() + b"\n" for n in range(3))
    if with_descriptor:
        read_end, write_end = os.pipe()
        os.write(write_end, lines)
        reads = iter([lines])
        monkeypatch.setattr(runtime_input.os, "read", lambda fd, n: next(reads, None) or (_ for _ in ()).throw(
            OSError(5, "Input/output error")))
        stream = open(read_end, "rb")  # noqa: SIM115 - closed below
    else:
        def broken():
            yield from lines.splitlines(keepends=True)
            raise OSError(5, "Input/output error")

        stream = broken()
    batches = StdinBatches(stream, 32)
    handed = []
    with pytest.raises(OSError, match="Input/output error"):
        for batch in batches:
            handed += [item["user_request"] for _, item in batch]
    assert handed == ["0", "1", "2"]
    if with_descriptor:
        stream.close()
        os.close(write_end)


_CLI_ON_A_FAKE_MODEL = """
import sys
sys.path.insert(0, {root!r})
from pathlib import Path
from so8t_lib.cli import runtime as cli_runtime
from tests.test_runtime import FakeDecider, _agent

agent = _agent(Path({folder!r}), FakeDecider((0.95, 0.03, 0.02)), generate_responses=False)
cli_runtime.Agent = type("Loaded", (), {{"from_config": staticmethod(lambda *a, **k: agent)}})
sys.exit(cli_runtime.main(["--config", "unused.yaml", "--test-mode"]))
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_process_cleanly_with_every_line_read_decided(tmp_path, signum):
    """`tail -f | so8t runtime` then kill: the lines read are decided, recorded and printed, and the process exits
    128 + the signal; a reader thread left blocked on stdin made the interpreter abort at exit (134)."""
    script = textwrap.dedent(_CLI_ON_A_FAKE_MODEL).format(root=str(ROOT), folder=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    try:
        proc.stdin.write(b'{"user_request": "one"}\n{"user_request": "two"}\n{"user_requ')  # the last one unfinished
        proc.stdin.flush()
        results = [json.loads(proc.stdout.readline()) for _ in range(2)]
        proc.send_signal(signum)
        proc.wait(timeout=60)  # stdin stays open: the producer never closed it (communicate would)
        out, err = proc.stdout.read(), proc.stderr.read()
    finally:
        proc.kill()
        proc.stdin.close()
    assert proc.returncode == 128 + signum, err.decode()
    assert [r["line"] for r in results] == [1, 2] and out == b"" and _recorded(tmp_path) == 2
    assert b"Fatal Python error" not in err and b"stopped by" in err and b"11 byte(s) of a line" in err


def test_a_key_given_twice_is_no_request_whichever_value_a_reader_would_keep():
    """{"user_request": <harmful>, "user_request": <harmless>} was decided on the last one; another reader keeps the
    first."""
    (item,) = read_items([b'{"user_request": "salaries of everyone", "user_request": "lunch time?"}\n'])
    assert isinstance(item, Unparsed) and "'user_request' is given twice" in item.reason


def _run_main(tmp_path, monkeypatch, capsys, stdin: bytes):
    agent = _agent(tmp_path, FakeDecider(ALLOW_PROBS), generate_responses=False)
    monkeypatch.setattr(cli_runtime, "Agent", type("Loaded", (), {"from_config": staticmethod(lambda *a, **k: agent)}))
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = cli_runtime.main(["--config", "unused.yaml", "--test-mode"])
    return code, *capsys.readouterr()


def test_a_utf16_input_is_refused_before_anything_is_decided(tmp_path, monkeypatch, capsys):
    text = '{"user_request": "hello"}\n{"user_request": "again"}\n'
    code, out, err = _run_main(tmp_path, monkeypatch, capsys, text.encode("utf-16"))
    assert code == 2 and out == "" and "UTF-16" in err and "iconv" in err and _recorded(tmp_path) == 0


def test_lines_that_are_objects_without_a_request_count_as_no_request(tmp_path, monkeypatch, capsys):
    stdin = b'["a list"]\n"just text"\n{"usr_request": "typo"}\n{"user_request": "fine"}\n'
    code, out, err = _run_main(tmp_path, monkeypatch, capsys, stdin)
    assert code == cli_runtime.EXIT_UNREADABLE_LINES and "3 stdin line(s) gave no request" in err
    assert [json.loads(line)["decision"] for line in out.splitlines()] == ["ESCALATE"] * 3 + ["ALLOW"]


def test_a_closed_output_is_no_stdin_error(tmp_path, monkeypatch, capsys):
    """`so8t runtime < file | head -3` reported 'stdin could not be read' (exit 6): a broken pipe on stdout is the
    CLI's own (exit 141), and the input was fine."""
    class Closed(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", Closed())
    with pytest.raises(BrokenPipeError):
        _run_main(tmp_path, monkeypatch, capsys, b'{"user_request": "one"}\n{"user_request": "two"}\n')


def test_a_signal_the_process_was_started_ignoring_stays_ignored():
    """A script's background job starts with SIGINT ignored: the runtime took it over and stopped on a Ctrl-C meant
    for the shell."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with cli_runtime._stop_on_signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_closed_stdin_is_an_error_not_a_traceback(tmp_path, monkeypatch, capsys):
    agent = _agent(tmp_path, FakeDecider(ALLOW_PROBS), generate_responses=False)
    monkeypatch.setattr(cli_runtime, "Agent", type("Loaded", (), {"from_config": staticmethod(lambda *a, **k: agent)}))
    monkeypatch.setattr("sys.stdin", None)  # started with <&-
    assert cli_runtime.main(["--config", "unused.yaml", "--test-mode"]) == 2
    assert "no stdin to read requests from" in capsys.readouterr().err and _recorded(tmp_path) == 0
