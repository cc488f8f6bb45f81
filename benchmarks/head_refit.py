"""Does refitting a quantized file's head to its own states bring its decisions back to fp32's?

    python benchmarks/head_refit.py [--checkpoint checkpoints/so8t-mean] [--name so8t-mean] [--dist dist] \
        [--quants q8_0,q4_k_m,q4_k_m_t8] [--rows 400] [--refit-rows 1000] \
        [--out benchmarks/results/head_refit_so8t-mean.json]

A refit serves heads that read pooled states: the mean-head recipe (``configs/gemma3-270m.yaml``, trained by
``so8t demo --config configs/gemma3-270m.yaml``), not the default's max head, which it refuses.

One process. The fp32 checkpoint decides a stratified sample of the training split (the targets) and of the
test split (the reference). Each file of ``--quants`` (from ``make demo``'s ladder) is copied aside and its
head refitted on the training rows exactly as ``so8t export --refit-head`` does (``so8t_lib.eval.quant_refit``);
then the exported file and the refitted copy decide the test rows. Reported per rung: agreement with fp32,
macro-F1 and dangerous compliance of each, and the refit's own report (pull, held-out agreement). Test rows
fit nothing. The files in ``--dist`` are not changed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.core.metrics import dangerous_compliance_rate, macro_f1  # noqa: E402
from so8t_lib.core.paths import project_relative  # noqa: E402
from so8t_lib.core.schema import LABELS  # noqa: E402
from so8t_lib.data.tables import load_split, requests_and_contexts, stratified_sample  # noqa: E402
from so8t_lib.eval.quant_refit import REFIT_ROWS, refit_gguf  # noqa: E402
from so8t_lib.model import SO8TModel  # noqa: E402
from so8t_lib.serve.gguf_backend import GGUFBackend  # noqa: E402


def scored(decisions: np.ndarray, reference: np.ndarray, gold: list[str]) -> dict:
    labels = [LABELS[i] for i in decisions]
    rate = dangerous_compliance_rate(gold, labels)  # None without gold REFUSE rows
    return {"agreement_with_fp32": round(float((decisions == reference).mean()), 4),
            "macro_f1": round(macro_f1(gold, labels), 4), "dangerous_compliance": rate and round(rate, 4)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="checkpoints/so8t-mean")
    parser.add_argument("--name", default="so8t-mean")
    parser.add_argument("--dist", default="dist")
    parser.add_argument("--quants", default="q8_0,q4_k_m,q4_k_m_t8")
    parser.add_argument("--rows", type=int, default=400, help="stratified test rows that score")
    parser.add_argument("--refit-rows", type=int, default=REFIT_ROWS, help="stratified training rows that fit")
    parser.add_argument("--out", default="benchmarks/results/head_refit_so8t-mean.json")
    args = parser.parse_args(argv)

    quants = [q.strip().lower() for q in args.quants.split(",") if q.strip()]
    files = {q: Path(args.dist) / f"{args.name}-{q}.gguf" for q in quants}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        sys.exit(f"missing GGUF files {missing}: run `make demo` (or so8t export {args.checkpoint} "
                 f"--quant {','.join(q.upper() for q in quants)})")
    test = stratified_sample(load_split("test"), args.rows, seed=0).to_dict("records")
    train = stratified_sample(load_split("train"), args.refit_rows, seed=0).to_dict("records")
    gold = [r["label"] for r in test]
    started = time.perf_counter()
    model = SO8TModel.load(args.checkpoint, load_in_4bit=False, dtype="float32")
    teacher = model.decide(*requests_and_contexts(train), progress=True)
    reference = model.decide(*requests_and_contexts(test), progress=True).argmax(-1).numpy()
    del model
    rungs = {"fp32": scored(reference, reference, gold)}
    with tempfile.TemporaryDirectory(prefix="head-refit-") as aside:
        for quant, path in files.items():
            copy = Path(aside) / path.name
            for source in (path, path.with_name(path.name + ".sha256")):
                shutil.copyfile(source, Path(aside) / source.name)
            exported = GGUFBackend(path).decide(*requests_and_contexts(test), progress=True).argmax(-1).numpy()
            report = refit_gguf(copy, *requests_and_contexts(train), teacher, progress=True)
            refitted = GGUFBackend(copy).decide(*requests_and_contexts(test), progress=True).argmax(-1).numpy()
            rungs[quant] = {"exported_head": scored(exported, reference, gold),
                            "refitted_head": scored(refitted, reference, gold), "refit": report}
            print(quant, json.dumps({k: v for k, v in rungs[quant].items() if k != "refit"}), flush=True)
    result = {"benchmark": "head_refit", "checkpoint": project_relative(args.checkpoint),
              "files": {q: project_relative(p) for q, p in files.items()}, "test_rows": len(test),
              "refit_rows": len(train), "seconds": round(time.perf_counter() - started, 1), "rungs": rungs}
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
