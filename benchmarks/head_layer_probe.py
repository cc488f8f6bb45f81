"""Which state should SafetyHeadB read? A linear probe on every layer of the frozen pretrained base.

    python benchmarks/head_layer_probe.py [--config configs/gemma3-270m.yaml] [--train-rows 3000] \
        [--out benchmarks/results/head_layer_probe.json] [--plot docs/figures/head_layer_probe.png] [--plot-only]

About 20 minutes on 2 CPU cores (6 for the states, the rest for the probe fits).

One pass of the untouched base (no LoRA, no gates: ``gates.init`` does not matter, the gates are off) over a
stratified sample of the training split and the whole validation split, prompts only (what the head sees).
For every layer's output (0 = embeddings, then each decoder layer; the last one with the model's final
norm, as HF returns it) and three poolings (the prompt's last token; the mean over the prompt; the mean over
the request's part, i.e. after the system turn every prompt shares, whose states are the same in every row),
and for a few concatenations of mean-pooled depths (every sixth, third or half of the network: could a head
reading several layers do better than any one?), the same standardised multinomial logistic regression (class weights from the training config) is fitted on the
training states and scored on validation: macro-F1 and dangerous compliance (gold REFUSE rows ALLOWed). The
regularisation strength is picked per cell from a small grid on a 20% hold-out of the training sample, so
no validation label chooses anything. The result says where the base's knowledge of the decision lives.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.config import load_config  # noqa: E402
from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.core.metrics import dangerous_compliance_rate, macro_f1  # noqa: E402
from so8t_lib.core.paths import project_relative  # noqa: E402
from so8t_lib.core.schema import LABELS  # noqa: E402
from so8t_lib.data.tables import load_split, stratified_sample  # noqa: E402
from so8t_lib.model import SO8TModel  # noqa: E402
from so8t_lib.model.prompts import format_prompt  # noqa: E402
from so8t_lib.train.head_init import fit_probe  # noqa: E402

C_GRID = (0.01, 0.03, 0.1, 0.3)
POOLINGS = ("last", "mean", "mean_request")
DEPTH_FRACTIONS = (2, 3, 6)  # concatenations: every L/2, L/3, L/6 layers, ending at the last


def shared_prefix_length(ids: list[list[int]]) -> int:
    """Tokens every prompt starts with (BOS, the turn marker, the system text): their states are the same in
    every row, since attention is causal, so they only dilute a mean."""
    shortest = min(len(row) for row in ids)
    n = 0
    while n < shortest - 1 and len({row[n] for row in ids}) == 1:
        n += 1
    return n


def cut_with_request_starts(ids: list[list[int]], max_length: int) -> tuple[list[list[int]], list[int]]:
    """Each prompt's last ``max_length`` tokens and where its request part starts in them: after the shared
    prefix, found on the whole prompts (a prompt cut from the left lost some or all of that prefix)."""
    prefix = shared_prefix_length(ids)
    cut = [row[-max_length:] for row in ids]
    return cut, [max(0, prefix - (len(row) - len(kept))) for row, kept in zip(ids, cut)]


def depth_sets(layers: int) -> list[tuple[int, ...]]:
    """Layer outputs read together: every ``layers // f``-th one up to the last, for f in DEPTH_FRACTIONS."""
    sets = []
    for fraction in DEPTH_FRACTIONS:
        stride = max(1, layers // fraction)
        chosen = tuple(range(layers, 0, -stride))[::-1]
        if len(chosen) > 1 and chosen not in sets:
            sets.append(chosen)
    return sets


@torch.no_grad()
def layer_states(model: SO8TModel, rows: list[dict], max_length: int, batch_size: int = 16) -> np.ndarray:
    """(layers + 1, 3, N, hidden): every layer's state pooled as POOLINGS says, float32."""
    from tqdm.auto import tqdm

    tok = model.tokenizer
    prompts = [format_prompt(tok, r["user_request"], r.get("context") or None, model.system_prompt) for r in rows]
    ids, request_starts = cut_with_request_starts([tok(p, add_special_tokens=False)["input_ids"] for p in prompts],
                                                  max_length)
    order = sorted(range(len(rows)), key=lambda i: len(ids[i]))
    decoder = model.causal_lm.get_decoder()
    out_arr = None
    for start in tqdm(range(0, len(order), batch_size), desc="layer states", unit="batch"):
        part = order[start:start + batch_size]
        width = max(len(ids[i]) for i in part)
        input_ids = torch.full((len(part), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(part), width), dtype=torch.long)
        for j, i in enumerate(part):  # right padding: the prompt's tokens keep positions 0..n-1
            input_ids[j, :len(ids[i])] = torch.tensor(ids[i])
            mask[j, :len(ids[i])] = 1
        hidden = decoder(input_ids=input_ids, attention_mask=mask, use_cache=False,
                         output_hidden_states=True).hidden_states
        if out_arr is None:
            out_arr = np.empty((len(hidden), len(POOLINGS), len(rows), hidden[0].shape[-1]), dtype=np.float32)
        last = mask.sum(1) - 1
        weights = (mask / mask.sum(1, keepdim=True)).unsqueeze(-1)
        request = mask.clone()
        for j, i in enumerate(part):
            request[j, :request_starts[i]] = 0
        request_weights = (request / request.sum(1, keepdim=True)).unsqueeze(-1)
        for layer, h in enumerate(hidden):
            h = h.float()
            out_arr[layer, 0, part] = h[torch.arange(len(part)), last].numpy()
            out_arr[layer, 1, part] = (h * weights).sum(1).numpy()
            out_arr[layer, 2, part] = (h * request_weights).sum(1).numpy()
    return out_arr


def config_and_rows(config_path: str, train_rows: int, val_rows: int) -> tuple:
    """The config, a stratified training sample and the validation rows (0: all), seeded by the config."""
    cfg = load_config(config_path)
    torch.manual_seed(cfg.training.seed)
    train = stratified_sample(load_split("train", cfg.training.data_dir), train_rows,
                              seed=cfg.training.seed).to_dict("records")
    val = stratified_sample(load_split("val", cfg.training.data_dir), val_rows or None,
                            seed=cfg.training.seed).to_dict("records")
    return cfg, train, val


def probe_cell(x: np.ndarray, y: np.ndarray, n: int, fit: np.ndarray, hold: np.ndarray,
               class_weights: list[float]) -> dict:
    """Pick C on the hold-out (``fit``/``hold`` index the first ``n`` rows, the training sample), refit on the
    whole training sample, score on the rest (validation)."""
    picks = []
    for c in C_GRID:
        probe = fit_probe(x[fit], y[fit], class_weights, c)
        picks.append((score(y[hold], probe.predict(x[hold]))["macro_f1"], c))
    best_c = max(picks)[1]
    probe = fit_probe(x[:n], y[:n], class_weights, best_c)
    return {"C": best_c, **score(y[n:], probe.predict(x[n:]))}


def sample_and_states(config_path: str, train_rows: int, val_rows: int) -> tuple:
    """The probe scripts' common start: ``config_and_rows`` and the rows' states on every layer
    (``layer_states``), with the seconds the states took."""
    cfg, train, val = config_and_rows(config_path, train_rows, val_rows)
    model = SO8TModel.from_config(cfg.model)
    started = time.perf_counter()
    states = layer_states(model, train + val, cfg.training.max_length)
    return cfg, train, val, states, time.perf_counter() - started


def score(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    gold, pred = [LABELS[i] for i in y_true], [LABELS[i] for i in y_pred]
    return {"macro_f1": round(macro_f1(gold, pred), 4),
            "dangerous_compliance": round(dangerous_compliance_rate(gold, pred), 4)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/gemma3-270m.yaml")
    parser.add_argument("--train-rows", type=int, default=3000)
    parser.add_argument("--val-rows", type=int, default=0, help="0: the whole validation split")
    parser.add_argument("--out", default="benchmarks/results/head_layer_probe.json")
    parser.add_argument("--plot", default="docs/figures/head_layer_probe.png")
    parser.add_argument("--plot-only", action="store_true", help="redraw the figure from --out, measure nothing")
    args = parser.parse_args(argv)
    if args.plot_only:
        result = json.loads(Path(args.out).read_text(encoding="utf-8"))
        plot(result["cells"], Path(args.plot), result)
        return result

    cfg, train_rows, val_rows, states, seconds = sample_and_states(args.config, args.train_rows, args.val_rows)
    n = len(train_rows)
    y = np.array([LABELS.index(r["label"]) for r in train_rows + val_rows])
    class_weights = cfg.loss.class_weight_list()
    rng = np.random.default_rng(0)
    fit_idx = rng.permutation(n)
    hold, fit = fit_idx[: n // 5], fit_idx[n // 5:]

    from tqdm.auto import tqdm

    cells = [{"layer": layer, "pooling": pooling, **probe_cell(states[layer, p].astype(np.float64), y, n, fit, hold, class_weights)}
             for layer in tqdm(range(states.shape[0]), desc="probes", unit="layer")
             for p, pooling in enumerate(POOLINGS)]
    mean = POOLINGS.index("mean")
    concatenations = [{"layers": list(chosen), "pooling": "mean",
                       **probe_cell(np.concatenate([states[layer, mean] for layer in chosen], 1).astype(np.float64),
                                  y, n, fit, hold, class_weights)}
                      for chosen in tqdm(depth_sets(states.shape[0] - 1), desc="concatenations", unit="set")]
    best = max(cells, key=lambda c: c["macro_f1"])
    result = {
        "config": project_relative(args.config), "base": cfg.model.preset, "dtype": cfg.model.dtype,
        "train_rows": n, "val_rows": len(val_rows), "states_seconds": round(seconds, 1),
        "layers": states.shape[0] - 1, "C_grid": list(C_GRID), "best": best, "cells": cells,
        "concatenations": concatenations,
        "note": "layer 0 is the embedding output; layer L is decoder layer L-1's output; the last has the final norm; "
                "mean_request averages only the tokens after the prefix all prompts share",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot(cells, Path(args.plot), result)
    print(json.dumps({"best": best, "best_concatenation": max(concatenations, key=lambda c: c["macro_f1"],
                                                              default=None)}))
    return result


def plot(cells: list[dict], path: Path, result: dict) -> None:
    labels = {"last": "last token", "mean": "mean over prompt", "mean_request": "mean over the request's part"}

    def concatenation(ax) -> None:
        for concat in result.get("concatenations", [])[-1:]:  # the finest set
            ax.axhline(concat["macro_f1"], color="grey", lw=1)
            ax.annotate(f"mean of layers {', '.join(map(str, concat['layers']))}, concatenated",
                        (0, concat["macro_f1"]), textcoords="offset points", xytext=(2, 3), fontsize=8, color="grey")

    plot_layer_curves(cells, [(p, style, labels[p]) for p, style in (("last", "o--"), ("mean", "s-"),
                                                                      ("mean_request", "^:"))],
                      list(range(0, result["layers"] + 1, 2)),
                      f"Linear probe per layer, frozen {result['base']} ({result['train_rows']} train rows)", path,
                      extra=concatenation)


def plot_layer_curves(cells: list[dict], curves: list[tuple[str, str, str]], xticks: list[int], title: str,
                      path: Path, extra=None) -> None:
    """Validation macro-F1 against the layer, one line per (pooling, matplotlib style, label) in ``curves``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for pooling, style, label in curves:
        pts = [(c["layer"], c["macro_f1"]) for c in cells if c["pooling"] == pooling]
        if pts:
            ax.plot(*zip(*pts), style, label=label)
    if extra is not None:
        extra(ax)
    ax.set_xticks(xticks)
    ax.set_xlabel("layer output (0 = embeddings; the last with the final norm)")
    ax.set_ylabel("validation macro-F1")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
