"""What the evaluation numbers claim: a safety score that sees XSTest's unsafe contrasts, latency percentiles only
where enough calls back them, the decider's own backend name, and each quantization rung's memory measured apart
from the rungs before it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from so8t_lib.core.metrics import allow_precision, safety_score
from so8t_lib.eval.latency import measure_latency, min_calls_for
from so8t_lib.eval.report import safety_report

A, R, E, NA = "ALLOW", "REFUSE", "ESCALATE", "NOT_ALLOW"

# XSTest's shape: 250 safe prompts (gold ALLOW) and 200 unsafe contrasts (gold NOT_ALLOW)
XS_GOLD = [A] * 250 + [NA] * 200


def test_a_gate_that_allows_every_unsafe_contrast_does_not_score_a_perfect_safety_score():
    """The confusion matrix leaves NOT_ALLOW rows out; allow precision did too, so XSTest's safety score was 1.0
    [1.0, 1.0] for a gate that let all 200 unsafe contrasts through."""
    report = safety_report(XS_GOLD, [A] * 450, bootstrap=200)
    assert report["allow_precision"] == pytest.approx(250 / 450)
    assert report["safety_score"] == pytest.approx(250 / 450)
    low, high = report["ci"]["safety_score"]
    assert low < 250 / 450 < high < 1.0


def test_stopping_the_unsafe_contrasts_raises_the_safety_score():
    stops_them = [A] * 250 + [R] * 200
    assert safety_score(XS_GOLD, stops_them) == 1.0
    half = [A] * 250 + [A] * 100 + [R] * 100
    assert safety_score(XS_GOLD, half) == pytest.approx(250 / 350)


def test_not_allow_rows_never_decided_allow_leave_allow_precision_as_it_was():
    assert allow_precision([A, A, NA, NA], [A, R, R, E]) == 1.0
    assert allow_precision([NA, NA], [E, R]) is None  # nothing allowed: no precision to speak of
    assert allow_precision([NA, NA], [A, R]) == 0.0  # the one ALLOW was wrong
    assert safety_score([NA, NA], [A, R]) == 0.0


# ----- latency: tail percentiles only from enough calls, the decider's own backend name ---------------------------
class _SlowLastCall:
    """A decider whose last timed call is slow (a GC pause): 2 warm-up calls, then the timed ones."""

    model_version = "stub@1"

    def __init__(self, timed: int) -> None:
        self.calls, self.slow_at = 0, 2 + timed

    def decide(self, requests, contexts=None, batch_size=32, progress=False):
        self.calls += 1
        time.sleep(0.02 if self.calls == self.slow_at else 0.0)
        return torch.full((len(requests), 3), 1 / 3)


@pytest.mark.timeout(120)
def test_tail_percentiles_from_too_few_calls_are_null():
    """From 8 timed calls 'p99' was np.percentile's interpolation towards the slowest call: one slow call of eight
    read as the 99th percentile."""
    row = measure_latency(_SlowLastCall(8), ["a request"], (1,), batches=8)["results"][0]
    assert row["batches"] == 8 and row["p50_ms"] is not None
    assert row["p95_ms"] is None and row["p99_ms"] is None
    row = measure_latency(_SlowLastCall(20), ["a request"], (1,), batches=20)["results"][0]
    assert row["p95_ms"] is not None and row["p99_ms"] is None
    assert min_calls_for(95) == 20 and min_calls_for(99) == 100


@pytest.mark.timeout(120)
def test_the_backend_is_named_from_the_decider_not_assumed_to_be_llama_cpp():
    report = measure_latency(_SlowLastCall(1), ["a request"], (1,), batches=1)
    assert report["backend"] == "_SlowLastCall" and report["device"] is None and "file" not in report


@pytest.mark.timeout(120)
def test_evaluate_latency_takes_a_call_count_and_says_how_many_calls(monkeypatch, tmp_path, capsys):
    from so8t_lib.cli import evaluate as evaluate_cli
    from so8t_lib.data.tables import load_split

    data = tmp_path / "rows.jsonl"
    load_split("test").head(3).to_json(data, orient="records", lines=True, force_ascii=False)
    decider = _SlowLastCall(5)
    decider.safety_head = SimpleNamespace(temperature=torch.tensor(1.0))
    monkeypatch.setattr(evaluate_cli, "resolve_checkpoint", lambda path: Path(path))
    monkeypatch.setattr(evaluate_cli, "load_decider", lambda path: decider)
    out = tmp_path / "lat.json"
    evaluate_cli.main(["--model", "fake", "--latency", "--data", str(data), "--latency-batch-sizes", "1",
                       "--latency-batches", "5", "--out", str(out)])
    row = json.loads(out.read_text())["latency"]["results"][0]
    assert row["batches"] == 5 and row["p95_ms"] is None and row["p99_ms"] is None
    printed = capsys.readouterr().out
    assert "5 timed calls" in printed and "p99 n/a (needs 100 calls)" in printed


# ----- the quantization ladder: each backend's memory in a process of its own ------------------------------------
def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


@pytest.mark.timeout(300)
def test_an_isolated_measurement_does_not_see_the_callers_memory():
    """An RSS read in the process that had held the fp32 model carried its pages into every GGUF rung's peak."""
    from so8t_lib.eval.profiling import run_isolated

    held = np.ones(400 * 2**20 // 8)  # 400 MB the caller holds, as a model loaded before
    assert _rss_mb() > 400
    assert run_isolated(_rss_mb) < _rss_mb() - 300
    del held
    with pytest.raises(ValueError, match="invalid literal"):  # the child's error is raised here, as itself
        run_isolated(int, "not a number")


def test_the_ladder_measures_every_backend_in_a_process_of_its_own(monkeypatch, tmp_path):
    from so8t_lib.data.tables import load_split
    from so8t_lib.eval import quant_compare

    data = tmp_path / "rows.jsonl"
    load_split("test").head(4).to_json(data, orient="records", lines=True, force_ascii=False)
    isolated = []

    def fake_measure(name, path, requests, *rest):
        return {"load_s": 0.1, "decided": np.tile([0.1, 0.8, 0.1], (len(requests), 1)), "failed": {},
                "single": {"p50_ms": 1.0, "p95_ms": None}, "batched": {"requests_per_s": 5.0, "peak_rss_mb": 900.0},
                "rss_before_load_mb": 400.0, "generation_tokens_per_s": None}

    monkeypatch.setattr(quant_compare, "measure_backend", fake_measure)
    monkeypatch.setattr(quant_compare, "run_isolated", lambda fn, *args: isolated.append((fn, args[0])) or fn(*args))
    monkeypatch.setattr(quant_compare, "resolve_checkpoint", lambda path: Path(path))
    monkeypatch.setattr(quant_compare, "_size_mib", lambda name, path: None)
    frame = quant_compare.compare("ckpt", [tmp_path / "m-q8_0.gguf", tmp_path / "m-q4_k_m.gguf"], data=str(data))
    assert [name for _, name in isolated] == ["hf-fp32", "Q8_0", "Q4_K_M"]
    assert all(fn is fake_measure for fn, _ in isolated)
    assert list(frame["rss_before_load_mb"]) == [400.0] * 3 and list(frame["peak_rss_mb"]) == [900.0] * 3
