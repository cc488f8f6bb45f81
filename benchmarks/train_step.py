"""Training-step speed and memory of the tiny preset on CPU: fp32 base vs nf4 (bitsandbytes) base.

    python benchmarks/train_step.py [--steps 20] [--batch-size 8] [--out benchmarks/results/train_step_cpu.json]

Speed: both variants run in this one process, fp32 first as the baseline, through the real
``Trainer.train_step`` (configs/tiny-training.yaml, two optimizers, composite loss): tokens/s and
seconds per step over the timed steps, after warm-up steps. Memory: the allocator keeps pages a
previous variant freed, so each variant's peak RSS is measured again in a fresh child process
(peak RSS while building and stepping, and its growth over the RSS after imports, sampled every
5 ms). Ratios are to fp32. Numbers depend on the machine: compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.config import load_config  # noqa: E402
from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.eval.profiling import PeakMemory  # noqa: E402
from so8t_lib.train.trainer import Trainer  # noqa: E402


def run_variant(name: str, overrides: list[str], steps: int, warmup: int) -> dict:
    gc.collect()
    rss_before = psutil.Process().memory_info().rss
    with tempfile.TemporaryDirectory() as tmp, PeakMemory() as sampler:
        cfg = load_config(ROOT / "configs" / "tiny-training.yaml", [*overrides, f"training.output_dir={tmp}/run"])
        trainer = Trainer(cfg)
        for _ in range(warmup):
            trainer.train_step()
        tokens, start = 0, time.perf_counter()
        for _ in range(steps):
            tokens += trainer.train_step()["tokens"]
        elapsed = time.perf_counter() - start
        rss_steady = psutil.Process().memory_info().rss  # after the steps, with the model and optimizer states
        linear4 = sum(type(m).__name__ == "Linear4bit" for m in trainer.model.modules())
        del trainer
    gc.collect()
    return {"variant": name, "overrides": overrides, "linear4bit_modules": linear4, "steps": steps,
            "tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed, "s_per_step": elapsed / steps,
            "rss_before_mb": rss_before / 2**20, "rss_after_steps_mb": rss_steady / 2**20, "peak_rss_mb": sampler.peak_rss_mb,
            "peak_rss_growth_mb": sampler.peak_rss_mb - rss_before / 2**20}


def memory_in_child(overrides: list[str], steps: int) -> dict:
    """Peak RSS of building and stepping one variant, in a fresh Python process."""
    cmd = [sys.executable, __file__, "--child", json.dumps({"overrides": overrides, "steps": steps})]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def child(spec: str) -> None:
    job = json.loads(spec)
    result = run_variant("child", job["overrides"], job["steps"], warmup=0)
    print(json.dumps({"peak_rss_mb": result["peak_rss_mb"], "rss_after_steps_mb": result["rss_after_steps_mb"], "rss_after_imports_mb": result["rss_before_mb"],
                      "peak_rss_growth_mb": result["peak_rss_growth_mb"]}))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_step_cpu.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.child:
        child(args.child)
        return {}
    common = [f"training.batch_size={args.batch_size}", f"training.max_length={args.max_length}",
              "training.eval_every=100000", "model.load_in_4bit=false"]
    results = [run_variant("fp32", common, args.steps, args.warmup)]
    try:
        import bitsandbytes  # noqa: F401

        results.append(run_variant("nf4", [*common, "model.load_in_4bit=true"], args.steps, args.warmup))
    except ImportError:
        print("bitsandbytes is not installed (pip install -e '.[quant]'): nf4 skipped", file=sys.stderr)
    for r in results:  # replace the in-process memory numbers with fresh-process ones
        r.update(memory_in_child(r["overrides"], max(1, min(args.steps, 3))))
        r.pop("rss_before_mb")
    base = results[0]
    for r in results:
        r["tokens_per_s_ratio"] = r["tokens_per_s"] / base["tokens_per_s"]
        r["peak_rss_growth_ratio"] = r["peak_rss_growth_mb"] / base["peak_rss_growth_mb"]
    payload = {"benchmark": "train_step", "device": "cpu", "threads": torch.get_num_threads(),
               "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
               "machine": platform.machine(), "results": results}
    out = atomic_write_text(args.out, json.dumps(payload, indent=1))
    for r in results:
        print(f"{r['variant']:>5s}: {r['tokens_per_s']:7.0f} tokens/s ({r['tokens_per_s_ratio']:.2f}x), "
              f"{r['s_per_step']:.2f} s/step, peak RSS {r['peak_rss_mb']:.0f} MB "
              f"(+{r['peak_rss_growth_mb']:.0f} MB, {r['peak_rss_growth_ratio']:.2f}x), "
              f"RSS after the steps {r['rss_after_steps_mb']:.0f} MB")
    print(f"wrote {out}")
    return payload


if __name__ == "__main__":
    main()
