"""Decision latency, throughput and agreement: each GGUF quant type vs the fp32 HF model, one run.

    python benchmarks/gguf_decisions.py [--checkpoint checkpoints/so8t-tiny] [--dist dist]
                                        [--out benchmarks/results/gguf_decisions_cpu.json]
    python benchmarks/gguf_decisions.py --checkpoint checkpoints/so8t-demo --name so8t-demo --rows 400 \
        --out benchmarks/results/gguf_decisions_so8t-demo.json          # the Gemma default

Needs a trained checkpoint and its GGUF files (``make demo`` writes both). Every backend runs on the same requests
of the test split, each in a fresh process of its own (``so8t_lib.eval.quant_compare.compare``), so its
``peak_rss_mb`` compares across rows (files written before ``"process_per_backend": true`` measured all in one
process: every GGUF rung's peak held the fp32 model's freed pages too); ratios are to the fp32 HF model. Then the Q4_K_M file's throughput on 128 requests for each
``GGUFBackend(batch_tokens=...)`` setting (tokens packed into one llama.cpp decode). Numbers depend on the machine: compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.eval.quant_compare import compare  # noqa: E402
from so8t_lib.export.quantize import QUANT_TYPES  # noqa: E402

ORDER = ["f16"] + [q.lower() for q in QUANT_TYPES]  # the ladder make demo writes


def batch_tokens_sweep(path: Path, data: str, settings: list[int], n: int = 128) -> list[dict]:
    from so8t_lib.data.benchmarks import load_any
    from so8t_lib.serve.gguf_backend import GGUFBackend

    requests = list(load_any(data)["user_request"])[:n]
    backend = GGUFBackend(path)
    backend.decide(requests[:8])  # warm-up
    out = []
    for tokens in settings:
        backend.batch_tokens = tokens
        start = time.perf_counter()
        backend.decide(requests)
        out.append({"batch_tokens": tokens, "requests_per_s": len(requests) / (time.perf_counter() - start)})
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "so8t-tiny"))
    parser.add_argument("--dist", default=str(ROOT / "dist"))
    parser.add_argument("--name", default="so8t-tiny")
    parser.add_argument("--data", default="test")
    parser.add_argument("--rows", type=int, default=None, help="a stratified sample of this many rows (default: all)")
    parser.add_argument("--batch-tokens", default="2048,1024,512,256,128")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gguf_decisions_cpu.json"))
    args = parser.parse_args(argv)
    files = [Path(args.dist) / f"{args.name}-{q}.gguf" for q in ORDER]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        sys.exit(f"missing GGUF files {missing}: run `make demo` (or so8t export "
                 f"{args.checkpoint} --quant {','.join(QUANT_TYPES)}) first")
    frame = compare(args.checkpoint, files, args.data, max_rows=args.rows)
    packing = batch_tokens_sweep(files[ORDER.index("q4_k_m")], args.data, [int(x) for x in args.batch_tokens.split(",")])
    payload = {"benchmark": "gguf_decisions", "device": "cpu", "threads": torch.get_num_threads(),
               "cpu_count": os.cpu_count(), "machine": platform.machine(), "data": args.data, "rows": args.rows,
               "process_per_backend": True,
               "results": json.loads(frame.to_json(orient="records")), "batch_tokens_q4_k_m": packing}
    out = atomic_write_text(args.out, json.dumps(payload, indent=1))
    cols = ["backend", "size_mib", "load_s", "decide_p50_ms", "decide_p95_ms", "requests_per_s_batch32",
            "agreement_with_fp32", "macro_f1", "generation_tokens_per_s", "decide_p50_ratio_vs_fp32"]
    print(frame[cols].round(3).to_string(index=False))
    print("Q4_K_M requests/s by tokens per decode: " + ", ".join(f"{p['batch_tokens']}: {p['requests_per_s']:.1f}"
                                                             for p in packing))
    print(f"wrote {out}")
    return payload


if __name__ == "__main__":
    main()
