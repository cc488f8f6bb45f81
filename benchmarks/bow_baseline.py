"""A bag-of-tokens logistic regression on the corpus: how much of the label the words alone carry.

    python benchmarks/bow_baseline.py [--out benchmarks/results/bow_baseline.json]

Features: which of the project tokenizer's tokens occur in context + request (binary); a linear
softmax classifier trained with Adam (300 full-batch steps, L2 1e-4) on the train split, scored on
val and test with the project's metrics. It is the yardstick for the tiny model: a model that
cannot beat it has not learned more than keyword spotting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.core.schema import LABELS  # noqa: E402
from so8t_lib.data.tables import load_split  # noqa: E402
from so8t_lib.eval.report import safety_report  # noqa: E402
from so8t_lib.model.tokenizer import tiny_tokenizer  # noqa: E402


def bag_of_tokens(table, tokenizer) -> torch.Tensor:
    features = torch.zeros(len(table), len(tokenizer))
    for i, (context, request) in enumerate(zip(table["context"], table["user_request"])):
        ids = tokenizer(f"{context or ''} {request}", add_special_tokens=False)["input_ids"]
        features[i, ids] = 1.0
    return features


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bow_baseline.json"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    splits = {name: load_split(name) for name in ("train", "val", "test")}
    x = {name: bag_of_tokens(t, tokenizer) for name, t in splits.items()}
    y = torch.tensor([LABELS.index(label) for label in splits["train"]["label"]])
    weight = torch.zeros(len(tokenizer), len(LABELS), requires_grad=True)
    bias = torch.zeros(len(LABELS), requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=1e-2)
    for _ in range(args.steps):
        loss = torch.nn.functional.cross_entropy(x["train"] @ weight + bias, y) + 1e-4 * weight.square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    results = {}
    for name in ("val", "test"):
        with torch.no_grad():
            pred = [LABELS[i] for i in (x[name] @ weight + bias).argmax(1)]
        report = safety_report(list(splits[name]["label"]), pred)
        results[name] = {k: report[k] for k in ("macro_f1", "accuracy", "safety_score", "refuse_recall",
                                                "dangerous_compliance", "over_refusal")}
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in results[name].items()))
    atomic_write_text(args.out, json.dumps({"benchmark": "bow_baseline", "steps": args.steps, "results": results},
                                           indent=1))
    return results


if __name__ == "__main__":
    main()
