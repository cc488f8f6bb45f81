"""The SO(8) gate's exponential map: torch.linalg.matrix_exp (the gates before 2026-12-04) against block_exp.

    python benchmarks/gate_exp.py [--repeats 20] [--out benchmarks/results/gate_exp_cpu.json]

One gate pair (R_safe then R_cmd) forward and backward on an attention output, as a training step runs it, at
two shapes: Qwen2.5-7B's (hidden 3584 = 448 blocks, 512 tokens, bf16 on a GPU) and Gemma 3 270M's recipe
(hidden 640 = 80 blocks, 16 rows of 90 tokens). Both exponentials run in this process on the same inputs, the old
one first as the baseline, after warm-up calls; on CUDA each timing ends with a synchronize. The outputs and
gradients of the two are compared as well. Ratios are the result; absolute times depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.model import gates  # noqa: E402

SHAPES = {"qwen2.5-7b: 448 blocks, 1 x 512 tokens": (3584, (1, 512)),
          "gemma3-270m: 80 blocks, 16 x 90 tokens": (640, (16, 90))}
EXPONENTIALS = {"torch.linalg.matrix_exp": torch.linalg.matrix_exp, "block_exp": gates.block_exp}


def gate_step(pair: gates.GatePair, y: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pair.zero_grad(set_to_none=True)
    out = pair(y)
    (out.float() * weight).mean().backward()  # a rotation keeps norms: a loss on them alone has no gradient
    return out.detach(), torch.cat([pair.r_safe.theta.grad.flatten(), pair.r_cmd.theta.grad.flatten()])


def time_exponential(exp, pair, y, weight, repeats: int, device: torch.device) -> tuple[float, torch.Tensor, torch.Tensor]:
    gates.block_exp = exp  # SO8Rotation.matrix looks the name up at call time
    try:
        for _ in range(3):
            out, grad = gate_step(pair, y, weight)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            out, grad = gate_step(pair, y, weight)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / repeats, out, grad
    finally:
        gates.block_exp = EXPONENTIALS["block_exp"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gate_exp_cpu.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    report: dict = {"benchmark": "gate_exp", "device": torch.cuda.get_device_name(device) if device.type == "cuda"
                    else platform.processor() or "cpu", "torch": torch.__version__, "activation_dtype": str(dtype),
                    "repeats": args.repeats, "shapes": {}}
    for name, (hidden, lead) in SHAPES.items():
        torch.manual_seed(0)
        pair = gates.GatePair(hidden, "safe_first", init_std=0.05).to(device)  # a trained gate's size of generator
        y = torch.randn(*lead, hidden, device=device, dtype=dtype)
        weight = torch.randn(*lead, hidden, device=device)
        rows, outs = {}, {}
        for exp_name, exp in EXPONENTIALS.items():
            seconds, out, grad = time_exponential(exp, pair, y, weight, args.repeats, device)
            rows[exp_name] = {"ms_per_forward_backward": seconds * 1e3}
            outs[exp_name] = (out.float(), grad)
        base = rows["torch.linalg.matrix_exp"]["ms_per_forward_backward"]
        for row in rows.values():
            row["speed_vs_matrix_exp"] = base / row["ms_per_forward_backward"]
        (old_out, old_grad), (new_out, new_grad) = outs.values()
        report["shapes"][name] = {"exponentials": rows,
                                  "max_abs_output_difference": float((old_out - new_out).abs().max()),
                                  "max_abs_gradient_difference": float((old_grad - new_grad).abs().max()),
                                  "max_abs_gradient": float(old_grad.abs().max())}
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
