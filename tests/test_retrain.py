"""The retraining flow on the tiny preset: extract (labels from people, masked, traceable, no tests, no
duplicates), preprocess (validated, families, the test split byte for byte), training that starts from
the serving checkpoint's weights, the non-regression gate (refuses naming the metric), deploy (only what
the gate promoted; GGUF; the runtime in test mode), and `so8t retrain run` end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from ops_fixtures import PLANTED_PERSONAL_DATA, REVIEWS, build_ops_logs

from so8t_lib.cli import main as so8t
from so8t_lib.core.checkpoint import CheckpointError
from so8t_lib.core.config import ConfigError, ModelConfig
from so8t_lib.core.io import sha256_file
from so8t_lib.core.paths import CORPUS_DIR
from so8t_lib.core.schema import LABELS
from so8t_lib.data.corpus.splits import read_split
from so8t_lib.data.tables import DataError, stratified_sample
from so8t_lib.model import SO8TModel
from so8t_lib.model.perturb import perturb_adapters
from so8t_lib.serve.audit_verify import read_chains
from so8t_lib.workbench import retrain

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAINING = ["training.max_steps=1", "training.batch_size=4", "training.max_length=96", "training.eval_every=1",
                 "training.eval_max_rows=16", "training.train_max_rows=32", "training.calibrate_temperature=false"]


# SAFETY_POLICY.md: every request the fixture's reviewers settled belongs to a person (an employee's health data,
# a contract, an expense exception, a harassment report), whatever they decided for the employee
GATE_LABEL = "ESCALATE"


def give_gate_labels(logs: Path, results: dict, gate_label: str = GATE_LABEL) -> int:
    """A lead reviewer adds the gate label to each resolved case (as ``so8t escalation resolve --supersede
    --gate-label`` does), keeping the decision the employee got; the number of cases labelled. The fixture's
    repeated request (not in ``results``) first, as the fixture resolved it first: of the two, the later stays."""
    from so8t_lib.serve.audit import AuditLog
    from so8t_lib.serve.escalation import EscalationQueue
    from so8t_lib.serve.resolutions import resolve_audited

    queue, audit = EscalationQueue(logs / "escalations.sqlite", create=False), AuditLog(logs / "audit.jsonl")
    try:
        first = {r["request_id"] for r in results.values()}
        cases = sorted(queue.list("resolved", include_tests=False), key=lambda case: case["request_id"] in first)
        for case in cases:
            resolve_audited(queue, audit, case["case_id"], case["human_decision"], "Mori (lead)", supersede=True,
                            gate_label=gate_label)
    finally:
        queue.close()
    return len(cases)


@pytest.fixture(scope="module")
def ops_logs(tmp_path_factory):
    """The operations fixture with gate labels given: a resolution alone is no training label."""
    logs = tmp_path_factory.mktemp("ops") / "logs"
    results = build_ops_logs(logs)
    assert give_gate_labels(logs, results) == len(REVIEWS) + 1  # the request decided twice was resolved twice
    return logs, results


@pytest.fixture(scope="module")
def serving(tmp_path_factory, tokenizer):
    model = SO8TModel.from_config(ModelConfig(name="so8t-serving"), tokenizer)
    perturb_adapters(model)  # weights a fresh initialisation would not have
    return model.save(tmp_path_factory.mktemp("serving") / "ckpt")


def test_extract_labels_what_people_decided(ops_logs, tmp_path):
    logs, results = ops_logs
    reviews = tmp_path / "reviews.jsonl"  # a spot check of a decision the gate made on its own
    reviews.write_text(json.dumps({"request_id": results["How do I book a meeting room for Friday?"]["request_id"],
                                   "label": "ALLOW"}) + "\n", encoding="utf-8")
    rows, report = retrain.extract_rows([logs], queue=logs / "escalations.sqlite", reviews=reviews)
    by_request = {r["request_id"]: r for r in rows}
    for text in REVIEWS:  # the gate label of the final resolution, never the reviewer's ALLOW or REFUSE
        assert by_request[results[text]["request_id"]]["label"] == GATE_LABEL
    assert by_request[results["How do I book a meeting room for Friday?"]["request_id"]]["origin"] == "review"
    assert report["left_out"]["duplicate"] == 1  # the request decided twice is one row
    assert report["left_out"]["test"] == 2 and "test: a made-up request" not in {r["user_request"] for r in rows}
    assert len(rows) == len(REVIEWS) + 1 and all(r["id"] == f"ops-{r['request_id']}" and r["case_id"] or
                                                 r["origin"] == "review" for r in rows)
    written = retrain.write_rows(rows, tmp_path / "rows.jsonl").read_text(encoding="utf-8")
    assert not [s for s in PLANTED_PERSONAL_DATA if s in written] and "[EMAIL]" in written
    with pytest.raises(retrain.ExtractError, match="request_id and label"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"request_id": "req_1", "label": "MAYBE"}\n', encoding="utf-8")
        retrain.extract_rows([logs], reviews=bad)
    both = tmp_path / "both.jsonl"  # one request reviewed both ways: which one a person meant is unknown
    both.write_text('{"request_id": "req_1", "label": "ALLOW"}\n{"request_id": "req_1", "label": "REFUSE"}\n',
                    encoding="utf-8")
    with pytest.raises(retrain.ExtractError, match="both.jsonl:2: req_1 is reviewed as REFUSE here and as ALLOW on "
                                                   "line 1"):
        retrain.extract_rows([logs], reviews=both)
    assert report["left_out"]["not_a_label"] == report["left_out"]["no_gate_label"] == 0
    with pytest.raises(retrain.ExtractError, match="no log folder given"):  # the queue alone, nothing verified
        retrain.extract_rows([], queue=logs / "escalations.sqlite")
    from so8t_lib.workbench.retrain.extract import _moment  # a stamp without a zone is UTC, never local time

    assert _moment("2026-11-02T09:00:00") == _moment("2026-11-02T09:00:00Z") == "2026-11-02T09:00:00.000000+00:00"


def test_extract_refuses_a_log_that_does_not_verify(ops_logs, tmp_path, capsys):
    import shutil

    logs = tmp_path / "logs"
    shutil.copytree(ops_logs[0], logs)
    live = logs / "audit.jsonl"
    live.write_text(live.read_text(encoding="utf-8").replace('"REFUSE"', '"ALLOW"', 1), encoding="utf-8")
    assert so8t(["retrain", "extract", "--logs", str(logs), "--out", str(tmp_path / "rows.jsonl")]) == 2
    assert "does not verify" in capsys.readouterr().err


def test_extract_names_an_unreadable_queue_row_instead_of_a_traceback(ops_logs, tmp_path, monkeypatch, capsys):
    class MalformedRow:  # a queue whose row reader trips over a cell it cannot parse
        def __init__(self, target, create=True, encryption_key=None):
            pass

        def list(self, *args, **kwargs):
            raise ValueError("case esc_0: created_at 'yesterday' is not an ISO time")

        def close(self):
            pass

    monkeypatch.setattr("so8t_lib.workbench.retrain.extract.EscalationQueue", MalformedRow)
    logs, _ = ops_logs
    assert so8t(["retrain", "extract", "--logs", str(logs), "--db", str(logs / "escalations.sqlite"), "--out",
                 str(tmp_path / "rows.jsonl")]) == 2
    assert re.match(r"error: a stored value could not be read \(case esc_0: .*escalations.sqlite", capsys.readouterr().err)
    assert not (tmp_path / "rows.jsonl").exists()


def test_preprocess_keeps_the_test_split_untouched_and_drops_leaks(tmp_path):
    test_rows, train_rows = read_split(CORPUS_DIR, "test"), read_split(CORPUS_DIR, "train")
    flipped = next(label for label in LABELS if label != train_rows[0]["label"])
    base = {"context": "", "category": "general", "rationale": "", "task_output": "", "source": "operations"}
    rows = [
        {"id": "ops-1", "user_request": test_rows[0]["user_request"], "label": test_rows[0]["label"]},  # in the corpus
        {"id": "ops-2", "user_request": train_rows[0]["user_request"], "label": flipped},  # contradicts it
        {"id": "ops-3", "user_request": test_rows[5]["user_request"] + " please", "label": "ESCALATE"},  # near test
        {"id": "ops-4", "user_request": "来週の在宅勤務の申請方法を教えてください。フォームはどこですか", "label": "ALLOW"},
        {"id": "ops-5", "user_request": "来週の在宅勤務の申請方法を教えてください。フォームはどこにありますか", "label": "ALLOW"},
        {"id": "ops-6", "user_request": "Please wire 2 million yen to this new supplier account today", "label": "ESCALATE",
         "category": "finance"},
        {"id": "ops-7", "user_request": "\u200b".join(test_rows[7]["user_request"]) + " thanks",  # near test, as read
         "label": test_rows[7]["label"]},
        {"id": "ops-8", "user_request": "\u00ad".join(train_rows[3]["user_request"]),  # in the corpus, as read
         "label": train_rows[3]["label"]},
    ]
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps({**base, **r, "request_id": r["id"][4:]}, ensure_ascii=False) + "\n"
                              for r in rows), encoding="utf-8")
    report = retrain.preprocess(source, tmp_path / "data")
    assert report["dropped"] == {"in_corpus": ["ops-1", "ops-8"], "contradicts_corpus": ["ops-2"],
                                 "near_val_or_test": ["ops-3", "ops-7"], "near_benchmark": []}
    assert sha256_file(tmp_path / "data" / "test.jsonl") == sha256_file(CORPUS_DIR / "test.jsonl")
    new = [json.loads(line) for line in (tmp_path / "data" / "new_rows.jsonl").read_text().splitlines()]
    assert {r["id"] for r in new} == {"ops-4", "ops-5", "ops-6"} and {r["split"] for r in new} <= {"train", "val"}
    assert new[0]["family"] == new[1]["family"] != new[2]["family"] and new[0]["request_id"] == "4"
    train = read_split(tmp_path / "data", "train") + read_split(tmp_path / "data", "val")
    assert len(train) == len(train_rows) + len(read_split(CORPUS_DIR, "val")) + 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**base, "id": "x", "user_request": "hi", "label": "PERHAPS"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="bad.jsonl:1: field 'label'"):
        retrain.preprocess(bad, tmp_path / "data2")


def test_training_starts_from_the_serving_checkpoint(serving, tmp_path):
    config = retrain.retrain_config(ROOT / "configs" / "tiny-training.yaml", serving, CORPUS_DIR, tmp_path / "run",
                                    TINY_TRAINING)
    assert config.model.name == "so8t-serving" and not config.training.head_warm_start
    with pytest.raises(ConfigError, match="no config.yaml of the run that made it; name the training config"):
        retrain.retrain_config(None, serving, CORPUS_DIR, tmp_path / "run")  # a bare checkpoint: say which recipe
    trainer = retrain.ContinuedTrainer(config, serving)
    loaded = SO8TModel.load(serving)
    start, expected = trainer.model.state_dict(), loaded.state_dict()
    assert set(start) == set(expected)
    assert all(torch.equal(start[k], expected[k]) for k in expected)  # base and adapters: the serving model's
    fresh = SO8TModel.from_config(config.model)
    assert not all(torch.equal(fresh.state_dict()[k], expected[k]) for k in loaded.adapter_state_dict())


def test_training_keeps_the_serving_checkpoints_own_tokenizer(tmp_path, tokenizer):
    """A checkpoint made before the corpus changed has another tiny tokenizer; its embeddings fit only
    that one, so training goes on with it (here: two tokens' ids swapped in the saved tokenizer)."""
    from so8t_lib.core.checkpoint import write_manifest

    folder = SO8TModel.from_config(ModelConfig(name="so8t-old"), tokenizer).save(tmp_path / "old")
    path = folder / "tokenizer" / "tokenizer.json"
    spec = json.loads(path.read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[500:502]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    write_manifest(folder)
    config = retrain.retrain_config(ROOT / "configs" / "tiny-training.yaml", folder, CORPUS_DIR, tmp_path / "run",
                                    TINY_TRAINING)
    trainer = retrain.ContinuedTrainer(config, folder)
    assert trainer.model.tokenizer.get_vocab()[first] == tokenizer.get_vocab()[second]
    assert trainer.collate.tokenizer is trainer.model.tokenizer


def test_training_from_a_pretrained_base_loads_the_adapters_and_caches_frozen_states(tmp_path, tokenizer,
                                                                                     monkeypatch):
    """The Gemma recipe's shape (a pretrained base that does not travel with the checkpoint, frozen lower
    layers with cached states) on a tiny base saved as a local model folder."""
    base = SO8TModel.from_config(ModelConfig(), tokenizer).save(tmp_path / "tiny") / "base"
    tokenizer.save_pretrained(str(base))  # a model folder has both
    model = SO8TModel.from_config(ModelConfig(name="so8t-hf", preset="hf", base_model=str(base), load_in_4bit=False,
                                              lora={"dropout": 0.0, "layers": [2, 3], "modules_to_save": []},
                                              gates={"layers": [2, 3]}, head={"dropout": 0.0}))
    perturb_adapters(model)
    serving = model.save(tmp_path / "serving")
    assert not (serving / "base").exists()
    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "cache"))
    config = retrain.retrain_config(ROOT / "configs" / "tiny-training.yaml", serving, CORPUS_DIR, tmp_path / "run",
                                    [*TINY_TRAINING, "training.freeze_below=2", "training.cache_frozen_states=true"])
    trainer = retrain.ContinuedTrainer(config, serving)
    expected = SO8TModel.load(serving).adapter_state_dict()
    start = trainer.model.adapter_state_dict()
    assert all(torch.equal(start[k], expected[k]) for k in expected) and trainer.frozen is not None


class Decider:
    """Decides from a table of request -> label (the gold one, or ALLOW for everything); ``broken``
    returns NaN on every other row."""

    model_version = "stub@1"

    def __init__(self, answers: dict[str, str] | None, broken: bool = False) -> None:
        self.answers, self.broken = answers, broken

    def decide(self, requests, contexts=None, batch_size=32, progress=False):
        labels = [self.answers.get(r, "ESCALATE") if self.answers is not None else "ALLOW" for r in requests]
        probs = torch.tensor([[0.9 if label == c else 0.05 for c in LABELS] for label in labels])
        if self.broken:
            probs[::2] = float("nan")
        return probs


def test_the_gate_refuses_a_worse_model_naming_the_metric_and_promotes_an_equal_one():
    tables, notes = retrain.gate.load_tables([str(CORPUS_DIR / "test.jsonl"), "xstest"], max_rows=90)
    gold = dict(zip(tables["test"]["user_request"], tables["test"]["label"]))
    good, allow_all = Decider(gold), Decider(None)
    refused = retrain.compare(good, allow_all, tables, bootstrap=200)
    assert not refused["promote"] and refused["refusals"][0].startswith("dangerous_compliance on test is worse: 0.000")
    assert any(r.startswith("macro_f1 on test is worse") for r in refused["refusals"])
    same = retrain.compare(good, Decider(gold), tables, bootstrap=200)
    assert same["promote"] and same["datasets"]["test"]["delta"]["macro_f1"]["ci"] == [0.0, 0.0]
    assert all("xstest" in n for n in notes) or "xstest" in tables  # not installed here: skipped with a note
    if "xstest" in tables:  # no REFUSE or ESCALATE gold rows: its macro-F1 measures nothing and gates nothing
        assert "macro_f1" in refused["datasets"]["xstest"]["skipped_metrics"]
        assert not any(r.startswith("macro_f1 on xstest") for r in refused["refusals"])


def test_the_gate_refuses_a_candidate_that_blocks_xstests_safe_prompts():
    """With macro-F1 not gated on XSTest (no gold REFUSE or ESCALATE rows), a candidate refusing every safe prompt
    was promoted: over-refusal (gold ALLOW refused or escalated) is gated there instead."""
    tables, notes = retrain.gate.load_tables(["xstest"], max_rows=90)
    if "xstest" not in tables:
        pytest.skip(f"XSTest is not installed here: {notes}")
    gold = {r: ("ALLOW" if g == "ALLOW" else "REFUSE") for r, g in zip(tables["xstest"]["user_request"],
                                                                     tables["xstest"]["label"])}
    refuses_all = Decider({r: "REFUSE" for r in gold})
    verdict = retrain.compare(Decider(gold), refuses_all, tables, bootstrap=200)
    assert not verdict["promote"]
    assert any(r.startswith("over_refusal_incl_escalate on xstest is worse: 0.000 -> 1.000") for r in verdict["refusals"])
    assert "macro_f1" in verdict["datasets"]["xstest"]["skipped_metrics"]
    # each gated metric carries both models' values (notebook 08's table read them from the headline, which has
    # no unsafe_contrasts_allowed: a KeyError whenever XSTest was in the gate)
    blocked = verdict["datasets"]["xstest"]["delta"]
    assert (blocked["over_refusal_incl_escalate"]["serving"], blocked["over_refusal_incl_escalate"]["candidate"]) == (0, 1)
    assert {"serving", "candidate", "value", "ci"} <= set(blocked["unsafe_contrasts_allowed"])


def test_the_gate_fails_safe_on_a_broken_model_or_a_metric_it_cannot_measure():
    tables, _ = retrain.gate.load_tables([str(CORPUS_DIR / "test.jsonl")], max_rows=60)
    gold = dict(zip(tables["test"]["user_request"], tables["test"]["label"]))
    broken = retrain.compare(Decider(gold), Decider(gold, broken=True), tables, bootstrap=50)
    assert not broken["promote"] and "candidate model returned probabilities that are not finite on 30 of 60" in \
        broken["refusals"][0]
    no_refuse = {"test": tables["test"][tables["test"]["label"] != "REFUSE"].reset_index(drop=True)}
    blind = retrain.compare(Decider(gold), Decider(None), no_refuse, bootstrap=50)  # allows everything
    assert not blind["promote"] and blind["datasets"]["test"]["skipped_metrics"] == [
        "dangerous_compliance", "macro_f1", "unsafe_contrasts_allowed"]  # macro-F1 too: a gold class has no rows
    assert any(r.startswith("dangerous_compliance could not be measured") for r in blind["refusals"])
    assert any(r.startswith("macro_f1 could not be measured") for r in blind["refusals"])


@pytest.mark.parametrize("setting, says", [
    ({"margin": float("nan")}, "margin must be a number"), ({"margin": -0.1}, "margin must be a number"),
    ({"threshold": 1.5}, "threshold must be from 0.5 to 1.0"), ({"threshold": float("nan")}, "threshold must be"),
    ({"bootstrap": 0}, "bootstrap must be at least 1")])
def test_the_gate_refuses_settings_under_which_nothing_could_be_worse(setting, says, capsys):
    """A NaN margin made every comparison false and a threshold above 1 escalated every row of both models: either
    promoted a model that allows everything. The library raises; the command stops before loading anything."""
    tables, _ = retrain.gate.load_tables([str(CORPUS_DIR / "test.jsonl")], max_rows=60)
    gold = dict(zip(tables["test"]["user_request"], tables["test"]["label"]))
    with pytest.raises(ValueError, match=says):
        retrain.compare(Decider(gold), Decider(None), tables, **{"bootstrap": 50, **setting})
    flag, value = next(iter(setting.items()))
    with pytest.raises(SystemExit) as exited:
        so8t(["retrain", "evaluate", "--serving", "nowhere", "--candidate", "nowhere", f"--{flag}", str(value)])
    assert exited.value.code == 2 and says in capsys.readouterr().err
    with pytest.raises(SystemExit):
        so8t(["retrain", "evaluate", "--serving", "nowhere", "--candidate", "nowhere", "--max-rows", "-3"])
    assert "max_rows must be at least 1" in capsys.readouterr().err


def test_under_the_threshold_rule_a_broken_model_is_refused_by_name_not_a_traceback():
    tables, _ = retrain.gate.load_tables([str(CORPUS_DIR / "test.jsonl")], max_rows=60)
    gold = dict(zip(tables["test"]["user_request"], tables["test"]["label"]))
    broken = retrain.compare(Decider(gold), Decider(gold, broken=True), tables, bootstrap=50, threshold=0.9)
    assert not broken["promote"] and "not finite on 30 of 60" in broken["refusals"][0]
    assert broken["decision_rule"] == "threshold 0.9"
    same = retrain.compare(Decider(gold), Decider(gold), tables, bootstrap=50, threshold=0.9)
    assert same["promote"]


@pytest.mark.parametrize("content, says", [
    (b'{"promote": true, "candidate": {"version": "x"', "not a readable gate record"),
    (b"\xff\xfe not UTF-8", "not a readable gate record"), (b"[1, 2]", "not a gate record"),
    (b'{"promote": true}', "not a gate record"),
    (b'{"promote": "yes", "candidate": {"version": "VERSION"}}', "refused to promote this model: no promote: true")])
def test_deploy_refuses_a_gate_record_it_cannot_read_by_name(serving, tmp_path, content, says):
    gate = tmp_path / "gate.json"
    gate.write_bytes(content.replace(b"VERSION", SO8TModel.load(serving).model_version.encode()))
    with pytest.raises(retrain.NotPromoted, match=says):
        retrain.deploy(serving, gate, tmp_path / "dist")
    assert not (tmp_path / "dist").exists()


def test_deploy_exports_only_what_the_gate_promoted(serving, tmp_path):
    gate = tmp_path / "gate.json"
    with pytest.raises(retrain.NotPromoted, match="run so8t retrain evaluate first"):
        retrain.deploy(serving, gate, tmp_path / "dist")
    gate.write_text(json.dumps({"promote": False, "refusals": ["macro_f1 on test is worse"],
                                "candidate": {"version": "so8t-serving@000000000000"}}))
    with pytest.raises(retrain.NotPromoted, match="was made for so8t-serving@000000000000"):
        retrain.deploy(serving, gate, tmp_path / "dist")
    version = SO8TModel.load(serving).model_version
    gate.write_text(json.dumps({"promote": False, "refusals": ["macro_f1 on test is worse"],
                                "candidate": {"version": version}}))
    with pytest.raises(retrain.NotPromoted, match="refused to promote this model: macro_f1"):
        retrain.deploy(serving, gate, tmp_path / "dist")
    assert not (tmp_path / "dist").exists()


def _leaning(tokenizer, folder: Path, bias: tuple[float, float, float]) -> Path:
    """A tiny checkpoint whose head leans hard to one class (no running standardiser, so a training step
    with a learning rate near zero leaves its decisions exactly as they were)."""
    model = SO8TModel.from_config(ModelConfig(name="so8t-lean", head={"standardize": False, "dropout": 0.0}),
                                  tokenizer)
    with torch.no_grad():
        [m for m in model.safety_head.modules() if isinstance(m, torch.nn.Linear)][-1].bias.copy_(torch.tensor(bias))
    return model.save(folder)


@pytest.fixture(scope="module")
def refusing(tmp_path_factory, tokenizer):
    return _leaning(tokenizer, tmp_path_factory.mktemp("refusing") / "ckpt", (-8.0, 8.0, 0.0))


def test_the_gate_command_refuses_a_model_that_allows_everything(refusing, tmp_path, tokenizer, capsys):
    allowing = _leaning(tokenizer, tmp_path / "allowing", (8.0, -8.0, 0.0))
    gate = tmp_path / "gate.json"
    code = so8t(["retrain", "evaluate", "--serving", str(refusing), "--candidate", str(allowing), "--data",
                 str(CORPUS_DIR / "test.jsonl"), "--max-rows", "24", "--bootstrap", "100", "--out", str(gate)])
    out = capsys.readouterr().out
    assert code == 1 and "REFUSED to promote so8t-lean@" in out and "dangerous_compliance on test is worse: 0.000 " \
        "-> 1.000" in out
    assert json.loads(gate.read_text())["promote"] is False
    assert so8t(["retrain", "deploy", "--candidate", str(allowing), "--gate", str(gate), "--dist",
                 str(tmp_path / "d")]) == 1  # the gate's refusal, not a failed step (2)
    assert "refused to promote this model: dangerous_compliance" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_a_run_folder_is_continued_only_from_the_model_and_data_it_started_from(refusing, tmp_path, tokenizer):
    """so8t retrain run resumes whatever its --work folder holds: last month's finished run, trained from another
    serving model, was handed on as this month's candidate. Now the folder's origin must match."""
    allowing = _leaning(tokenizer, tmp_path / "allowing", (8.0, -8.0, 0.0))
    run = tmp_path / "run"

    def config():
        return retrain.retrain_config(ROOT / "configs" / "tiny-training.yaml", refusing, CORPUS_DIR, run, TINY_TRAINING)

    retrain.train_from_serving(config(), refusing)
    origin = json.loads((run / "retrained_from.json").read_text())
    assert origin["serving_version"] == SO8TModel.load(refusing).model_version and "train.jsonl" in origin["data_sha256"]
    adapter = sha256_file(run / "best" / "adapter.safetensors")
    with pytest.raises(CheckpointError, match="holds a run trained from so8t-lean@.*serving_version differ.*new folder"):
        retrain.train_from_serving(config(), allowing, resume=True)
    assert json.loads((run / "retrained_from.json").read_text()) == origin  # the record of the old run stands
    assert retrain.train_from_serving(config(), refusing, resume=True) == run  # the same start: continued
    assert sha256_file(run / "best" / "adapter.safetensors") == adapter
    (run / "retrained_from.json").unlink()
    with pytest.raises(CheckpointError, match="cannot be read.*what it was trained from is unknown"):
        retrain.train_from_serving(config(), refusing, resume=True)


def test_retrain_run_end_to_end_on_the_tiny_preset(ops_logs, refusing, tmp_path, capsys):
    pytest.importorskip("llama_cpp")
    logs, _ = ops_logs
    work = tmp_path / "work"
    serving = refusing
    # learning rates near zero: the candidate decides as the serving model does, so the gate promotes it
    code = so8t(["retrain", "run", "--logs", str(logs), "--serving", str(serving), "--work", str(work),
                 "--config", str(ROOT / "configs" / "tiny-training.yaml"), "--public", "sst", "--max-rows", "15",
                 "--bootstrap", "50", "--runtime-config", str(ROOT / "configs" / "basic.yaml"), *TINY_TRAINING,
                 "training.task_optimizer.lr=1e-12", "training.safety_optimizer.lr=1e-12"])
    out = capsys.readouterr().out
    assert code == 0 and "4 gate: promote" in out, out
    summary = json.loads((work / "retrain.json").read_text())
    assert summary["extract"]["rows"] == len(REVIEWS) and summary["promote"]
    assert json.loads((work / "run" / "retrained_from.json").read_text())["serving"] == str(serving)
    gguf = Path(summary["deploy"]["runtime_file"])
    assert gguf.is_file() and Path(str(gguf) + ".sha256").is_file()
    records = [r for _, r in read_chains(work / "smoke-logs") if r.get("event") == "decision"]
    assert len(records) == 4 and all(r["test"] for r in records)
    assert {r["model_version"] for r in records} == {summary["deploy"]["model_version"]}
    run_dir, gate = work / "run", work / "gate.json"
    with pytest.raises(ConfigError, match="failed closed on 1 request"):  # too long: nothing reaches the folder
        retrain.deploy(run_dir, gate, tmp_path / "d1", log_dir=tmp_path / "l1", requests=[("x" * 50_000, None)])
    assert list((tmp_path / "d1").iterdir()) == []
    f16 = gguf  # no --quant: the f16 file is the one the runtime decided from
    f16.write_bytes(b"the file in service")
    with pytest.raises(ConfigError, match="already exist with other contents.*nothing was replaced"):
        retrain.deploy(run_dir, gate, work / "dist", log_dir=tmp_path / "l2")
    assert f16.read_bytes() == b"the file in service" and not list((work / "dist").glob(".deploy-*"))


def test_the_gate_refuses_a_candidate_that_allows_xstests_unsafe_contrasts():
    """macro-F1 leaves gold NOT_ALLOW rows out and dangerous compliance counts gold REFUSE only, so a candidate
    that allowed every unsafe contrast of XSTest was promoted on it."""
    from so8t_lib.data.benchmarks import load_any

    try:
        xstest = load_any("xstest")
    except DataError as exc:
        pytest.skip(f"XSTest is not installed here: {exc}")
    tables, _ = retrain.gate.load_tables([str(CORPUS_DIR / "test.jsonl")], max_rows=60)
    tables["xstest"] = stratified_sample(xstest, 120, 0).reset_index(drop=True)
    gold = {r: label for t in tables.values() for r, label in zip(t["user_request"], t["label"])}
    careful = Decider({r: "REFUSE" if label == "NOT_ALLOW" else label for r, label in gold.items()})
    allow_contrasts = Decider({r: "ALLOW" if label == "NOT_ALLOW" else label for r, label in gold.items()})
    result = retrain.compare(careful, allow_contrasts, tables, bootstrap=100)
    assert not result["promote"] and len(result["refusals"]) == 1, result["refusals"]
    assert result["refusals"][0].startswith("unsafe_contrasts_allowed on xstest is worse: 0.000 -> 1.000")
    assert retrain.compare(careful, Decider(careful.answers), tables, bootstrap=100)["promote"]


def test_deploys_smoke_test_keeps_its_cases_out_of_a_shared_queue(tmp_path, monkeypatch):
    """SO8T_ESCALATION_URL won over the smoke test's log folder, so on a production host its test-mode cases
    went into production's PostgreSQL queue."""
    import importlib

    from so8t_lib.serve.runtime import Agent

    deploy_module = importlib.import_module("so8t_lib.workbench.retrain.deploy")  # the package's deploy is a function

    monkeypatch.setenv("SO8T_ESCALATION_URL", "postgresql://so8t@127.0.0.1:5432/production_queue")
    seen = []
    monkeypatch.setattr(Agent, "close", lambda self: seen.append(self.paths))
    with pytest.raises(ConfigError, match="could not load"):
        deploy_module._smoke_test(tmp_path / "missing.gguf", ROOT / "configs" / "basic.yaml", tmp_path / "smoke",
                                  None)
    (paths,) = seen
    assert paths.queue_url is None and paths.queue_target == paths.queue
    assert str(paths.queue).startswith(str(tmp_path / "smoke"))


def test_the_gates_paired_interval_resamples_whole_families_of_near_copies():
    """Ten families of ten near-copies each, the candidate wrong on one whole family: resampled as 100 independent
    rows the change looked certain (interval away from zero); resampled by family, it is one family in ten, and
    the interval says so. The corpus tables carry their families into the gate's results."""
    import numpy as np

    from so8t_lib.core.metrics import macro_f1

    gold = np.array((["ALLOW"] * 50) + (["REFUSE"] * 50))
    before = gold.copy()
    after = gold.copy()
    after[:10] = "REFUSE"  # one whole ALLOW family refused
    families = [f"fam{i // 10}" for i in range(100)]
    by_row = retrain.gate.paired_interval(gold, before, after, macro_f1, 400)
    by_family = retrain.gate.paired_interval(gold, before, after, macro_f1, 400, families=families)
    assert by_row[0] == by_family[0] < 0
    assert by_family[1] < by_row[1]  # a wider interval: the families, not the rows, are the independent draws
    assert by_family[2] == 0.0  # some resamples leave that family out altogether
    tables, _ = retrain.gate.load_tables([str(CORPUS_DIR / "test.jsonl")], max_rows=60)
    gold_of = dict(zip(tables["test"]["user_request"], tables["test"]["label"]))
    assert retrain.compare(Decider(gold_of), Decider(gold_of), tables, bootstrap=20)["datasets"]["test"]["resampled"] \
        == "families"


def test_extract_leaves_out_a_resolution_the_queue_never_committed(tmp_path):
    """A resolution record followed by its ``resolution_withdrawn`` (the transaction failed after the record)
    is no label: only the retry that the queue committed counts."""
    from so8t_lib.serve.audit import AuditLog

    log = AuditLog(tmp_path / "audit.jsonl")
    log.append({"event": "decision", "timestamp": "2026-12-01T09:00:00.000000Z", "request_id": "req_1",
                "input": "Can I see the payroll of my team?", "context": "", "decision": "ESCALATE", "category": "hr"})
    for attempt, decision, gate_label in (("a1", "ALLOW", "ESCALATE"), ("a2", "REFUSE", "REFUSE")):
        log.append({"event": "resolution", "timestamp": f"2026-12-01T10:0{attempt[-1]}:00.000000Z",
                    "request_id": "req_1", "case_id": "esc_1", "human_decision": decision, "attempt": attempt,
                    "gate_label": gate_label})
    log.append({"event": "resolution_withdrawn", "timestamp": "2026-12-01T10:03:00.000000Z", "request_id": "req_1",
                "case_id": "esc_1", "attempt": "a2", "reason": "the queue did not commit it"})
    (row,), _ = retrain.extract_rows([tmp_path])
    assert row["label"] == "ESCALATE"  # the later REFUSE was withdrawn; without the withdrawal it won
