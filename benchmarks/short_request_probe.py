"""Why does the gate let short harmful requests through? Probes on the frozen base, scored on short and long rows.

    python benchmarks/short_request_probe.py [--config configs/gemma3-270m.yaml] [--train-rows 3000] \
        [--out benchmarks/results/short_request_probe.json]

About 10 minutes on 2 idle CPU cores (most of it one pass of the base over the rows).

The corpus-v3 default lets about a third of the held-out short harmful requests (seeds ``brief_*``) through,
against a tenth of the others. One suspicion is the mean pooling: every prompt starts with the same system turn,
whose states are the same in every row, so the shorter the request, the less of the mean it makes. This script
fits the warm start's probe (the same standardised logistic regression) on a stratified training sample's
frozen states, for the final-norm state, layer 10 and the five depths of ``configs/gemma3-270m-depths.yaml``,
pooled three ways (last token, mean over the prompt, mean over the request's part only), and scores each on the
whole validation split, on its short rows and on the rest: if request-only pooling closed the gap on the short
rows, the dilution would be the cause.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from head_layer_probe import POOLINGS, sample_and_states, score  # noqa: E402

from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.core.paths import project_relative  # noqa: E402
from so8t_lib.core.schema import LABELS  # noqa: E402
from so8t_lib.data.tables import SHORT_FAMILY_PREFIX, is_short_family  # noqa: E402
from so8t_lib.train.head_init import fit_probe  # noqa: E402

REGULARIZATION = (0.01, 0.03)  # the warm starts' C values (five depths, final state)


def readouts(layers: int) -> dict[str, list[int]]:
    """Which hidden states each probe reads: the final-norm state, the middle layer, and five depths."""
    return {"final": [layers], "middle": [layers // 2 + 1],
            "five_depths": sorted({max(1, layers * k // 6) for k in (2, 3, 4, 5)} | {layers})}


def subset_scores(y: np.ndarray, pred: np.ndarray, short: np.ndarray) -> dict:
    """Macro-F1 and dangerous compliance on all rows, the short rows and the rest (None for an empty subset)."""
    return {name: score(y[mask], pred[mask]) if mask.any() else None
            for name, mask in (("all", np.ones_like(short)), ("short", short), ("other", ~short))}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/gemma3-270m.yaml")
    parser.add_argument("--train-rows", type=int, default=3000)
    parser.add_argument("--val-rows", type=int, default=0, help="0: the whole validation split")
    parser.add_argument("--out", default="benchmarks/results/short_request_probe.json")
    args = parser.parse_args(argv)

    cfg, train_rows, val_rows, states, seconds = sample_and_states(args.config, args.train_rows, args.val_rows)
    n = len(train_rows)
    y = np.array([LABELS.index(r["label"]) for r in train_rows + val_rows])
    short = np.array([is_short_family(r["family"]) for r in val_rows])
    class_weights = cfg.loss.class_weight_list()
    cells = []
    for readout, layers in readouts(states.shape[0] - 1).items():
        for p, pooling in enumerate(POOLINGS):
            x = np.concatenate([states[layer, p] for layer in layers], 1).astype(np.float64)
            for c in REGULARIZATION:
                pred = fit_probe(x[:n], y[:n], class_weights, c).predict(x[n:])
                cells.append({"readout": readout, "layers": layers, "pooling": pooling, "C": c,
                              **subset_scores(y[n:], pred, short)})
    result = {
        "config": project_relative(args.config), "base": cfg.model.preset, "train_rows": n,
        "val_rows": len(val_rows), "short_val_rows": int(short.sum()), "states_seconds": round(seconds, 1),
        "short_family_prefix": SHORT_FAMILY_PREFIX, "cells": cells,
        "note": "dangerous_compliance: gold REFUSE rows decided ALLOW; mean_request pools only the tokens after "
                "the prefix every prompt shares (the system turn)",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    def shown(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    for cell in cells:
        parts = "  ".join(f"{k} {shown(cell[k]['macro_f1'])}/{shown(cell[k]['dangerous_compliance'])}"
                          for k in ("all", "short", "other") if cell[k])
        print(f"{cell['readout']:>11} {cell['pooling']:>12} C={cell['C']:<5} macro-F1/dangerous compliance: {parts}")
    return result


if __name__ == "__main__":
    main()
