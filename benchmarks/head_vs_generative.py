"""The headline speed figure: SafetyHeadB's one-pass decision against deciding the way generative guards do.

    python benchmarks/head_vs_generative.py [--model checkpoints/so8t-demo] [--rows 64] \
        [--out benchmarks/results/head_vs_generative.json]

Same model, same requests (a stratified sample of the test split), one process:
- head: ``decide`` (one prefill per batch, SafetyHeadB on the pooled state), batch 1 and batch 16;
- generative: the same weights prompted to write the label (the prompt ends with an instruction to answer
  with one word, ALLOW, REFUSE or ESCALATE), greedy, prefill plus up to 4 new tokens, batch 1; the first of
  the three words in the output is the decision (none found: ESCALATE, as a guard would fail closed).
It reports latency p50/p95 per request, requests/s, the ratio head/generative, and how often the two agree
(and each one's accuracy on the gold labels, so the agreement can be read).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.core.schema import LABELS  # noqa: E402
from so8t_lib.data.tables import load_split, stratified_sample  # noqa: E402
from so8t_lib.model import SO8TModel  # noqa: E402

INSTRUCTION = "\n\nAnswer with one word, ALLOW, REFUSE or ESCALATE."
LABEL_WORD = re.compile(r"\b(ALLOW|REFUSE|ESCALATE)\b", re.IGNORECASE)


def generative_decision(model: SO8TModel, request: str, context: str | None, max_new_tokens: int = 4) -> str:
    prompt = model.format_prompt(request + INSTRUCTION, context)
    batch = model.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.causal_lm.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                       pad_token_id=model.tokenizer.pad_token_id)
    text = model.tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    found = LABEL_WORD.search(text)
    return found.group(1).upper() if found else "ESCALATE"


def timed(fn, items) -> tuple[list, np.ndarray]:
    results, times = [], []
    for item in items:
        start = time.perf_counter()
        results.append(fn(item))
        times.append(time.perf_counter() - start)
    return results, np.array(times) * 1000


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="checkpoints/so8t-demo")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "head_vs_generative.json"))
    args = parser.parse_args(argv)
    model = SO8TModel.load(args.model)
    table = stratified_sample(load_split("test"), args.rows, seed=0)
    items = [(r, c if isinstance(c, str) and c.strip() else None) for r, c in zip(table["user_request"], table["context"])]
    gold = list(table["label"])
    model.decide([items[0][0]])  # warm-up
    head, head_ms = timed(lambda it: LABELS[int(model.decide([it[0]], [it[1]])[0].argmax())], items)
    start = time.perf_counter()
    model.decide([r for r, _ in items], [c for _, c in items], batch_size=16)
    batched_s = time.perf_counter() - start
    generative_decision(model, *items[0])  # warm-up
    gen, gen_ms = timed(lambda it: generative_decision(model, *it), items)
    result = {
        "benchmark": "head_vs_generative", "model": str(args.model), "rows": len(items), "threads": torch.get_num_threads(),
        "head_batch1": {"p50_ms": float(np.percentile(head_ms, 50)), "p95_ms": float(np.percentile(head_ms, 95)),
                        "requests_per_s": len(items) / (head_ms.sum() / 1000)},
        "head_batch16": {"requests_per_s": len(items) / batched_s},
        "generative_batch1": {"p50_ms": float(np.percentile(gen_ms, 50)), "p95_ms": float(np.percentile(gen_ms, 95)),
                              "requests_per_s": len(items) / (gen_ms.sum() / 1000)},
        "agreement": float(np.mean([a == b for a, b in zip(head, gen)])),
        "accuracy_head": float(np.mean([a == g for a, g in zip(head, gold)])),
        "accuracy_generative": float(np.mean([a == g for a, g in zip(gen, gold)])),
        "generative_label_counts": {label: gen.count(label) for label in LABELS},
    }
    result["p50_ratio_generative_over_head"] = result["generative_batch1"]["p50_ms"] / result["head_batch1"]["p50_ms"]
    atomic_write_text(args.out, json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
