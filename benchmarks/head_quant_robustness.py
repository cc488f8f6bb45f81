"""Why 4-bit files change SafetyHeadB's decisions, and whether a head fitted for it keeps them.

    python benchmarks/head_quant_robustness.py [--checkpoint checkpoints/so8t-demo] [--name so8t-demo] \
        [--quant q4_k_m] [--rows 400] [--train-rows 1500] [--out benchmarks/results/head_quant_robustness.json]

One process: the checkpoint as an fp32 HF model and its GGUF files (``dist/<name>-q8_0.gguf`` and the low-bit
file ``--quant``, default ``q4_k_m``; from
``make demo``) each give the pooled decision state of the same rows: a stratified sample of the test split
(the rows ``benchmarks/gguf_decisions.py --rows`` scores) and of the training split. Reported per file: how
close its states are to fp32 (cosine, relative error), and for several heads how often the file's decision
equals fp32's on the test rows and the macro-F1 each way:
- the checkpoint's own SafetyHeadB;
- linear probes refitted on the fp32 training states (a regularisation grid);
- the same probes fitted on the fp32 AND the low-bit file's states of the training rows, each row once per
  precision: a quantization-aware readout, taught that both versions of a row mean the same decision;
- the checkpoint's head refitted to the low-bit file's states of the training rows, with the fp32 head's
  probabilities as targets (``so8t_lib.export.head_refit``, what ``so8t export --refit-head`` writes into a
  file): it changes nothing on fp32, only what the file decides.
Only training rows fit anything; the test rows only score.
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

from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.core.metrics import macro_f1  # noqa: E402
from so8t_lib.core.paths import project_relative  # noqa: E402
from so8t_lib.core.schema import LABELS  # noqa: E402
from so8t_lib.data.tables import load_split, requests_and_contexts, stratified_sample  # noqa: E402
from so8t_lib.eval.quant_compare import state_closeness  # noqa: E402
from so8t_lib.export.head_refit import refit_head  # noqa: E402
from so8t_lib.model import SO8TModel  # noqa: E402
from so8t_lib.model.heads import SafetyHeadB  # noqa: E402
from so8t_lib.serve.gguf_backend import GGUFBackend  # noqa: E402
from so8t_lib.train.head_init import fit_probe  # noqa: E402

C_GRID = (0.003, 0.01, 0.03, 0.1)
CLASS_WEIGHTS = [1.0, 2.0, 1.5]  # ALLOW, REFUSE, ESCALATE: the recipe's (configs/gemma3-270m.yaml)


def head_row(name: str, predict, test_states: dict[str, np.ndarray], gold: list[str]) -> dict:
    preds = {k: predict(v) for k, v in test_states.items()}
    row = {"head": name, "macro_f1_fp32": round(macro_f1(gold, [LABELS[i] for i in preds["fp32"]]), 4)}
    for quant in [k for k in test_states if k != "fp32"]:
        row[f"agreement_{quant}"] = round(float((preds[quant] == preds["fp32"]).mean()), 4)
        row[f"macro_f1_{quant}"] = round(macro_f1(gold, [LABELS[i] for i in preds[quant]]), 4)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="checkpoints/so8t-demo")
    parser.add_argument("--name", default="so8t-demo")
    parser.add_argument("--dist", default="dist")
    parser.add_argument("--quant", default="q4_k_m", help="the low-bit file whose states the aware probes also see")
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--train-rows", type=int, default=1500)
    parser.add_argument("--out", default="benchmarks/results/head_quant_robustness.json")
    args = parser.parse_args(argv)

    low = args.quant.lower()
    quants = ("q8_0", low)
    files = {q: Path(args.dist) / f"{args.name}-{q}.gguf" for q in quants}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        sys.exit(f"missing GGUF files {missing}: run `make demo` (or so8t export {args.checkpoint} --quant Q8_0,{low.upper()})")
    test = stratified_sample(load_split("test"), args.rows, seed=0).to_dict("records")
    train = stratified_sample(load_split("train"), args.train_rows, seed=0).to_dict("records")
    started = time.perf_counter()
    model = SO8TModel.load(args.checkpoint, load_in_4bit=False, dtype="float32")
    rows = test + train
    states = {"fp32": model.decision_states(*requests_and_contexts(rows), 16, progress=True).numpy()}
    own_head = model.safety_head
    for quant, path in files.items():
        states[quant] = GGUFBackend(path).decision_states(*requests_and_contexts(test + train if quant == low else test),
                                                          progress=True).numpy()
    n = len(test)
    test_states = {k: v[:n] for k, v in states.items()}
    y_train = np.array([LABELS.index(r["label"]) for r in train])
    gold = [r["label"] for r in test]

    def own(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return own_head(torch.from_numpy(x)).argmax(-1).numpy()

    heads = [head_row("checkpoint SafetyHeadB", own, test_states, gold)]
    for c in C_GRID:
        fitted = fit_probe(states["fp32"][n:], y_train, CLASS_WEIGHTS, c)
        heads.append({"C": c, **head_row(f"probe on fp32 states, C={c}", fitted.predict, test_states, gold)})
    for c in C_GRID:
        both = np.concatenate([states["fp32"][n:], states[low][n:]])
        fitted = fit_probe(both, np.concatenate([y_train, y_train]), CLASS_WEIGHTS, c)
        heads.append({"C": c, **head_row(f"probe on fp32 + {low.upper()} states, C={c}", fitted.predict, test_states, gold)})
    folded = SafetyHeadB.from_state_dict(own_head.folded_state_dict())
    with torch.no_grad():
        teacher = folded.probabilities(folded(torch.from_numpy(states["fp32"][n:])))
    refitted, refit_report = refit_head(folded, torch.from_numpy(states[low][n:]), teacher)

    def refit_predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return refitted(torch.from_numpy(x)).argmax(-1).numpy()

    # fp32 keeps the checkpoint's head; only the file's decisions change, and they are held to fp32's
    file_preds, fp32_preds = refit_predict(test_states[low]), own(test_states["fp32"])
    heads.append({"head": f"checkpoint SafetyHeadB refitted to {low.upper()} states",
                  "macro_f1_fp32": heads[0]["macro_f1_fp32"],
                  f"agreement_{low}": round(float((file_preds == fp32_preds).mean()), 4),
                  f"macro_f1_{low}": round(macro_f1(gold, [LABELS[i] for i in file_preds]), 4), "refit": refit_report})
    result = {
        "benchmark": "head_quant_robustness", "checkpoint": project_relative(args.checkpoint),
        "files": {q: project_relative(p) for q, p in files.items()}, "test_rows": n, "train_rows": len(train),
        "seconds": round(time.perf_counter() - started, 1),
        "state_closeness_to_fp32": {q: state_closeness(test_states["fp32"], test_states[q]) for q in quants},
        "heads": heads,
    }
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    for row in heads:
        print(json.dumps(row))
    return result


if __name__ == "__main__":
    main()
