"""Which tensors' 4-bit error moves SafetyHeadB's decisions: Q4_K_M files with parts taken from Q8_0.

    python benchmarks/quant_mix.py [--checkpoint checkpoints/so8t-demo] [--name so8t-demo] [--rows 400] \
        [--out benchmarks/results/quant_mix.json]

From the Q4_K_M and Q8_0 files of one export (``make demo`` writes both), this builds mixes with
``so8t_lib.export.mixed.splice``: Q4_K_M with the embedding, the trained blocks, the frozen blocks, or only the
trained blocks' attention or MLP taken from Q8_0. Each file and the fp32 HF model give the pooled decision
state of the same stratified test rows (the rows ``benchmarks/gguf_decisions.py --rows`` scores); reported per
file: closeness of its states to fp32, agreement of the checkpoint's SafetyHeadB with its fp32 decisions,
macro-F1, size. The mixes live in a temporary folder and are removed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.core.metrics import macro_f1  # noqa: E402
from so8t_lib.core.paths import project_relative  # noqa: E402
from so8t_lib.core.schema import LABELS  # noqa: E402
from so8t_lib.data.tables import requests_and_contexts  # noqa: E402
from so8t_lib.eval.quant_compare import fp32_decision_reference, state_closeness  # noqa: E402
from so8t_lib.export.mixed import splice, trained_tensor_prefixes  # noqa: E402
from so8t_lib.serve.gguf_backend import GGUFBackend  # noqa: E402


def variants(trained: tuple[str, ...]) -> dict:
    """name -> which tensors come from Q8_0 (None: the Q4_K_M file itself; 'q8_0': the Q8_0 file itself)."""
    in_blocks = lambda name: name.startswith("blk.")  # noqa: E731
    return {
        "Q4_K_M": None,
        "Q8_0": "q8_0",
        "Q4_K_M + embedding at Q8_0": lambda n: n.startswith("token_embd."),
        "Q4_K_M + trained blocks at Q8_0 (Q4_K_M_T8)": lambda n: n.startswith(trained),
        "Q4_K_M + frozen blocks at Q8_0": lambda n: in_blocks(n) and not n.startswith(trained),
        "Q4_K_M + trained blocks' attention at Q8_0": lambda n: n.startswith(trained) and ".attn_" in n,
        "Q4_K_M + trained blocks' MLP at Q8_0": lambda n: n.startswith(trained) and ".ffn_" in n,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="checkpoints/so8t-demo")
    parser.add_argument("--name", default="so8t-demo")
    parser.add_argument("--dist", default="dist")
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--out", default="benchmarks/results/quant_mix.json")
    args = parser.parse_args(argv)
    q4, q8 = (Path(args.dist) / f"{args.name}-{q}.gguf" for q in ("q4_k_m", "q8_0"))
    if not (q4.is_file() and q8.is_file()):
        sys.exit(f"missing {q4} or {q8}: run `make demo` (or so8t export {args.checkpoint} --quant Q8_0,Q4_K_M)")
    from tqdm.auto import tqdm

    started = time.perf_counter()
    model, test, gold, reference, decide = fp32_decision_reference(args.checkpoint, args.rows)
    fp32 = decide(reference)
    trained = tuple(trained_tensor_prefixes(model.config, model.causal_lm.config.num_hidden_layers))
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dist, prefix=".quant-mix-") as aside:
        for name, take in tqdm(variants(trained).items(), desc="files", unit="file"):
            path = q4 if take is None else q8 if take == "q8_0" else splice(
                q4, q8, Path(aside) / "mix.gguf", take, f"benchmarks/quant_mix.py: {name}")
            states = GGUFBackend(path).decision_states(*requests_and_contexts(test)).numpy()
            pred = decide(states)
            rows.append({"file": name, "size_mib": round(path.stat().st_size / 2**20, 1),
                         **state_closeness(reference, states),
                         "agreement_with_fp32": round(float((pred == fp32).mean()), 4),
                         "macro_f1": round(macro_f1(gold, [LABELS[i] for i in pred]), 4)})
            print(json.dumps(rows[-1]), flush=True)
    result = {"benchmark": "quant_mix", "checkpoint": project_relative(args.checkpoint), "rows": len(test),
              "trained_prefixes": list(trained), "macro_f1_fp32": round(macro_f1(gold, [LABELS[i] for i in fp32]), 4),
              "seconds": round(time.perf_counter() - started, 1), "files": rows}
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
