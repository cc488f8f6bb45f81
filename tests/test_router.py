"""The learned escalation router: fit, the checked file format, the runtime's use of it, scoring by family."""

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from so8t_lib.cli import main as so8t
from so8t_lib.core.schema import ROUTE_CATEGORIES
from so8t_lib.eval.routing import family_bootstrap, score_routing
from so8t_lib.serve.categories import categorize
from so8t_lib.serve.config import RuntimeConfig
from so8t_lib.serve.router import RouterError, _digest, fit_router, load_router, router_text
from so8t_lib.serve.runtime import Agent
from tests.test_runtime import FakeDecider

# requests that name no keyword of the table, so only a learned router can tell their route
TOPICS = {
    "medical": ["I feel dizzy every morning, what should I do", "my colleague fainted in the meeting room",
                "朝からめまいがして立っていられません", "同僚が会議室で動かなくなりました", "chest pain since lunch",
                "熱が三日下がりません"],
    "legal": ["can we keep the customer list after the deal ends", "the supplier wants to change the terms of the NDA",
              "取引先が秘密保持の条件を変えたいと言っています", "顧客名簿を契約終了後も使ってよいですか",
              "a regulator sent us a letter", "当局から照会状が届きました"],
    "finance": ["please move 3 million yen to this new account today", "change the vendor's bank details",
                "今日中にこの新しい口座へ300万円を移してください", "取引先の振込先を変更して", "reimburse my taxi",
                "立替金の精算をお願いします"],
}


def _rows(topics=TOPICS, label="ESCALATE"):
    rows = []
    for category, texts in topics.items():
        for i, text in enumerate(texts):
            for variant, wrapped in enumerate((text, f"quick question: {text}", f"お疲れ様です。{text}")):
                rows.append({"id": f"{label}-{category}-{i}-{variant}", "family": f"{label}-{category}-{i}", "label": label,
                             "category": category, "user_request": wrapped, "context": ""})
    return rows


@pytest.fixture(scope="module")
def router():
    return fit_router(_rows(), source="tests")


def test_fit_learns_routes_the_keywords_miss_and_keywords_still_come_first(router):
    train_texts = [router_text(r["user_request"], r["context"]) for r in _rows()]
    assert np.mean(np.array(router.predict(train_texts)) == [r["category"] for r in _rows()]) > 0.9
    assert categorize("my colleague fainted in the meeting room") == "general"      # the table has no word for it
    assert router.route("my colleague fainted in the meeting room") == "medical"
    assert router.route("please check my vpn password reset") == "security"          # the table's own word wins
    assert set(router.classes) == {"medical", "legal", "finance"}
    assert router.fitted_on["by_category"] == {"finance": 18, "legal": 18, "medical": 18}


@pytest.mark.parametrize("keywords, learned, route", [
    ({"hr": 2, "legal": 1}, {"legal": 5.0, "hr": 0.0}, "hr"),          # one category leads: the table decides
    ({"hr": 1, "legal": 1}, {"legal": 5.0, "hr": 0.0}, "legal"),       # a tie: the router picks among the tied
    ({"hr": 0, "legal": 0}, {"legal": 0.1, "medical": 3.0}, "medical"),  # nothing found: the router decides
    ({"hr": 1, "legal": 1}, {"medical": 3.0}, "hr"),                   # tied desks it never saw: table order
    ({"hr": 1, "legal": 1}, {"medical": 9.0, "legal": 5.0, "hr": 0.0}, "legal"),  # only among the tied
])
def test_the_runtime_rule_combines_the_table_and_the_router(keywords, learned, route):
    from so8t_lib.serve.router import combine_routes

    assert combine_routes(keywords, learned) == route


def test_route_scores_only_when_the_table_cannot_decide(router, monkeypatch):
    calls = []
    real = router.scores
    monkeypatch.setattr(router, "scores", lambda texts: calls.append(texts) or real(texts))
    assert router.route("上司からのパワハラについて相談したい") == "hr" and calls == []      # one desk leads
    assert router.route("my colleague fainted in the meeting room") == "medical" and len(calls) == 1   # no hit
    # a tie (one legal word, one finance word): the router picks between those two only
    assert router.route("the contract says the invoice is due") in ("legal", "finance") and len(calls) == 2


def test_saved_router_routes_exactly_as_the_fitted_one(router, tmp_path):
    path = router.save(tmp_path / "router.json")
    loaded = load_router(path)
    texts = [router_text(r["user_request"], r["context"]) for r in _rows()] + ["", "??", "全く関係のない文"]
    assert np.array_equal(router.scores(texts), loaded.scores(texts))
    assert loaded.classes == router.classes and loaded.fitted_on == router.fitted_on


def _rewrite(path, change, keep_digest=False):
    payload = json.loads(path.read_text(encoding="utf-8"))
    change(payload)
    if not keep_digest:
        payload["sha256"] = _digest(payload)
    path.write_text(json.dumps(payload), encoding="utf-8")


@pytest.mark.parametrize("change, keep_digest, message", [
    (lambda p: p["coef"][0].__setitem__(0, 5.0), True, "do not match its sha256"),
    (lambda p: p["coef"][0].__setitem__(0, float("nan")), False, "NaN or infinite"),
    (lambda p: p["coef"].pop(), False, "coef has shape"),
    (lambda p: p["idf"].__setitem__(0, 0.5), False, "idf values below 1"),
    (lambda p: p.__setitem__("classes", ["medical", "legal", "pharmacy"]), False, "route categories"),
    (lambda p: p.__setitem__("vocabulary", p["vocabulary"][:1] * len(p["vocabulary"])), False, "distinct strings"),
    (lambda p: p.__setitem__("format", "so8t-router/0"), False, "not a so8t-router/1 file"),
    (lambda p: p.__setitem__("intercept", ["a", "b", "c"]), False, "not an array of numbers"),
    (lambda p: p.pop("idf"), False, "idf is missing"),
    (lambda p: p.__setitem__("classes", [["medical"], ["legal"], ["finance"]]), False, "route categories"),
])
def test_a_damaged_router_file_is_refused_by_name(router, tmp_path, change, keep_digest, message):
    path = router.save(tmp_path / "router.json")
    _rewrite(path, change, keep_digest)
    with pytest.raises(RouterError, match=message):
        load_router(path)


def test_unreadable_or_missing_router_files_say_what_to_do(router, tmp_path):
    path = router.save(tmp_path / "router.json")
    path.write_bytes(path.read_bytes()[:1000])                      # torn
    with pytest.raises(RouterError, match="unreadable JSON.*so8t router fit"):
        load_router(path)
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(RouterError, match="format 'list'"):
        load_router(path)
    with pytest.raises(RouterError, match="no router file there.*escalation.router: null"):
        load_router(tmp_path / "absent.json")
    path.write_text("{}", encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(path), "read_text", lambda *a, **k: (_ for _ in ()).throw(OSError(5, "Input/output error")))
        with pytest.raises(RouterError, match="cannot be read .Input/output error"):
            load_router(path)


def test_fit_needs_two_route_categories():
    with pytest.raises(RouterError, match="at least two route categories"):
        fit_router(_rows({"medical": TOPICS["medical"]}))
    with pytest.raises(RouterError, match="found none"):
        fit_router([{"user_request": "hi", "context": "", "category": "none"}])


def test_a_failed_write_keeps_the_old_router(router, tmp_path, monkeypatch):
    path = router.save(tmp_path / "router.json")
    before = path.read_bytes()
    monkeypatch.setattr("so8t_lib.core.io.os.replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        router.save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["router.json"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=st.text(max_size=200), context=st.one_of(st.none(), st.text(max_size=50)))
def test_every_text_gets_a_route(router, request, context):
    assert router.route(request, context) in ROUTE_CATEGORIES


def _agent(tmp_path, router_path):
    cfg = RuntimeConfig.model_validate({
        "model": {"checkpoint_path": "unused"},
        "inference": {"safety_threshold": 0.8, "decision_timeout_s": 5},
        "logging": {"audit_log": str(tmp_path / "logs" / "audit.jsonl")},
        "escalation": {"queue_db": str(tmp_path / "logs" / "escalations.sqlite"), "enable_notifications": False,
                       "router": str(router_path) if router_path else None},
    })
    return Agent(cfg, decider=FakeDecider((0.2, 0.1, 0.7)))


def _audit(tmp_path):
    return [json.loads(line) for line in (tmp_path / "logs" / "audit.jsonl").read_text(encoding="utf-8").splitlines()]


def test_the_runtime_routes_escalations_with_the_configured_router(router, tmp_path):
    agent = _agent(tmp_path, router.save(tmp_path / "router.json"))
    assert agent.router is not None and agent.router_error is None
    result = agent.run_agent(None, "同僚が会議室で動かなくなりました", "u1")
    assert result["decision"] == "ESCALATE" and result["category"] == "medical"
    assert "medical staff" in result["rationale"]
    (record,) = _audit(tmp_path)
    assert record["category"] == "medical" and record["request_id"] == result["request_id"]


def test_a_broken_router_file_falls_back_to_keywords_and_says_so(router, tmp_path):
    path = router.save(tmp_path / "router.json")
    _rewrite(path, lambda p: p["coef"][0].__setitem__(0, 5.0), keep_digest=True)
    agent = _agent(tmp_path, path)
    assert agent.router is None and "do not match its sha256" in agent.router_error
    result = agent.run_agent(None, "同僚が会議室で動かなくなりました", "u1")
    assert result["decision"] == "ESCALATE" and result["category"] == "general"   # the keyword table's answer
    assert len(_audit(tmp_path)) == 1


def test_a_router_that_fails_while_routing_changes_only_the_route(router, tmp_path, monkeypatch):
    agent = _agent(tmp_path, router.save(tmp_path / "router.json"))
    monkeypatch.setattr(agent.router, "scores", lambda texts: (_ for _ in ()).throw(MemoryError("boom")))
    result = agent.run_agent(None, "同僚が会議室で動かなくなりました", "u1")
    assert result["decision"] == "ESCALATE" and result["category"] == "general" and result.get("error") is None
    assert len(_audit(tmp_path)) == 1


def test_family_bootstrap_brackets_the_accuracy():
    correct = np.array([1, 1, 1, 0, 0, 0, 1, 1, 0, 1], dtype=bool)
    families = ["a", "a", "b", "b", "c", "c", "d", "d", "e", "e"]
    low, high = family_bootstrap(correct, families, 500)
    assert low <= correct.mean() <= high and 0 <= low < high <= 1
    assert family_bootstrap(np.array([], dtype=bool), [], 10) == (None, None)


def test_score_and_cli_fit_score(router, tmp_path):
    rows = _rows() + _rows({"medical": ["please reset my vpn password"]}, label="REFUSE")
    table = pd.DataFrame(rows)
    result = score_routing(router, table, resamples=50)
    escalate = result["ESCALATE"]
    assert escalate["rows"] == 54 and escalate["families"] == 18
    assert escalate["keywords"]["accuracy"] < escalate["learned"]["accuracy"] and escalate["keyword_ties"] == 0
    matrix = np.array(escalate["confusion_keywords_then_learned"]["matrix"])
    assert matrix.sum() == 54 and np.trace(matrix) == round(escalate["keywords_then_learned"]["accuracy"] * 54)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({**r, "lang": "en", "split": "test"}) + "\n" for r in rows), encoding="utf-8")
    assert so8t(["router", "fit", "--data", str(data), "--out", str(tmp_path / "r.json")]) == 0
    assert so8t(["router", "score", "--router", str(tmp_path / "r.json"), "--data", str(data), "--bootstrap", "20",
                 "--out", str(tmp_path / "score.json")]) == 0
    scored = json.loads((tmp_path / "score.json").read_text(encoding="utf-8"))
    assert scored["data"][str(data)]["REFUSE"]["rows"] == 3
    assert so8t(["router", "score", "--router", str(tmp_path / "absent.json")]) == 2


def test_cli_reads_data_as_every_command_does(tmp_path, capsys):
    """``--data`` goes through load_any: split samples work; rows without routes fit nothing and say so."""
    router_file = tmp_path / "r.json"
    assert so8t(["router", "fit", "--data", "train:300", "--out", str(router_file)]) == 0
    assert "rows of train:300" in capsys.readouterr().out
    assert so8t(["router", "score", "--router", str(router_file), "--data", "val:60", "--bootstrap", "5",
                 "--out", str(tmp_path / "s.json")]) == 0
    scored = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))["data"]
    assert list(scored) == ["val:60"] and scored["val:60"]["ESCALATE"]["rows"] > 0
    assert "fitting_data" not in scored["val:60"] and "not held-out" not in capsys.readouterr().out
    # scored on the split it was fitted on (another sample of it): said in the output and in the file
    assert so8t(["router", "score", "--router", str(router_file), "--data", "train:60", "--bootstrap", "5",
                 "--out", str(tmp_path / "s.json")]) == 0
    assert "these are not held-out rows" in capsys.readouterr().out
    assert json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))["data"]["train:60"]["fitting_data"] == \
        "train:300"
    bare = tmp_path / "bare.jsonl"
    bare.write_text(json.dumps({"user_request": "hello", "label": "ALLOW"}) + "\n", encoding="utf-8")
    assert so8t(["router", "fit", "--data", str(bare), "--out", str(tmp_path / "never.json")]) == 2
    assert "at least two route categories" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # a sample written wrong is an argument error, named before any work
        so8t(["router", "fit", "--data", "val:0", "--out", str(tmp_path / "never.json")])
    assert stop.value.code == 2 and "positive number of rows" in capsys.readouterr().err
    assert not (tmp_path / "never.json").exists()


def test_cli_refuses_an_out_it_cannot_write_or_that_names_an_input(router, tmp_path, capsys):
    """Before: a folder or a path under a file ended fit/score in a traceback (exit 1) after all the work, and an
    --out naming --data or --router replaced the labelled rows or the router (exit 0)."""
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({**r, "lang": "en", "split": "test"}) + "\n" for r in _rows()),
                    encoding="utf-8")
    router_file = tmp_path / "r.json"
    router.save(router_file)
    kept = {path: path.read_bytes() for path in (data, router_file)}
    for argv, message in (
            (["fit", "--data", str(data), "--out", str(tmp_path)], "is a folder"),
            (["fit", "--data", str(data), "--out", str(data / "r.json")], "is a file, so no folder"),
            (["fit", "--data", str(data), "--out", str(data)], "is the file --data"),
            (["score", "--router", str(router_file), "--data", str(data), "--out", str(router_file)],
             "is the file --router"),
            (["score", "--router", str(router_file), "--data", str(data), "--out", str(data)], "is the file --data"),
            (["score", "--router", str(router_file), "--bootstrap", "0"], "1 or more")):
        with pytest.raises(SystemExit) as stop:
            so8t(["router", *argv])
        assert stop.value.code == 2 and message in capsys.readouterr().err, argv
    assert {path: path.read_bytes() for path in kept} == kept


def test_benchmark_rows_have_no_gold_route_to_score(router):
    """A public benchmark's category is a placeholder ("general" for SimpleSafetyTests): scoring it measured the
    share of prompts sent to the general desk, stored as if it were an accuracy."""
    rows = [{**r, "split": "benchmark", "label": "REFUSE", "category": "general"} for r in _rows()]
    result = score_routing(router, pd.DataFrame(rows), resamples=5)
    assert result == {"rows": 0}


def test_the_score_routes_an_emergency_as_the_runtime_does(router):
    """The runtime sends a possible emergency to medical unless the keyword table names another desk; the score's
    combined method claimed to be the runtime's rule without it."""
    from so8t_lib.serve.urgency import is_urgent

    text = "the server is down and someone is not breathing next to it"  # the router alone says legal
    assert is_urgent(text, None)
    row = {"id": "u", "family": "u", "label": "ESCALATE", "category": "medical", "user_request": text, "context": "",
           "split": "test"}
    result = score_routing(router, pd.DataFrame([row]), resamples=5)
    assert result["ESCALATE"]["keywords_then_learned"]["accuracy"] == 1.0


def test_an_empty_router_path_in_the_config_is_refused():
    with pytest.raises(ValueError, match="empty"):
        RuntimeConfig.model_validate({"escalation": {"router": ""}})


def test_cli_refuses_an_out_that_is_the_split_or_benchmark_data_names(capsys):
    """--data val reads data/so8t_safety/val.jsonl: an --out naming that file replaced a committed split."""
    from so8t_lib.core.paths import CORPUS_DIR

    for argv in (["fit", "--data", "val", "--out", str(CORPUS_DIR / "val.jsonl")],
                 ["fit", "--data", "test:50", "--out", str(CORPUS_DIR / "test.jsonl")],
                 ["score", "--router", "r.json", "--out", str(CORPUS_DIR / "test.jsonl")]):  # default: val and test
        with pytest.raises(SystemExit) as stop:
            so8t(["router", *argv])
        assert stop.value.code == 2 and "is the file --data" in capsys.readouterr().err, argv


def test_the_demo_keeps_its_router_only_when_it_was_fitted_on_the_run_s_split(router, tmp_path, capsys):
    """fit_run_router kept any router.json newer than train.jsonl: one fitted on another data folder (or damaged)
    stayed the runtime's router."""
    import os

    from so8t_lib.workbench.pipeline import fit_run_router

    data, run = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    run.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps({**r, "lang": "en", "split": "train"}) + "\n"
                                              for r in _rows()), encoding="utf-8")
    router.save(run / "router.json")  # fitted on source "tests", written after the split
    os.utime(data / "train.jsonl", (1, 1))
    assert load_router(fit_run_router(run, data)).fitted_on["source"] == str(data / "train.jsonl")
    kept = (run / "router.json").read_bytes()
    assert fit_run_router(run, data) and (run / "router.json").read_bytes() == kept  # the right one is kept
    (run / "router.json").write_text("{}", encoding="utf-8")
    assert load_router(fit_run_router(run, data)).fitted_on["source"] == str(data / "train.jsonl")
    assert "fitting it again" in capsys.readouterr().out
