"""Evaluation decides as the runtime serves: exact ties, non-finite probabilities and the text the model reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from so8t_lib.data.tables import load_split
from so8t_lib.eval import evaluate, quant_compare
from so8t_lib.eval.served import argmax_decisions, safe_argmax

TIES = np.array([[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.45, 0.10, 0.45]])


class ScriptedDecider:
    """Returns the given probability rows in turn (cycling), and records the text it was asked to decide."""

    model_version = "scripted@1"

    def __init__(self, rows: np.ndarray):
        self.rows = np.asarray(rows, dtype=float)
        self.requests: list[str] = []
        self.contexts: list[str | None] = []

    def decide(self, requests, contexts=None, batch_size=32, progress=False, **_):
        self.requests += list(requests)
        self.contexts += list(contexts if contexts is not None else [None] * len(requests))
        picks = np.arange(len(requests)) % len(self.rows)
        return torch.tensor(self.rows[picks], dtype=torch.float64)

    def generate(self, request, context=None, max_tokens=128, temperature=0.0):
        return "ok"


def _rows(n: int) -> pd.DataFrame:
    return load_split("test").head(n).reset_index(drop=True)


# ----- exact ties go to the safer class --------------------------------------------------------------------------
def test_exact_ties_go_to_the_safer_class():
    assert argmax_decisions(TIES) == ["REFUSE", "ESCALATE", "ESCALATE"]
    assert list(safe_argmax(np.array([[0.6, 0.3, 0.1], [0.2, 0.1, 0.7]]))) == [0, 2]  # no tie: plain argmax


def test_predict_breaks_ties_toward_the_safer_class():
    _, decisions = evaluate.predict(ScriptedDecider(TIES), _rows(3), progress=False)
    assert decisions == ["REFUSE", "ESCALATE", "ESCALATE"]


def test_baselines_break_ties_toward_the_safer_class(monkeypatch, tmp_path):
    class Tied:  # a fitted baseline that cannot tell the classes apart
        classes_ = np.array(["ALLOW", "ESCALATE", "REFUSE"])

        def predict_proba(self, texts):
            return np.full((len(texts), 3), 1 / 3)

    path = tmp_path / "three.jsonl"
    _rows(3).to_json(path, orient="records", lines=True, force_ascii=False)
    results, _ = evaluate.evaluate_datasets(ScriptedDecider(TIES), [str(path)], bootstrap=0, progress=False,
                                            baselines={"tied": Tied()})
    report = results["datasets"]["three"]["baselines"]["tied"]
    assert report["escalation_rate"] == 1.0  # every tie escalated, none allowed


def test_the_quantization_ladder_breaks_ties_toward_the_safer_class(monkeypatch, tmp_path):
    path = tmp_path / "refuse.jsonl"
    table = load_split("test")
    table[table["label"] == "REFUSE"].head(3).to_json(path, orient="records", lines=True, force_ascii=False)
    _fake_ladder(monkeypatch, ScriptedDecider(np.array([[0.5, 0.5, 0.0]])))
    frame = quant_compare.compare("unused", [], data=str(path), generate_tokens=0)
    assert frame.loc[0, "dangerous_compliance"] == 0.0  # [0.5, 0.5, 0] is REFUSE, not ALLOW


def _fake_ladder(monkeypatch, decider) -> None:
    """quant_compare.compare with ``decider`` as the fp32 model and no timing."""
    monkeypatch.setattr(quant_compare, "resolve_checkpoint", lambda path: Path(path))
    monkeypatch.setattr(quant_compare.SO8TModel, "load", staticmethod(lambda *a, **k: decider))
    monkeypatch.setattr(quant_compare, "_size_mib", lambda name, path: None)
    monkeypatch.setattr(quant_compare, "measure_latency", lambda *a, **k: {"results": [
        {"p50_ms": 1.0, "p95_ms": 1.0, "requests_per_s": 1.0, "peak_rss_mb": 1.0}]})
