"""Inputs the gate must survive with its record: a client value no store can hold, values Python cannot print,
stdin lines Python cannot parse, and a long stdin file (decided in chunks, each under the decision limit)."""

import io
import json
import time

import pytest
import torch

from so8t_lib.cli import runtime as cli_runtime
from so8t_lib.serve.fields import as_text, bounded, masked_bounded
from so8t_lib.serve.request_checks import MAX_CLIENT_CHARS, Unparsed, checked_client
from tests.test_runtime import FakeDecider, _agent, _records

ESCALATE_PROBS = (0.3, 0.3, 0.4)


def _deep(levels: int) -> list:
    value: list = []
    for _ in range(levels):
        value = [value]
    return value


class _BadRepr:
    def __repr__(self):
        raise KeyError("no")


class _BadLen(list):
    def __len__(self):
        raise OSError("no")


@pytest.mark.parametrize("make, shown", [
    (lambda: 10 ** 5000, "<int of about 5001 digits: ValueError>"),
    (lambda: -(10 ** 5000), "<int of about 5001 digits: ValueError>"),
    (lambda: _deep(100_000), "<list of 1 items: RecursionError>"),
    (lambda: {"a": _deep(100_000)}, "<dict of 1 items: RecursionError>"),
    (lambda: [10 ** 5000], "<list of 1 items: ValueError>"), (_BadRepr, "<_BadRepr: KeyError>"),
    (lambda: _BadLen([1]), "<_BadLen: OSError>"), (lambda: list(range(50)), "<list of 50 items>"),
    (lambda: 12, "12"), (lambda: b"\xff", "\ufffd"),
], ids=["huge-int", "huge-negative-int", "deep-list", "deep-dict", "list-of-huge-int", "bad-repr", "bad-len",
        "long-list", "int", "bytes"])
def test_as_text_never_raises_and_describes_what_it_cannot_show(make, shown):
    value = make()
    assert as_text(value, 40) == shown
    assert bounded(value, 40) == shown and masked_bounded(value, 40) == shown


@pytest.mark.parametrize("value, kept", [
    ("team-a", True), ("a" * MAX_CLIENT_CHARS, True), ("チーム", True),
    ("\ud800", False), ("a\x00b", False), ("tab\there", False), ("", False), ("a" * (MAX_CLIENT_CHARS + 1), False),
    ({"k": 1}, False), (["x"], False), (5, False), (b"team-a", False), (None, False),
], ids=repr)
def test_only_a_plain_storable_client_name_counts(value, kept):
    class Sub(str):
        pass

    assert checked_client(value) == (value if kept else None)
    assert checked_client(Sub("team-a")) is None  # a plain str only: a subclass may print as anything


@pytest.mark.parametrize("probs", [ESCALATE_PROBS, (0.95, 0.03, 0.02)], ids=["escalate", "allow"])
def test_a_client_no_store_can_hold_costs_neither_the_record_nor_the_case(tmp_path, probs):
    """A Python caller's item with an odd ``client`` (the HTTP service sets a key name): decided as one without a
    client, recorded once, its case queued (not left in the spool, retried forever)."""
    agent = _agent(tmp_path, FakeDecider(probs), generate_responses=False)
    bad = ["\ud800", {"k": 1}, ["x"], "a\x00b", "x" * 10_000, 10 ** 5000]
    items = [{"user_request": "please review my contract", "client": c} for c in bad]
    items += [{"user_request": 5, "client": "\udcff"}, {"user_request": "please review my contract", "client": "team-a"},
              {"user_request": 10 ** 5000, "client": "team-b"}]
    results = agent.run_batch(items)
    records = _records(tmp_path)
    assert sorted(r["request_id"] for r in records) == sorted(r["request_id"] for r in results)  # one each
    assert agent.audit_failures == 0 and agent.desk.spool.count() == 0
    for item, result in zip(items, results):
        assert "not recorded" not in (result["error"] or "")
        if result["decision"] == "ESCALATE":
            assert result["escalation_status"] == "queued", result["error"]
            expected = item["client"] if item["client"] in ("team-a", "team-b") else None
            assert agent.queue.get(result["escalation_id"])["client"] == expected
    assert [r["decision"] for r in results[-3:-1]] == ["ESCALATE", "ESCALATE" if probs == ESCALATE_PROBS else "ALLOW"]


def test_a_value_python_cannot_print_still_fails_closed_with_its_record(tmp_path):
    agent = _agent(tmp_path, FakeDecider((0.95, 0.03, 0.02)), generate_responses=False)
    big, deep = 10 ** 5000, _deep(100_000)
    results = agent.run_batch([{"user_request": big}, {"user_request": "hello", "user_id": big},
                               {"user_request": "hello", "context": deep}, {"user_request": deep},
                               {"user_request": _BadRepr()}, {"user_request": "経費の締め日は?"}])
    assert [r["decision"] for r in results] == ["ESCALATE"] * 5 + ["ALLOW"]
    assert all(r["error"].startswith("invalid input") for r in results[:5])
    records = _records(tmp_path)
    assert len(records) == 6 and agent.audit_failures == 0
    by_id = {r["request_id"]: r for r in records}
    assert by_id[results[0]["request_id"]]["input"] == "<int of about 5001 digits: ValueError>"
    assert by_id[results[3]["request_id"]]["input"] == "<list of 1 items: RecursionError>"


def test_stdin_lines_python_cannot_parse_fail_closed_alone(tmp_path):
    lines = [b'{"user_request": "How do I file expenses?"}', b'{"user_request": ' + b"1" * 5000 + b"}",
             b'{"user_request": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", b'{"user_request": "What is 2+2?"}']
    items = cli_runtime.read_items(iter(line + b"\n" for line in lines))
    assert isinstance(items[1], Unparsed) and "line 2: not readable JSON (ValueError: Exceeds the limit" in items[1].reason
    assert isinstance(items[2], Unparsed) and "line 3: not readable JSON (nested too deep)" in items[2].reason
    results = _agent(tmp_path, FakeDecider((0.95, 0.03, 0.02)), generate_responses=False).run_batch(items)
    assert [r["decision"] for r in results] == ["ALLOW", "ESCALATE", "ESCALATE", "ALLOW"]
    assert len(_records(tmp_path)) == 4


def test_a_stdin_line_sets_only_the_requests_own_fields():
    line = b'{"user_request": "hi", "context": "c", "user_id": "u1", "client": "team-a", "other": 1}\n'
    assert cli_runtime.read_items([line]) == [{"user_request": "hi", "context": "c", "user_id": "u1"}]
    assert cli_runtime.read_items([b'["a list"]\n']) == [["a list"]]  # not an object: fails closed as before


class _PerRequestDecider(FakeDecider):
    """Takes ``seconds`` per request of a pass (a healthy model: a pass's time grows with its size); a request
    naming "refuse" is refused, any other allowed, so the output order can be checked."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds, self.passes = seconds, []

    def decide(self, requests, contexts=None, batch_size=32, progress=False):
        self.passes.append(len(requests))
        time.sleep(self.seconds * len(requests))
        return torch.tensor([(0.05, 0.9, 0.05) if "refuse" in r else (0.95, 0.03, 0.02) for r in requests])


def _run_cli(monkeypatch, capsys, agent, stdin: bytes) -> tuple[int, list[dict], str]:
    class _Loaded:
        @staticmethod
        def from_config(path, overrides=(), **kwargs):
            return agent

    monkeypatch.setattr(cli_runtime, "Agent", _Loaded)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    code = cli_runtime.main(["--config", "unused.yaml", "--test-mode"])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


@pytest.mark.timeout(120)
def test_a_long_stdin_file_is_decided_in_chunks_each_under_the_decision_limit(tmp_path, monkeypatch, capsys):
    """120 lines at 10 ms each take 1.2 s in one pass, past the 0.5 s limit (every line escalated as a timeout);
    in chunks of service.max_batch (8: 80 ms) each pass is well inside it."""
    decider = _PerRequestDecider(0.01)
    agent = _agent(tmp_path, decider, generate_responses=False)
    agent.config.service.max_batch = 8
    texts = [f"request {i} {'refuse' if i % 3 == 0 else 'fine'}" for i in range(120)]
    stdin = "".join(json.dumps({"user_request": t}) + "\n" for t in texts).encode()
    code, results, _ = _run_cli(monkeypatch, capsys, agent, stdin)
    assert code == 0 and max(decider.passes) <= 8 and sum(decider.passes) == 120
    assert [r["decision"] for r in results] == ["REFUSE" if "refuse" in t else "ALLOW" for t in texts]  # in order
    assert sorted(r["request_id"] for r in _records(tmp_path)) == sorted(r["request_id"] for r in results)


def test_the_cli_decides_every_line_around_unreadable_ones_and_ignores_a_client(tmp_path, monkeypatch, capsys):
    agent = _agent(tmp_path, FakeDecider(ESCALATE_PROBS), generate_responses=False)
    stdin = (b'{"user_request": "contract check", "client": "\\ud800"}\n'
             b'{"user_request": "hello", "client": {"k": 1}}\n'
             b'{"user_request": "hello", "client": "team-a"}\n'
             b'{"user_request": ' + b"1" * 5000 + b'}\n'
             + b"[" * 100_000 + b"\n"
             b'{"user_request": "the last one"}\n')
    code, results, err = _run_cli(monkeypatch, capsys, agent, stdin)
    assert code == cli_runtime.EXIT_UNREADABLE_LINES  # two lines were no request: said, not exit 0
    assert len(results) == 6 and all(r["decision"] == "ESCALATE" for r in results)
    assert [r["line"] for r in results] == [1, 2, 3, 4, 5, 6] and "2 stdin line(s)" in err
    assert all(r["escalation_status"] == "queued" for r in results)
    assert all(agent.queue.get(r["escalation_id"])["client"] is None for r in results)  # never from stdin
    assert "not readable JSON" in results[3]["error"] and "not readable JSON" in results[4]["error"]
    assert len(_records(tmp_path)) == 6 and agent.audit_failures == 0


@pytest.mark.timeout(120)
def test_a_long_list_from_python_is_decided_in_passes_of_max_batch(tmp_path):
    """run_batch gave a Python caller's whole list to one pass under one decision_timeout_s: 120 requests at 10 ms
    each (1.2 s) against a 0.5 s limit came back escalated as timeouts, with a healthy model."""
    decider = _PerRequestDecider(0.01)
    agent = _agent(tmp_path, decider, generate_responses=False)
    agent.config.service.max_batch = 8
    texts = [f"request {i} {'refuse' if i % 3 == 0 else 'fine'}" for i in range(120)]
    results = agent.run_batch([{"user_request": t} for t in texts])
    assert max(decider.passes) <= 8 and sum(decider.passes) == 120
    assert [r["decision"] for r in results] == ["REFUSE" if "refuse" in t else "ALLOW" for t in texts]
    assert len(_records(tmp_path)) == 120
