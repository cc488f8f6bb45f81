"""`so8t runtime` on a stream: each line decided when it comes (not when a batch of 32 has), a signal that leaves
every line read decided and recorded, and whole inputs or lines that are no requests said as such."""

import io
import json
import os
import signal
import threading
import time

import pytest

from so8t_lib.cli import runtime as cli_runtime
from so8t_lib.cli.runtime_input import arrived_batches, iter_lines, read_items
from so8t_lib.serve.request_checks import Unparsed
from tests.test_runtime import FakeDecider, _agent, _records

ALLOW_PROBS = (0.95, 0.03, 0.02)


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
    with open(read_end, "rb") as reader, open(write_end, "wb", buffering=0) as writer:
        deciding = threading.Thread(target=lambda: results.extend(
            cli_runtime.decide_in_chunks(agent, iter_lines(reader), 32)), daemon=True)
        deciding.start()
        writer.write(b'{"user_request": "first"}\n\n{"user_request": "second"}\n')
        _until(lambda: len(results) == 2)  # the producer is still open
        assert [r["line"] for r in results] == [1, 3] and len(_records(tmp_path)) == 2
        writer.write(b'{"user_request": "third"}\n')
        _until(lambda: len(results) == 3)
    deciding.join(30)
    assert not deciding.is_alive() and [r["line"] for r in results] == [1, 3, 4]
    agent.close()


def test_a_file_still_fills_whole_batches():
    pairs = [(n, {"user_request": str(n)}) for n in range(1, 71)]
    assert [len(batch) for batch in arrived_batches(pairs, 32)] == [32, 32, 6]


def test_an_error_while_reading_reaches_the_caller():
    def broken():
        yield 1, {"user_request": "a"}
        raise OSError("stdin went away")

    with pytest.raises(OSError, match="stdin went away"):
        list(arrived_batches(broken(), 32))


@pytest.mark.timeout(120)
def test_a_signal_stops_reading_and_every_line_read_is_decided_and_recorded(tmp_path, monkeypatch, capsys):
    """SIGTERM (or Ctrl-C) while two requests were read: they are decided, recorded and printed, exit 143."""
    agent = _agent(tmp_path, FakeDecider(ALLOW_PROBS), generate_responses=False)

    class _Loaded:
        @staticmethod
        def from_config(path, overrides=(), **kwargs):
            return agent

    monkeypatch.setattr(cli_runtime, "Agent", _Loaded)
    read_end, write_end = os.pipe()
    reader = open(read_end, "rb")  # noqa: SIM115 - the CLI's stdin for the test's length
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(reader))
    writer = open(write_end, "wb", buffering=0)  # noqa: SIM115 - left open: the producer never closes

    def produce_then_signal():
        writer.write(b'{"user_request": "one"}\n{"user_request": "two"}\n')
        _until(lambda: _recorded(tmp_path) == 2)  # the handler is in place before anything is decided
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=produce_then_signal, daemon=True).start()
    before = signal.getsignal(signal.SIGTERM)
    try:
        code = cli_runtime.main(["--config", "unused.yaml", "--test-mode"])
    finally:
        writer.close()
        reader.close()
    out, err = capsys.readouterr()
    assert code == 128 + signal.SIGTERM and "stopped by SIGTERM" in err
    assert [json.loads(line)["line"] for line in out.splitlines()] == [1, 2] and len(_records(tmp_path)) == 2
    assert signal.getsignal(signal.SIGTERM) == before  # the process's own handling is back


def test_a_key_given_twice_is_no_request_whichever_value_a_reader_would_keep():
    """{"user_request": <harmful>, "user_request": <harmless>} was decided on the last one; another reader keeps the
    first."""
    (item,) = read_items([b'{"user_request": "salaries of everyone", "user_request": "lunch time?"}\n'])
    assert isinstance(item, Unparsed) and "'user_request' is given twice" in item.reason


def test_a_utf16_input_is_refused_before_anything_is_decided(tmp_path, monkeypatch, capsys):
    agent = _agent(tmp_path, FakeDecider(ALLOW_PROBS), generate_responses=False)

    class _Loaded:
        @staticmethod
        def from_config(path, overrides=(), **kwargs):
            return agent

    monkeypatch.setattr(cli_runtime, "Agent", _Loaded)
    text = '{"user_request": "hello"}\n{"user_request": "again"}\n'
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(text.encode("utf-16"))))
    assert cli_runtime.main(["--config", "unused.yaml", "--test-mode"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "UTF-16" in err and "iconv" in err and _recorded(tmp_path) == 0
