"""How much the SafetyHeadB warm start gains from more training rows: a learning curve of the linear probe.

    python benchmarks/probe_learning_curve.py [--config configs/gemma3-270m.yaml] [--sizes 750,1500,3000,6000,0] \
        [--out benchmarks/results/probe_learning_curve.json] [--plot docs/figures/probe_learning_curve.png]

The recipe's warm start fits ``so8t_lib.train.head_init.fit_probe`` on the decision states of a 3,000-row
sample (``training.train_max_rows``). Here the untrained model of ``--config`` (the frozen base; gates at the
identity, LoRA at zero: what the warm start sees) gives the decision state of every training and validation
row once (``SO8TModel.decision_states``, as ``decide`` computes it); then, for each sample size (0: the whole
split), a stratified sample of the training rows fits the probe, its regularisation picked on a 20% hold-out of
that sample, and the whole validation split scores it. Val only: the test split stays for the model card.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.config import load_config  # noqa: E402
from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.core.metrics import dangerous_compliance_rate, macro_f1  # noqa: E402
from so8t_lib.core.paths import project_relative  # noqa: E402
from so8t_lib.core.schema import LABELS  # noqa: E402
from so8t_lib.data.tables import load_split, stratified_sample  # noqa: E402
from so8t_lib.model import SO8TModel  # noqa: E402
from so8t_lib.train.head_init import fit_probe  # noqa: E402

C_GRID = (0.01, 0.03, 0.1, 0.3)


def states_by_length(model: SO8TModel, rows: list[dict], batch_size: int = 32) -> np.ndarray:
    """Decision states of ``rows`` in their order, computed in batches of similar length (little padding)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["user_request"]) + len(rows[i].get("context") or ""))
    states = model.decision_states([rows[i]["user_request"] for i in order],
                                   [rows[i].get("context") or None for i in order], batch_size, progress=True).numpy()
    out = np.empty_like(states)
    out[order] = states
    return out


def score(gold: np.ndarray, pred: np.ndarray) -> dict:
    g, p = [LABELS[i] for i in gold], [LABELS[i] for i in pred]
    return {"macro_f1": round(macro_f1(g, p), 4), "dangerous_compliance": round(dangerous_compliance_rate(g, p), 4)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/gemma3-270m.yaml")
    parser.add_argument("--sizes", default="750,1500,3000,6000,0", help="training-sample sizes; 0: the whole split")
    parser.add_argument("--train-rows", type=int, default=0, help="compute states for at most this many (0: all)")
    parser.add_argument("--val-rows", type=int, default=0, help="0: the whole validation split")
    parser.add_argument("--out", default="benchmarks/results/probe_learning_curve.json")
    parser.add_argument("--plot", default="docs/figures/probe_learning_curve.png")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    seed = cfg.training.data_seed
    train_table = stratified_sample(load_split("train", cfg.training.data_dir), args.train_rows or None, seed=seed)
    val_rows = stratified_sample(load_split("val", cfg.training.data_dir), args.val_rows or None,
                                 seed=seed).to_dict("records")
    train_table = train_table.reset_index(drop=True)
    model = SO8TModel.from_config(cfg.model)
    started = time.perf_counter()
    x_train = states_by_length(model, train_table.to_dict("records"), cfg.training.eval_batch_size)
    x_val = states_by_length(model, val_rows, cfg.training.eval_batch_size)
    seconds = time.perf_counter() - started
    y_train = np.array([LABELS.index(label) for label in train_table["label"]])
    y_val = np.array([LABELS.index(r["label"]) for r in val_rows])
    weights = cfg.loss.class_weight_list()
    points = []
    for size in [int(s) for s in args.sizes.split(",")]:
        n = len(train_table) if size <= 0 or size > len(train_table) else size
        picked = stratified_sample(train_table, n, seed=seed).index.to_numpy()
        rng = np.random.default_rng(seed)
        shuffled = rng.permutation(picked)
        hold, fit = shuffled[: n // 5], shuffled[n // 5:]
        by_c = {c: score(y_train[hold], fit_probe(x_train[fit], y_train[fit], weights, c).predict(x_train[hold]))
                for c in C_GRID}
        best_c = max(C_GRID, key=lambda c: by_c[c]["macro_f1"])
        probe = fit_probe(x_train[picked], y_train[picked], weights, best_c)
        points.append({"train_rows": int(n), "C": best_c, "train_accuracy": round(float(
            (probe.predict(x_train[picked]) == y_train[picked]).mean()), 4), **score(y_val, probe.predict(x_val))})
        print(json.dumps(points[-1]), flush=True)
    result = {"benchmark": "probe_learning_curve", "config": project_relative(args.config), "base": cfg.model.preset,
              "dtype": cfg.model.dtype, "val_rows": len(val_rows), "states_seconds": round(seconds, 1),
              "recipe_train_rows": cfg.training.train_max_rows, "C_grid": list(C_GRID), "points": points}
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    if args.plot:
        plot(result, Path(args.plot))
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = result["points"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    n = [p["train_rows"] for p in points]
    ax.plot(n, [p["macro_f1"] for p in points], "o-", label="val macro-F1")
    ax.plot(n, [p["dangerous_compliance"] for p in points], "s--", label="val dangerous compliance")
    if result.get("recipe_train_rows"):
        ax.axvline(result["recipe_train_rows"], color="grey", lw=0.8, ls=":", label="the recipe's sample")
    ax.set_xscale("log")
    ax.set_xlabel("training rows the probe is fitted on")
    ax.set_title(f"Linear probe on the frozen {result['base']} ({result['val_rows']} val rows)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
