"""Mean or max? How SafetyHeadB should pool a prompt's token states, measured on the frozen pretrained base.

    python benchmarks/token_pooling_probe.py [--config configs/gemma3-270m.yaml] [--train-rows 3000] \
        [--layers 3 6 9 12 18] [--poolings mean max attention] [--concat 6+9 9+12] \
        [--out benchmarks/results/token_pooling_probe.json] [--plot docs/figures/token_pooling_probe.png] [--plot-only]

About 25 minutes on 2 CPU cores (7 for the states, the rest for the fits).

The default head reads the mean of the prompt's final-norm states (llama.cpp's MEAN pooling). A mean dilutes
the few tokens that make a request harmful among the many that do not; the char n-gram baseline, which
sees words and not averages, beats every linear readout of a mean here. This benchmark asks whether the
base's states already hold what the mean loses. For each chosen layer output (HF numbering: 0 = embeddings,
L = the final norm's output) it fits, on the same stratified training sample and the same standardised states:

- ``mean``: a logistic regression on the mean over the prompt (what ``head_layer_probe.py`` measured);
- ``max``: a per-token layer (Linear to ``--units``, GELU), the maximum over the prompt's tokens, then a
  linear layer to the three labels: the same two linear layers as a ``hidden_units`` head, with the pooling
  moved between them, so it would travel in GGUF metadata as the current head does;
- ``attention``: a learned softmax weighting of the tokens (``--heads`` of them), then a linear layer;
- with ``--concat 6+9``, a ``max`` head on two depths at once: each token's standardised states of both layers side by
  side (what ``model.head.read_layers: [6, 9]`` gives a max head).

The neural heads train with AdamW and the training config's class weights; how many epochs is picked on a 20%
hold-out of the training sample (as the C of the regression), then they are refitted on the whole sample.
Every cell is scored on the whole validation split: macro-F1 and dangerous compliance. No validation label
chooses anything. One seed per cell.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from head_layer_probe import config_and_rows, plot_layer_curves, probe_cell, score  # noqa: E402

from so8t_lib.core.batching import batches_by_length  # noqa: E402
from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.core.paths import project_relative  # noqa: E402
from so8t_lib.core.schema import LABELS  # noqa: E402
from so8t_lib.model import SO8TModel  # noqa: E402
from so8t_lib.model.prompts import format_prompt  # noqa: E402

POOLINGS = ("mean", "max", "attention")
EPOCH_CHECKPOINTS = (5, 10, 20)  # the hold-out picks one of these
BATCH_ROWS = 32
LEARNING_RATE, WEIGHT_DECAY, DROPOUT = 1e-3, 1e-2, 0.1


@torch.no_grad()
def token_states(model: SO8TModel, rows: list[dict], max_length: int, layers: list[int],
                 batch_size: int = 16) -> dict[int, list[torch.Tensor]]:
    """layer -> one (prompt tokens, hidden) bfloat16 tensor per row: the prompt's states at that layer output
    (bfloat16, the model's own dtype here: Gemma's residual stream has features past float16's range)."""
    from tqdm.auto import tqdm

    tok = model.tokenizer
    prompts = [format_prompt(tok, r["user_request"], r.get("context") or None, model.system_prompt) for r in rows]
    ids = [tok(p, add_special_tokens=False)["input_ids"][-max_length:] for p in prompts]
    order = sorted(range(len(rows)), key=lambda i: len(ids[i]))
    decoder = model.causal_lm.get_decoder()
    out: dict[int, list[torch.Tensor]] = {layer: [None] * len(rows) for layer in layers}  # type: ignore[list-item]
    for start in tqdm(range(0, len(order), batch_size), desc="token states", unit="batch"):
        part = order[start:start + batch_size]
        width = max(len(ids[i]) for i in part)
        input_ids = torch.full((len(part), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(part), width), dtype=torch.long)
        for j, i in enumerate(part):
            input_ids[j, :len(ids[i])] = torch.tensor(ids[i])
            mask[j, :len(ids[i])] = 1
        hidden = decoder(input_ids=input_ids, attention_mask=mask, use_cache=False,
                         output_hidden_states=True).hidden_states
        for layer in layers:
            h = hidden[layer].to(torch.bfloat16)
            for j, i in enumerate(part):
                out[layer][i] = h[j, :len(ids[i])].clone()
    return out


class MaxPoolHead(torch.nn.Module):
    """Per-token Linear + GELU, max over the tokens, Linear: a hidden-units head with the pooling inside."""

    def __init__(self, width: int, units: int) -> None:
        super().__init__()
        self.token_layer, self.out = torch.nn.Linear(width, units), torch.nn.Linear(units, len(LABELS))
        self.drop = torch.nn.Dropout(DROPOUT)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.gelu(self.token_layer(self.drop(x)), approximate="tanh")
        return self.out(self.drop(h.masked_fill(~mask[..., None], float("-inf")).amax(1)))


class AttentionPoolHead(torch.nn.Module):
    """A softmax weighting of the tokens per head (a small scorer), the weighted states concatenated, Linear."""

    def __init__(self, width: int, heads: int, units: int = 128) -> None:
        super().__init__()
        self.scorer = torch.nn.Sequential(torch.nn.Linear(width, units), torch.nn.Tanh(), torch.nn.Linear(units, heads))
        self.out, self.drop = torch.nn.Linear(width * heads, len(LABELS)), torch.nn.Dropout(DROPOUT)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = self.scorer(x).masked_fill(~mask[..., None], float("-inf")).softmax(1)
        return self.out(self.drop(torch.einsum("blh,bld->bhd", weights, x).flatten(1)))


def standardized(states: list[torch.Tensor], n: int) -> list[torch.Tensor]:
    """Every row's states scaled by the training sample's per-feature mean and spread (the head's standardiser)."""
    sample = torch.cat(states[:n]).double()
    mean, scale = sample.mean(0), 1.0 / (sample.std(0) + 1e-3)
    return [((s.double() - mean) * scale).float() for s in states]


def padded(states: list[torch.Tensor], rows: list[int]) -> tuple:
    x = torch.nn.utils.rnn.pad_sequence([states[i] for i in rows], batch_first=True)
    lengths = torch.tensor([len(states[i]) for i in rows])
    return x, torch.arange(x.shape[1])[None, :] < lengths[:, None]


def predict(head: torch.nn.Module, states, rows) -> np.ndarray:
    head.eval()
    out = []
    with torch.no_grad():
        for batch in batches_by_length([len(states[i]) for i in rows], 64):
            x, mask = padded(states, [rows[k] for k in batch])
            out.append((np.asarray(batch), head(x, mask).argmax(1).numpy()))
    pred = np.empty(len(rows), dtype=np.int64)
    for where, values in out:
        pred[where] = values
    return pred


def train_head(make, states, rows, y, class_weights, checkpoints, score_rows=None):
    """AdamW over length-grouped batches; at each checkpoint epoch, the macro-F1 on ``score_rows``."""
    torch.manual_seed(0)
    head = make()
    opt = torch.optim.AdamW(head.parameters(), LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    weight = torch.tensor(class_weights, dtype=torch.float32)
    rng = np.random.default_rng(0)
    lengths = [len(states[i]) for i in rows]
    trace = {}
    for epoch in range(1, max(checkpoints) + 1):
        head.train()
        # similar lengths together (little padding), shuffled within a few tokens and in batch order
        jittered = [n + rng.uniform(0, 8) for n in lengths]
        batches = batches_by_length(jittered, BATCH_ROWS)
        for b in rng.permutation(len(batches)):
            batch = batches[b]
            x, mask = padded(states, [rows[k] for k in batch])
            loss = torch.nn.functional.cross_entropy(head(x, mask), torch.from_numpy(y[[rows[k] for k in batch]]),
                                                     weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if score_rows is not None and epoch in checkpoints:
            trace[epoch] = score(y[score_rows], predict(head, states, score_rows))["macro_f1"]
    return head, trace


def neural_cell(name: str, make, states, n: int, y, class_weights, fit, hold) -> dict:
    """Pick the epochs on the hold-out, refit on the whole training sample, score on validation."""
    clock = time.perf_counter()
    _, trace = train_head(make, states, list(fit), y, class_weights, EPOCH_CHECKPOINTS, list(hold))
    epochs = max(trace, key=lambda e: (trace[e], -e))
    head, _ = train_head(make, states, list(range(n)), y, class_weights, (epochs,))
    val_rows = list(range(n, len(states)))
    return {"pooling": name, "epochs": epochs, "hold_out_macro_f1": {str(e): f1 for e, f1 in trace.items()},
            "fit_seconds": round(time.perf_counter() - clock, 1),
            **score(y[n:], predict(head, states, val_rows))}


def mean_cell(states, n: int, y, class_weights, fit, hold) -> dict:
    x = torch.stack([s.double().mean(0) for s in states]).numpy()
    return {"pooling": "mean", **probe_cell(x, y, n, fit, hold, class_weights)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/gemma3-270m.yaml")
    parser.add_argument("--train-rows", type=int, default=3000)
    parser.add_argument("--val-rows", type=int, default=0, help="0: the whole validation split")
    parser.add_argument("--layers", type=int, nargs="+", default=[3, 6, 9, 12, 18])
    parser.add_argument("--poolings", nargs="+", default=list(POOLINGS), choices=POOLINGS,
                        help="the single-layer cells to fit")
    parser.add_argument("--concat", nargs="*", default=[], metavar="A+B",
                        help="depths whose token states a max head reads side by side, e.g. 6+9 (each in --layers)")
    parser.add_argument("--units", type=int, default=256, help="the max head's per-token layer")
    parser.add_argument("--heads", type=int, default=4, help="the attention head's weightings")
    parser.add_argument("--out", default="benchmarks/results/token_pooling_probe.json")
    parser.add_argument("--plot", default="docs/figures/token_pooling_probe.png")
    parser.add_argument("--plot-only", action="store_true", help="redraw the figure from --out, measure nothing")
    args = parser.parse_args(argv)
    if args.plot_only:
        result = json.loads(Path(args.out).read_text(encoding="utf-8"))
        plot(result, Path(args.plot))
        return result

    from tqdm.auto import tqdm

    concat = [[int(x) for x in group.split("+")] for group in args.concat]
    missing = sorted({x for group in concat for x in group} - set(args.layers))
    if missing:
        parser.error(f"--concat reads layers {missing} that --layers does not compute")
    cfg, train, val = config_and_rows(args.config, args.train_rows, args.val_rows)
    model = SO8TModel.from_config(cfg.model)
    started = time.perf_counter()
    by_layer = token_states(model, train + val, cfg.training.max_length, args.layers)
    seconds = time.perf_counter() - started
    del model
    n = len(train)
    y = np.array([LABELS.index(r["label"]) for r in train + val])
    class_weights = cfg.loss.class_weight_list()
    order = np.random.default_rng(0).permutation(n)
    hold, fit = order[: n // 5], order[n // 5:]
    width = by_layer[args.layers[0]][0].shape[1]
    cells, scaled = [], {}
    for layer in tqdm(args.layers, desc="layers", unit="layer"):
        fitted = []
        if "mean" in args.poolings:
            fitted.append({"layer": layer, **mean_cell(by_layer[layer], n, y, class_weights, fit, hold)})
        states = standardized(by_layer.pop(layer), n)
        if "max" in args.poolings:
            fitted.append({"layer": layer, **neural_cell("max", lambda: MaxPoolHead(width, args.units), states, n, y,
                                                        class_weights, fit, hold)})
        if "attention" in args.poolings:
            fitted.append({"layer": layer, **neural_cell("attention", lambda: AttentionPoolHead(width, args.heads),
                                                        states, n, y, class_weights, fit, hold)})
        if any(layer in group for group in concat):
            scaled[layer] = states
        cells += fitted
        print(json.dumps(fitted), flush=True)
    for group in concat:
        states = [torch.cat(parts, -1) for parts in zip(*(scaled[layer] for layer in group))]
        span = states[0].shape[1]
        cell = {"layers": group, **neural_cell("max", lambda span=span: MaxPoolHead(span, args.units), states, n, y,
                                               class_weights, fit, hold)}
        cells.append(cell)
        print(json.dumps(cell), flush=True)
    result = {
        "config": project_relative(args.config), "base": cfg.model.preset, "dtype": cfg.model.dtype,
        "train_rows": n, "val_rows": len(val), "states_seconds": round(seconds, 1), "layers": args.layers,
        "units": args.units, "heads": args.heads, "concat": concat,
        "epoch_checkpoints": list(EPOCH_CHECKPOINTS), "cells": cells,
        "best": max(cells, key=lambda c: c["macro_f1"]),
        "note": "layer 0 is the embedding output, layer L decoder layer L-1's output, the last with the final norm; "
                "every pooling reads the whole prompt (system turn included), as the runtime's head does",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot(result, Path(args.plot))
    print(json.dumps({"best": result["best"]}))
    return result


def plot(result: dict, path: Path) -> None:
    curves = [("mean", "s-", "mean, logistic regression"), ("max", "o-", f"max over tokens ({result['units']} units)"),
              ("attention", "^:", f"attention ({result['heads']} weightings)")]
    single = [c for c in result["cells"] if "layer" in c]  # the --concat cells have no one layer to stand at
    plot_layer_curves(single, curves, result["layers"],
                      f"Pooling the prompt's tokens, frozen {result['base']} ({result['train_rows']} train rows)", path)


if __name__ == "__main__":
    main()
