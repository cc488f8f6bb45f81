"""What stopping at the head's read layer saves: ``decide`` against the whole decoder pass, same model, same requests.

    python benchmarks/decision_depth.py [--checkpoint checkpoints/so8t-demo] [--rows 64] \
        [--gguf dist/so8t-demo-q4_k_m.gguf] [--out benchmarks/results/decision_depth.json]

When SafetyHeadB reads no state above hidden state k (the default reads layer 8's output, k = 9 of 18), the HF
model's ``decide`` runs layers 0..k-1 only. This script times that against the pass it replaced (every layer and
the final norm, then the head), one process, the checkpoint loaded as the runtime loads it, batch 1 and 32 (``--batch-sizes``),
alternating the two so a change in the machine's load falls on both; and checks that both give the same
probabilities. With ``--gguf``, the same for the file: llama.cpp's pass stopped at the last read layer
(``LayerCapture(stop_early=True)``, what the backend does) against the whole graph. Timings depend on the
machine: read the ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.data.tables import load_split, stratified_sample  # noqa: E402
from so8t_lib.eval.latency import measure_latency  # noqa: E402
from so8t_lib.eval.provenance import run_record  # noqa: E402
from so8t_lib.serve.backends import load_decider  # noqa: E402


class WholePass:
    """``decide`` as it was before the early exit: the whole decoder, then the head (what the runtime ran)."""

    def __init__(self, model) -> None:
        self.model = model

    @torch.no_grad()
    def decide(self, requests: list[str], contexts=None, batch_size: int = 32) -> torch.Tensor:
        model = self.model.eval()
        prompts = [model.format_prompt(r, None) for r in requests]
        out = []
        for start in range(0, len(prompts), batch_size):
            batch = model.tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                                    add_special_tokens=False)
            logits = model(batch["input_ids"], batch["attention_mask"], return_lm_logits=False).safety_logits
            out.append(model.safety_head.probabilities(logits).float())
        return torch.cat(out)


def gguf_contenders(path: Path) -> list[tuple[str, object]]:
    """The file as the backend opens it (its capture stops at the last read layer) and a second backend on the same
    file whose capture computes the whole graph."""
    from so8t_lib.serve.gguf_backend import GGUFBackend

    stopped = GGUFBackend(path)
    if not stopped.safety_head.pools_tokens and stopped.read_layers == [stopped.meta["block_count"]]:
        raise SystemExit(f"{path}: its head reads the final-norm state by llama.cpp's pooling; nothing to stop early")
    return [("gguf_whole_pass", GGUFBackend(path, stop_early=False)), ("gguf_early_exit", stopped)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="checkpoints/so8t-demo")
    parser.add_argument("--rows", type=int, default=64, help="stratified test requests")
    parser.add_argument("--batches", type=int, default=32, help="timed calls per batch size and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--gguf", default="", help="a GGUF file of the same checkpoint to time the same way")
    parser.add_argument("--out", default="benchmarks/results/decision_depth.json")
    args = parser.parse_args(argv)
    model = load_decider(args.checkpoint)
    n_layers, depth = len(model.decoder_layers), max(model.read_layers)
    requests = list(stratified_sample(load_split("test"), args.rows, seed=0)["user_request"])
    early, whole = model.decide(requests).numpy(), WholePass(model).decide(requests).numpy()
    sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    contenders = [("whole_pass", WholePass(model)), ("early_exit", model)]
    if args.gguf:
        contenders += gguf_contenders(Path(args.gguf))
    timings: dict[str, dict[int, list[float]]] = {name: {} for name, _ in contenders}
    for _ in range(args.rounds):
        for name, decider in contenders:
            for row in measure_latency(decider, requests, sizes, batches=args.batches)["results"]:
                timings[name].setdefault(row["batch_size"], []).append(row["p50_ms"])
    result = {
        "benchmark": "decision_depth",
        **run_record("benchmarks/decision_depth.py", args, argv),
        "checkpoint": args.checkpoint, "rows": len(requests), "n_layers": n_layers, "head_reads_hidden_state": depth,
        "layers_run_by_early_exit": depth if depth < n_layers else n_layers,
        "max_abs_probability_difference": float(np.abs(early - whole).max()),
        "decision_agreement": float((early.argmax(1) == whole.argmax(1)).mean()),
        "p50_ms": {name: {str(b): float(np.median(v)) for b, v in by_size.items()} for name, by_size in timings.items()},
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()},
    }
    result["speedup"] = {b: result["p50_ms"]["whole_pass"][b] / result["p50_ms"]["early_exit"][b]
                         for b in result["p50_ms"]["early_exit"]}
    if args.gguf:
        gguf = {name: decider for name, decider in contenders if name.startswith("gguf")}
        stopped, full = (gguf[n].decide(requests).numpy() for n in ("gguf_early_exit", "gguf_whole_pass"))
        result["gguf"] = {"file": args.gguf, "decision_agreement": float((stopped.argmax(1) == full.argmax(1)).mean()),
                          "agreement_with_hf": float((stopped.argmax(1) == early.argmax(1)).mean()),
                          "speedup": {b: result["p50_ms"]["gguf_whole_pass"][b] / result["p50_ms"]["gguf_early_exit"][b]
                                      for b in result["p50_ms"]["gguf_early_exit"]}}
    atomic_write_text(args.out, json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("layers_run_by_early_exit", "decision_agreement", "p50_ms", "speedup", "gguf")
                      if k in result}))
    return result


if __name__ == "__main__":
    main()
