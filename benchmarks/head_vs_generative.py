"""The headline speed figure: SafetyHeadB's one-pass decision against deciding the way generative guards do.

    python benchmarks/head_vs_generative.py [--model checkpoints/so8t-demo] [--rows 64] [--shots 6] \
        [--out benchmarks/results/head_vs_generative.json]

Same model, same requests (a stratified sample of the test split), one process, batch 1 unless said:
- head: ``decide`` (one prefill per batch, stopped at the layer SafetyHeadB reads), batch 1 and batch 16;
- generative, zero-shot: the same weights prompted to write the label (the request ends with an instruction to
  answer with one word, ALLOW, REFUSE or ESCALATE), greedy, prefill plus up to 4 new tokens; the first of the
  three words in the output is the decision (none found: ESCALATE, as a guard fails closed; ``labels_written``
  counts the outputs that held a label word, so a written ESCALATE and a failure are told apart);
- generative, few-shot: the same, after ``--shots`` labelled training requests shown as earlier turns (a base
  model follows examples rather than instructions), so it has a fair chance to write a label;
- scored, few-shot: the few-shot prompt's next-token logits compared at the first token of each label word
  (a constrained guard: one prefill, always one of the three);
- the two few-shot ways again on the bare base: LoRA off and the SO(8) gates taken out, so what the demo taught
  layers 12-17 (to answer or explain after this prompt) does not stand in the way of writing a label.
It reports latency p50/p95 per request, requests/s, each mode's ratio to the head, how often each agrees with
the head, and each one's accuracy on the gold labels, so the agreement can be read.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.core.schema import LABELS  # noqa: E402
from so8t_lib.data.tables import load_split, stratified_sample  # noqa: E402
from so8t_lib.model import SO8TModel  # noqa: E402
from so8t_lib.model.prompts import build_messages, render_messages  # noqa: E402

INSTRUCTION = "\n\nAnswer with one word, ALLOW, REFUSE or ESCALATE."
FAIL_CLOSED = "ESCALATE"
LABEL_WORD = re.compile(r"\b(ALLOW|REFUSE|ESCALATE)\b", re.IGNORECASE)
Item = tuple[str, str | None]


def _context(value) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def guard_prompt(model: SO8TModel, request: str, context: str | None, shots: list[tuple[Item, str]]) -> str:
    """The model's own prompt format, with each shot as an earlier user turn answered by its label."""
    messages = build_messages(request + INSTRUCTION, context, model.system_prompt)
    earlier = []
    for (shot_request, shot_context), label in shots:
        earlier += [build_messages(shot_request + INSTRUCTION, shot_context)[1], {"role": "assistant", "content": label}]
    return render_messages(model.tokenizer, messages[:1] + earlier + messages[1:])


def generative_decision(model: SO8TModel, prompt: str, max_new_tokens: int = 4) -> str | None:
    """The first label word the model writes, or None when it writes none (the caller fails closed)."""
    batch = model.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.causal_lm.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                       pad_token_id=model.tokenizer.pad_token_id)
    text = model.tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    found = LABEL_WORD.search(text)
    return found.group(1).upper() if found else None


def label_first_tokens(model: SO8TModel) -> list[int]:
    """The first token of each label word as it would start the model's turn; they must differ."""
    ids = [model.tokenizer(label, add_special_tokens=False)["input_ids"][0] for label in LABELS]
    if len(set(ids)) != len(LABELS):
        raise ValueError(f"the label words share a first token ({ids}): scoring cannot tell them apart")
    return ids


def scored_decision(model: SO8TModel, prompt: str, label_ids: list[int]) -> str:
    batch = model.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = model.causal_lm(**batch, logits_to_keep=1).logits[0, -1]
    return LABELS[int(logits[label_ids].argmax())]


@contextmanager
def bare_base(model: SO8TModel) -> Iterator[None]:
    """The pretrained base alone for the duration: LoRA disabled (peft) and each gated projection swapped back
    for the module it wraps; everything is put back on the way out."""
    swapped = []
    for _, parent, leaf in model.gate_slots():
        gated = getattr(parent, leaf)
        setattr(parent, leaf, gated.wrapped)
        swapped.append((parent, leaf, gated))
    try:
        with model.lm.disable_adapter() if hasattr(model.lm, "disable_adapter") else nullcontext():
            yield
    finally:
        for parent, leaf, gated in swapped:
            setattr(parent, leaf, gated)


def timed(fn: Callable, items: list) -> tuple[list, np.ndarray]:
    results, times = [], []
    for item in items:
        start = time.perf_counter()
        results.append(fn(item))
        times.append(time.perf_counter() - start)
    return results, np.array(times) * 1000


def latency(ms: np.ndarray) -> dict:
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "requests_per_s": len(ms) / (ms.sum() / 1000)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="checkpoints/so8t-demo")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--shots", type=int, default=6, help="labelled training requests in the few-shot prompt")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "head_vs_generative.json"))
    args = parser.parse_args(argv)
    model = SO8TModel.load(args.model)
    table = stratified_sample(load_split("test"), args.rows, seed=0)
    items: list[Item] = [(r, _context(c)) for r, c in zip(table["user_request"], table["context"])]
    gold = list(table["label"])
    # the shots: short requests without context, the labels in turn, from the training split (never test)
    train = load_split("train")
    train = train[(train["context"].fillna("").str.strip() == "") & (train["user_request"].str.len() < 90)]
    per_label = -(-args.shots // len(LABELS))
    picks = [train[train["label"] == label].sample(per_label, random_state=0) for label in LABELS]
    shots = [((picks[i % 3].iloc[i // 3]["user_request"], None), LABELS[i % 3]) for i in range(args.shots)]

    model.decide([items[0][0]])  # warm-up
    head, head_ms = timed(lambda it: LABELS[int(model.decide([it[0]], [it[1]])[0].argmax())], items)
    start = time.perf_counter()
    model.decide([r for r, _ in items], [c for _, c in items], batch_size=16)
    batched_s = time.perf_counter() - start

    label_ids = label_first_tokens(model)
    modes = {
        "generative_zero_shot": lambda it: generative_decision(model, guard_prompt(model, *it, [])),
        "generative_few_shot": lambda it: generative_decision(model, guard_prompt(model, *it, shots)),
        "scored_few_shot": lambda it: scored_decision(model, guard_prompt(model, *it, shots), label_ids),
        "bare_base_generative_few_shot": lambda it: generative_decision(model, guard_prompt(model, *it, shots)),
        "bare_base_scored_few_shot": lambda it: scored_decision(model, guard_prompt(model, *it, shots), label_ids),
    }
    result = {
        "benchmark": "head_vs_generative", "model": str(args.model), "rows": len(items), "shots": len(shots),
        "threads": torch.get_num_threads(),
        "head_batch1": latency(head_ms), "head_batch16": {"requests_per_s": len(items) / batched_s},
        "accuracy_head": float(np.mean([a == g for a, g in zip(head, gold)])),
    }
    for name, decide in modes.items():
        with bare_base(model) if name.startswith("bare_base") else nullcontext():
            decide(items[0])  # warm-up
            written, ms = timed(decide, items)
        decisions = [label or FAIL_CLOSED for label in written]  # no label word: the guard fails closed
        result[name] = {**latency(ms), "p50_ratio_to_head": float(np.percentile(ms, 50) / np.percentile(head_ms, 50)),
                        "agreement_with_head": float(np.mean([a == b for a, b in zip(head, decisions)])),
                        "accuracy": float(np.mean([a == g for a, g in zip(decisions, gold)])),
                        "label_counts": {label: decisions.count(label) for label in LABELS},
                        "labels_written": sum(label is not None for label in written)}
    atomic_write_text(args.out, json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
