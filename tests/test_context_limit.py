"""A prompt longer than the base's position limit is refused, not decided: the runtime's ESCALATE with the reason
named, as the GGUF backend refuses one longer than its n_ctx. Answers stop where the positions end."""

import json

import pytest
import torch
from test_runtime import _agent, _records

from so8t_lib.core.config import ModelConfig
from so8t_lib.eval.served import decide_failing_rows
from so8t_lib.model import SO8TModel
from so8t_lib.model.prompts import PromptTooLong

LIMIT = 96
SHORT = "Where is the printer?"
LONG = "経費精算の締め日と申請の手順を教えてください。" * 20


@pytest.fixture(scope="module")
def short_context_model(tokenizer):
    torch.manual_seed(0)
    config = ModelConfig(tiny={"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
                               "max_position_embeddings": LIMIT}, lora={"dropout": 0.0}, head={"dropout": 0.0})
    return SO8TModel.from_config(config, tokenizer).eval()


def _tokens(model, request):
    return len(model.tokenizer(model.format_prompt(request), add_special_tokens=False)["input_ids"])


def test_a_prompt_past_the_position_limit_is_refused_by_decide(short_context_model):
    model = short_context_model
    assert model.context_length == LIMIT and _tokens(model, SHORT) < LIMIT < _tokens(model, LONG)
    assert model.decide([SHORT]).shape == (1, 3)
    with pytest.raises(PromptTooLong, match=rf"{_tokens(model, LONG)} tokens, more than this model's context of {LIMIT}"):
        model.decide([SHORT, LONG])


def test_evaluation_loses_only_the_long_row(short_context_model):
    probs, failed = decide_failing_rows(short_context_model, [SHORT, LONG, SHORT], [None] * 3, batch_size=2,
                                        progress=False)
    assert list(failed) == [1] and "PromptTooLong" in failed[1]
    assert torch.isfinite(torch.as_tensor(probs[[0, 2]])).all()


def test_an_answer_stops_at_the_position_limit(short_context_model):
    model = short_context_model
    answer = model.start_answer(SHORT, max_tokens=500)
    room = LIMIT - _tokens(model, SHORT)
    assert answer.advance(500) and answer.written <= room  # random weights may end sooner, never later
    with pytest.raises(PromptTooLong):
        model.start_answer(LONG, max_tokens=5)


def test_the_runtime_escalates_a_request_past_the_limit_and_records_why(tmp_path, short_context_model):
    agent = _agent(tmp_path, short_context_model, decision_timeout_s=30)
    result = agent.run_agent("経理部", LONG, "u1")
    assert result["decision"] == "ESCALATE" and result["human_required"] and result["task_response"] is None
    (record,) = _records(tmp_path)
    assert record["decision"] == "ESCALATE" and "PromptTooLong" in record["error"]


def test_a_refused_prompt_leaves_the_models_mode_as_it_was(short_context_model):
    model = short_context_model.train()
    try:
        with pytest.raises(PromptTooLong):
            model.decide([LONG])
        with pytest.raises(PromptTooLong):
            model.decision_states([LONG])
        assert model.training
    finally:
        model.eval()


def _data(folder, val_request):
    rows = {"train": [(f"t{i}", f"Where is meeting room {i}?", label) for i, label in
                      enumerate(["ALLOW", "REFUSE", "ESCALATE"] * 2)],
            "val": [("v0", "Where is the canteen?", "ALLOW"), ("v1", val_request, "REFUSE")]}
    folder.mkdir()
    for split, items in rows.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"id": i, "user_request": text, "label": label, "category": "general"},
                                                                  ensure_ascii=False) + "\n"
                                                       for i, text, label in items), encoding="utf-8")
    return folder


@pytest.mark.parametrize("val_request, max_length, message", [
    (LONG, 64, rf"1 val row\(s\) are longer than this base's context of {LIMIT} tokens \(e.g. 'v1'"),
    ("How do I read a colleague's mail?", LIMIT + 1, rf"training.max_length {LIMIT + 1} is longer than .* {LIMIT}"),
])
def test_training_refuses_what_its_evaluation_could_not_decide_before_the_first_step(tmp_path, val_request,
                                                                                     max_length, message):
    """A val row past the position limit stopped the run at its first evaluation, after the steps before it."""
    from test_train import ROOT

    from so8t_lib.core.config import ConfigError, load_config
    from so8t_lib.train import Trainer

    config = load_config(ROOT / "configs" / "tiny-training.yaml", [
        f"training.data_dir={_data(tmp_path / 'data', val_request)}", f"training.output_dir={tmp_path / 'run'}",
        f"model.tiny.max_position_embeddings={LIMIT}", f"training.max_length={max_length}", "training.max_steps=1",
        "training.batch_size=2"])  # the six rows fill a batch: the context is what must stop it
    with pytest.raises(ConfigError, match=message):
        Trainer(config)
    assert not (tmp_path / "run" / "last").exists()


def test_calibration_leaves_a_row_past_the_context_out_of_the_fit(short_context_model):
    """One such row stopped the whole fit (``so8t evaluate --calibrate`` on a table of the user's)."""
    import pandas as pd

    from so8t_lib.eval.calibration import calibrate

    rows = [(f"Where is meeting room {i}?", label) for i, label in enumerate(["ALLOW", "REFUSE", "ESCALATE"] * 2)]
    table = pd.DataFrame([{"user_request": text, "context": "", "label": label} for text, label in rows]
                         + [{"user_request": LONG, "context": "", "label": "REFUSE"}])
    before = short_context_model.safety_head.temperature.clone()
    try:
        report = calibrate(short_context_model, table, progress=False)
    finally:
        with torch.no_grad():
            short_context_model.safety_head.temperature.copy_(before)
    assert report["rows"] == 6 and report["invalid_input_rows"] == 1 and report["temperature"] > 0
