"""Where the Gemma recipe's CPU time goes on padding and dropout: training steps and decide(), before and after.

    python benchmarks/gemma_step.py [--steps 15] [--rows 320] [--out benchmarks/results/gemma_step.json]

Training: the default recipe (configs/gemma3-270m.yaml, layers 0-11 from the frozen-state cache, no warm start)
through the real ``Trainer.train_step``, in three variants built one after another in this process, the first as
the baseline: the batches and LoRA dropout of runs before 2026-12-03 (``group_by_length=0``, dropout 0.05); the
same with length-grouped batches; and grouped without dropout (the recipe now). Each variant times ``--steps``
steps after two warm-up steps; the batches differ by design, so tokens/s counts real (unpadded) tokens, and the
padded tokens the steps computed are reported beside them.

decide(): the same ``--rows`` test rows (a stratified sample) through the untrained model, in batches of 32 as
the caller gave them (what decide() did before) and sorted by length (what it does now); the probabilities of
the two are compared as well, since only the batch composition differs.

Run it alone on the machine: the ratios are the result, not the absolute seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.config import load_config  # noqa: E402
from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.data.tables import load_table, stratified_sample  # noqa: E402
from so8t_lib.eval.evaluate import table_contexts  # noqa: E402
from so8t_lib.train.trainer import Trainer  # noqa: E402

CONFIG = ROOT / "configs" / "gemma3-270m.yaml"
VARIANTS = {
    "before: plain batches, LoRA dropout 0.05": ["training.group_by_length=0", "model.lora.dropout=0.05"],
    "grouped batches, LoRA dropout 0.05": ["training.group_by_length=16", "model.lora.dropout=0.05"],
    "grouped batches, no dropout (the recipe)": ["training.group_by_length=16", "model.lora.dropout=0.0"],
}


def time_steps(trainer: Trainer, steps: int, warmup: int) -> dict:
    for _ in range(warmup):
        trainer.train_step()
    positions, real = [], 0
    start = time.perf_counter()
    for _ in range(steps):
        real += trainer.train_step()["tokens"]
        positions.append((trainer.state.epoch, trainer.state.batch_in_epoch - 1))  # the batch that step took
    elapsed = time.perf_counter() - start
    padded = sum(trainer.collate(trainer.batch_rows(*position))["input_ids"].numel() for position in positions)
    return {"steps": steps, "seconds": elapsed, "s_per_step": elapsed / steps, "real_tokens": real,
            "padded_tokens": padded, "padded_per_real": padded / real, "real_tokens_per_s": real / elapsed}


def time_decide(model, requests: list[str], contexts: list[str | None], batch_size: int = 32) -> dict:
    start = time.perf_counter()
    as_given = torch.cat([model.decide(requests[i:i + batch_size], contexts[i:i + batch_size], batch_size=batch_size)
                          for i in range(0, len(requests), batch_size)])
    given_s = time.perf_counter() - start
    start = time.perf_counter()
    by_length = model.decide(requests, contexts, batch_size=batch_size)
    sorted_s = time.perf_counter() - start
    return {"rows": len(requests), "batch_size": batch_size, "as_given_s": given_s, "sorted_by_length_s": sorted_s,
            "speedup": given_s / sorted_s, "max_abs_probability_difference": float((as_given - by_length).abs().max()),
            "same_argmax": float((as_given.argmax(-1) == by_length.argmax(-1)).float().mean())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rows", type=int, default=320, help="test rows for the decide() comparison")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gemma_step.json"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    results, trainer = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for n, (name, overrides) in enumerate(VARIANTS.items()):
            del trainer
            cfg = load_config(CONFIG, [*overrides, "training.head_warm_start=false", f"training.output_dir={tmp}/v{n}"])
            trainer = Trainer(cfg)
            results.append({"variant": name, "overrides": overrides, **time_steps(trainer, args.steps, args.warmup)})
            print(f"{name}: {results[-1]['s_per_step']:.2f} s/step, padded/real {results[-1]['padded_per_real']:.2f}",
                  file=sys.stderr)
        test = stratified_sample(load_table(ROOT / trainer.tcfg.data_dir / "test.jsonl"), args.rows, 0)
        decide = time_decide(trainer.model, list(test["user_request"]), table_contexts(test))
    base = results[0]
    for r in results:
        r["speedup_per_step"] = base["s_per_step"] / r["s_per_step"]
        r["real_tokens_per_s_ratio"] = r["real_tokens_per_s"] / base["real_tokens_per_s"]
    payload = {"benchmark": "gemma_step", "config": str(CONFIG.relative_to(ROOT)), "device": "cpu",
               "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
               "machine": platform.machine(), "processor": platform.processor(), "training": results, "decide": decide}
    out = atomic_write_text(args.out, json.dumps(payload, indent=1))
    for r in results:
        print(f"{r['variant']}: {r['s_per_step']:.2f} s/step ({r['speedup_per_step']:.2f}x), "
              f"{r['real_tokens_per_s']:.0f} real tokens/s, padded/real {r['padded_per_real']:.2f}")
    print(f"decide(), {decide['rows']} rows: as given {decide['as_given_s']:.1f} s, sorted by length "
          f"{decide['sorted_by_length_s']:.1f} s ({decide['speedup']:.2f}x); same argmax {decide['same_argmax']:.3f}, "
          f"max |dp| {decide['max_abs_probability_difference']:.2e}")
    print(f"wrote {out}")
    return payload


if __name__ == "__main__":
    main()
