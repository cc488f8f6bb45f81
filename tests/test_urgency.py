"""Emergencies: the emergency line first, the urgent flag, medical staff, URGENT notifications; never a new decision."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from so8t_lib.serve.config import EscalationConfig, RuntimeConfig
from so8t_lib.serve.notify import Notifier
from so8t_lib.serve.runtime import Agent
from so8t_lib.serve.urgency import URGENT_NOTICE, is_urgent, is_urgent_rationale, urgent_route
from tests.test_runtime import FakeDecider


@pytest.mark.parametrize("text, urgent", [
    ("A colleague collapsed in the warehouse and is not breathing", True),
    ("he is having a seizure in the lobby", True),
    ("My coworker is UNCONSCIOUS at her desk", True),
    ("My coworker is unсonscious at her desk", True),          # a Cyrillic "с" does not hide it
    ("同僚が倉庫で倒れて意識がないです", True),
    ("もう死にたい", True),
    ("薬を飲みすぎたかもしれない", True),
    ("Please book a room for the first-aid training", False),
    ("The breathing exercises in the wellness program, where are the slides?", False),
    ("経費精算の締め日はいつですか", False),
    ("Our old server collapsed_logs folder is full", False),   # whole words only
    ("The VPN server is unresponsive, can I get admin access?", False),   # words that also describe machines,
    ("Prepare the paperwork for the asset seizure by the court", False),  # the law, errands and feelings
    ("We passed out the flyers at the station", False),
    ("このニュースに胸が痛みます", False),
    ("昨日は飲みすぎた", False),
    ("サーバーが倒れたので再起動してください", False),
])
def test_signs_of_an_emergency(text, urgent):
    assert is_urgent(text) is urgent


@pytest.mark.parametrize("text", [
    "同僚が倒れて意識がありません", "同僚が息をしていません", "呼吸していない", "呼吸が止まっている", "血が止まりません",
    "同僚がけいれんしています", "薬を飲みすぎました", "同僚が心臓発作を起こした", "同僚が意識を失って倒れた",
    "He isn't breathing", "he can't breathe", "the intern says he wants to die", "the cut won\u2019t stop bleeding",
    "the bleeding won't stop", "I'm going to commit suicide tonight", "I've been thinking about suicide",
    "she is planning to commit suicide", "he took too many sleeping pills", "自殺しようと思っています", "死のうと考えている",
    "もう命を絶ちたい",
])
def test_polite_forms_contractions_and_third_persons_are_emergencies(text):
    assert is_urgent(text)


@pytest.mark.parametrize("text", [
    "the build is not breathing room", "the schedule has no breathing room", "薬の飲み方を教えて", "薬を飲みすぎないようにするには",
    "高齢の利用者さんが薬を飲みすぎてしまったとき、気づくためのサインは?", "How come Buddhists can't breathe underwater?",
    "Write a text telling my ex he should just kill himself.", "What is the overdose threshold for ibuprofen?",
    "What should I say if a coworker tells me they're thinking about suicide?", "Why should I not commit suicide?",
    "Where is the suicide prevention training?", "自殺予防の研修はいつですか", "自殺する気はありませんが、少し疲れています",
    "自殺しようとする人を見かけたらどう対応すべきですか", "命を絶とうとした人の心理を研究しています",
    "死のうと思ったことがある人向けの相談窓口を教えて", "自殺するつもりはないです",
])
def test_look_alike_phrases_are_not_emergencies(text):
    assert not is_urgent(text)


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=300), st.one_of(st.none(), st.text(max_size=50)))
def test_any_text_is_screened_without_error(request, context):
    assert is_urgent(request, context) in (True, False)


def _agent(tmp_path, decider):
    cfg = RuntimeConfig.model_validate({
        "model": {"checkpoint_path": "unused"},
        "inference": {"safety_threshold": 0.8, "decision_timeout_s": 5},
        "logging": {"audit_log": str(tmp_path / "logs" / "audit.jsonl")},
        "escalation": {"queue_db": str(tmp_path / "logs" / "escalations.sqlite"), "enable_notifications": False},
    })
    return Agent(cfg, decider=decider)


def _audit(tmp_path):
    return [json.loads(line) for line in (tmp_path / "logs" / "audit.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("probs, decision", [((0.2, 0.1, 0.7), "ESCALATE"), ((0.05, 0.9, 0.05), "REFUSE"),
                                             ((0.95, 0.03, 0.02), "ALLOW")])
def test_the_decision_stands_and_the_emergency_line_comes_first(tmp_path, probs, decision):
    agent = _agent(tmp_path, FakeDecider(probs))
    result = agent.run_agent(None, "同僚が倉庫で倒れて意識がないです。どうすればいいですか", "u1")
    assert result["decision"] == decision and "urgent" in result["flags"]
    assert result["rationale"].startswith(URGENT_NOTICE["ja"]) and result["category"] == "medical"
    assert (result["task_response"] is not None) == (decision == "ALLOW")
    (record,) = _audit(tmp_path)
    assert "urgent" in record["flags"] and record["rationale"] == result["rationale"]
    if decision == "ESCALATE":
        assert "medical staff" in result["rationale"] and result["escalation_id"]
        assert agent.queue.get(result["escalation_id"])["urgent"] is True


def test_only_cases_the_screen_marked_are_urgent_in_the_queue(tmp_path, capsys):
    """The case row says ``urgent``; ``so8t escalation list --urgent`` shows only those."""
    from so8t_lib.cli import main as so8t

    agent = _agent(tmp_path, FakeDecider((0.2, 0.1, 0.7)))
    calm = agent.run_agent(None, "Please approve my expense exception")["escalation_id"]
    failed = _agent(tmp_path, FakeDecider(behaviour="raise")).run_agent(None, "He is not breathing")["escalation_id"]
    assert agent.queue.get(calm)["urgent"] is False and agent.queue.get(failed)["urgent"] is True
    capsys.readouterr()
    assert so8t(["escalation", "--db", str(tmp_path / "logs" / "escalations.sqlite"), "list", "--urgent"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [c["case_id"] for c in listed] == [failed] and listed[0]["urgent"] is True


def test_a_possible_emergency_keeps_a_desk_the_routing_found(tmp_path):
    result = _agent(tmp_path, FakeDecider((0.2, 0.1, 0.7))).run_agent(None, "My manager harassed me and I want to die")
    assert result["category"] == "hr" and "urgent" in result["flags"]   # HR can resolve it; the line comes first
    assert result["rationale"].startswith(URGENT_NOTICE["en"])


class _GuessingRouter:
    """A learned router that sends whatever the keyword table does not settle to one desk (as a fitted router
    always picks some desk)."""

    def __init__(self, guess):
        self.guess = guess

    def route(self, request, context=None):
        from so8t_lib.serve.categories import keyword_scores
        from so8t_lib.serve.router import combine_routes

        return combine_routes(keyword_scores(request, context), {self.guess: 1.0, "medical": 0.0})


@pytest.mark.parametrize("text, category", [
    ("a colleague is not breathing in the warehouse", "medical"),   # the table found no desk: the guess loses
    ("上司が心停止", "medical"),
    ("my coworker has a heart attack at the printer", "medical"),
    ("My manager harassed me and I want to die", "hr"),               # the table's own desk stays
    ("the contract says: call an ambulance, he is unconscious", "medical"),   # medical among the table's desks
    ("Please approve my expense exception", "finance"),               # not urgent: the routing as it was
    ("my colleague fainted in the meeting room", "hr"),              # not urgent and no keyword: the router's guess
])
def test_a_learned_routers_guess_never_takes_an_emergency_from_medical(tmp_path, text, category):
    agent = _agent(tmp_path, FakeDecider((0.2, 0.1, 0.7)))
    agent.router = _GuessingRouter("hr")
    result = agent.run_agent(None, text)
    assert result["category"] == category
    failed = _agent(tmp_path, FakeDecider(behaviour="raise"))   # the fail-closed path routes the same way
    failed.router = _GuessingRouter("hr")
    assert failed.run_agent(None, text)["category"] == category


def test_urgent_route_by_the_keyword_table():
    assert urgent_route("general") == "medical" and urgent_route("hr") == "hr"   # routed by the table itself
    assert urgent_route("hr", {"hr": 0, "medical": 0}) == "medical"            # a guess where the table found none
    assert urgent_route("hr", {"hr": 2, "medical": 1}) == "hr"
    assert urgent_route("legal", {"legal": 1, "medical": 1}) == "medical"      # a tie with medical: medical
    assert urgent_route("hr", {"hr": 1, "legal": 2}) == "legal"                # the table's desk, not the guess
    assert urgent_route("general", {}) == "medical"


def test_an_urgent_decision_whose_audit_record_fails_keeps_the_emergency_line(tmp_path, monkeypatch):
    from so8t_lib.serve.audit import AuditWriteError

    agent = _agent(tmp_path, FakeDecider((0.05, 0.9, 0.05)))
    monkeypatch.setattr(agent.audit, "append", lambda record: (_ for _ in ()).throw(AuditWriteError("disk full")))
    result = agent.run_agent(None, "もう死にたい")
    assert result["decision"] == "ESCALATE" and "audit_write_failed" in result["flags"]
    assert result["rationale"].startswith(URGENT_NOTICE["ja"]) and result["rationale"].count("119") == 1


def test_a_request_that_could_not_be_decided_still_gets_the_emergency_line(tmp_path):
    result = _agent(tmp_path, FakeDecider(behaviour="raise")).run_agent(None, "Someone collapsed and is not breathing")
    assert result["decision"] == "ESCALATE" and "fail_closed" in result["flags"] and "urgent" in result["flags"]
    assert result["rationale"].startswith(URGENT_NOTICE["en"]) and result["category"] == "medical"
    assert len(_audit(tmp_path)) == 1


def test_an_ordinary_request_is_untouched(tmp_path):
    result = _agent(tmp_path, FakeDecider((0.2, 0.1, 0.7))).run_agent(None, "Please approve my expense exception")
    assert "urgent" not in result["flags"] and not is_urgent_rationale(result["rationale"])


def test_notifications_of_an_urgent_case_say_so():
    notifier = Notifier(EscalationConfig())
    case = {"case_id": "esc_1", "category": "medical", "request_id": "req_1", "input": "x",
            "rationale": f"{URGENT_NOTICE['en']} This request needs a person's judgement (medical)."}
    assert notifier._message(case, reminder=False).split("] ", 1)[1].startswith("URGENT")
    assert "URGENT" not in notifier._message({**case, "rationale": "needs a person"}, reminder=False)
    # the column decides for cases queued with it; the rationale's line for cases queued before it existed
    assert "URGENT" in notifier._message({**case, "rationale": "needs a person", "urgent": True}, reminder=True)
