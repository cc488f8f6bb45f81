"""What taking the frozen tensors from the base's own GGUF file does to each 4-bit rung, against quantizing them again.

    python benchmarks/source_tensors.py [--checkpoint checkpoints/so8t-demo] [--name so8t-demo] [--rows 400] \
        [--out benchmarks/results/source_tensors.json]

The rungs in ``--dist`` (``make demo`` writes them) take the tensors the checkpoint left unchanged byte for byte
from the base's source file (``so8t_lib.export.source_tensors``). This script exports the same checkpoint
again with ``source_tensors=False`` into a temporary folder (every tensor quantized by llama.cpp from the f16
export, as before), then scores both versions of each rung in this one process on the same stratified test
rows as ``benchmarks/gguf_decisions.py --rows``: closeness of the pooled decision states to fp32, agreement of
SafetyHeadB's decisions with fp32's, macro-F1, and how many tensors came from the source file.
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
from so8t_lib.export.gguf_meta import read_metadata  # noqa: E402
from so8t_lib.export.quantize import export  # noqa: E402
from so8t_lib.export.source_tensors import SOURCE_KEY  # noqa: E402
from so8t_lib.serve.gguf_backend import GGUFBackend  # noqa: E402

RUNGS = ("Q4_K_M", "Q4_K_M_T8", "Q4_K_S")  # the rungs whose types the Q4_K_M source holds tensors in


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="checkpoints/so8t-demo")
    parser.add_argument("--name", default="so8t-demo")
    parser.add_argument("--dist", default="dist")
    parser.add_argument("--rungs", default=",".join(RUNGS))
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--out", default="benchmarks/results/source_tensors.json")
    args = parser.parse_args(argv)
    rungs = [r.strip().upper() for r in args.rungs.split(",") if r.strip()]
    shipped = {r: Path(args.dist) / f"{args.name}-{r.lower()}.gguf" for r in rungs}
    missing = [str(p) for p in shipped.values() if not p.is_file()]
    if missing:
        sys.exit(f"missing {missing}: run `make demo` (or so8t export {args.checkpoint} --quant {args.rungs})")
    not_taken = [r for r, p in shipped.items() if SOURCE_KEY not in read_metadata(p)]
    if not_taken:
        sys.exit(f"{', '.join(not_taken)} in {args.dist} took no tensors from a source file (a base that came as "
                 "no GGUF, or an export older than so8t_lib.export.source_tensors): nothing to compare")
    from tqdm.auto import tqdm

    started = time.perf_counter()
    model, test, gold, reference, decide = fp32_decision_reference(args.checkpoint, args.rows)
    fp32 = decide(reference)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dist, prefix=".source-tensors-") as aside:
        requantized = {p.name: p for p in export(args.checkpoint, aside, rungs, progress=False, source_tensors=False)}
        files = [(r, "from the source file", shipped[r]) for r in rungs] + \
                [(r, "quantized again", requantized[shipped[r].name]) for r in rungs]
        for rung, frozen, path in tqdm(files, desc="files", unit="file"):
            states = GGUFBackend(path).decision_states(*requests_and_contexts(test)).numpy()
            pred = decide(states)
            rows.append({"rung": rung, "frozen_tensors": frozen, "size_mib": round(path.stat().st_size / 2**20, 1),
                         "source_tensors": read_metadata(path).get(SOURCE_KEY), **state_closeness(reference, states),
                         "agreement_with_fp32": round(float((pred == fp32).mean()), 4),
                         "macro_f1": round(macro_f1(gold, [LABELS[i] for i in pred]), 4)})
            print(json.dumps(rows[-1]), flush=True)
    result = {"benchmark": "source_tensors", "checkpoint": project_relative(args.checkpoint), "rows": len(test),
              "macro_f1_fp32": round(macro_f1(gold, [LABELS[i] for i in fp32]), 4),
              "seconds": round(time.perf_counter() - started, 1), "files": rows}
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
