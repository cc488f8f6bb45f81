"""so8t export / so8t inspect: one GGUF file that carries both heads, and the ladder of its quantizations.

    so8t export checkpoints/so8t-tiny --out dist/ [--quant Q8_0,Q4_K_M,Q4_K_M_T8,Q4_K_S,IQ4_XS] [--f32]
    so8t export checkpoints/so8t-mean --quant Q8_0,Q4_K_M,Q4_K_M_T8 --refit-head Q4_K_M_T8   # head refitted at 4 bits
        (a mean- or last-pooled head only: a max head, the default's, is refused)
    so8t inspect dist/so8t-tiny-q4_k_m.gguf          # the so8t.* metadata

Export merges LoRA, folds the SO(8) gates into ``o_proj``, writes ``dist/<name>-f16.gguf`` (and
f32), then quantizes it with llama.cpp; files are named ``<out>/<name>-<type>.gguf``.

Afterwards --out holds no <name>-<type>.gguf (and .sha256) of another model version: an earlier export's rung of
another checkpoint is removed, each named on stderr (beside the new files it passed every check); rungs of the same
model version stay. Keep an older model's ladder by exporting the new one to another --out. Files are staged in a hidden
--out/.export-* folder, removed however the export ends (Ctrl-C, SIGTERM, an error); one a killed export left
is removed by the next export into that --out. They are moved in all or none: a failed move puts the earlier
files back, and Ctrl-C or SIGTERM waits until the moves end; an --out the export made is removed again if it fails
or is stopped. An --out inside the checkpoint or the run folder it belongs to is refused (exit 2) before anything
is loaded: a file there is in no manifest, and every later load of the checkpoint would refuse it.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..core.checkpoint import CheckpointError
from ..eval.quant_refit import REFIT_ROWS, refit_rungs
from ..export.gguf_meta import DEFAULT_THRESHOLD, GGUFError, read_metadata
from ..export.head_refit import MIN_ROWS
from ..export.quantize import QUANT_TYPES, export, rung_names
from ..serve.policy import THRESHOLD_RANGE
from .arg_types import number_in


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="so8t export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="checkpoint folder or run folder")
    parser.add_argument("--out", default="dist", help="folder for the GGUF files (made if missing), outside the "
                        "checkpoint and its run folder")
    parser.add_argument("--quant", default="", help=f"comma-separated, from {','.join(QUANT_TYPES)}")
    parser.add_argument("--f32", action="store_true", help="also write an f32 file (for parity checks)")
    parser.add_argument("--threshold", type=number_in(*THRESHOLD_RANGE), default=DEFAULT_THRESHOLD,
                        help=f"the runtime rule's threshold written into the file ({THRESHOLD_RANGE[0]} to "
                             f"{THRESHOLD_RANGE[1]})")
    parser.add_argument("--requantize-frozen", action="store_true", help="quantize the tensors the checkpoint left "
                        "unchanged again instead of taking them byte for byte from the base's own GGUF file "
                        "(export.source_tensors; for comparison)")
    parser.add_argument("--refit-head", default="", help="comma-separated rungs whose SafetyHeadB is refitted to "
                        "their own states so their decisions follow fp32's (export.head_refit), e.g. Q4_K_M_T8")
    parser.add_argument("--refit-rows", type=int, default=REFIT_ROWS, help="training rows the refit uses (a quarter "
                        "held out to choose how far the head may move)")
    args = parser.parse_args(argv)

    quants, refit = rung_names(args.quant.split(",")), rung_names(args.refit_head.split(","))
    # refused before anything is written, with the status 2 of every other refusal (sys.exit(msg) gave 1)
    if refit and args.refit_rows < MIN_ROWS:
        print(f"error: --refit-rows {args.refit_rows}: refitting a head needs at least {MIN_ROWS} rows",
              file=sys.stderr)
        return 2
    if [q for q in refit if q not in quants]:
        print(f"error: --refit-head {','.join(q for q in refit if q not in quants)}: not among the rungs this "
              f"export writes ({','.join(quants) or 'none'}); add it to --quant", file=sys.stderr)
        return 2
    try:
        # the refit runs on the staged files, before any is moved into --out: a refusal leaves --out as it was
        paths = export(args.checkpoint, args.out, quants, args.f32, args.threshold,
                       source_tensors=not args.requantize_frozen, refit_heads=refit,
                       refit=lambda files: refit_rungs(args.checkpoint, files, args.refit_rows))
    # a missing or incomplete checkpoint (CheckpointError), an --out that cannot be a folder (OSError), a head the
    # refit cannot handle (ValueError): each message names the problem; a traceback would only hide it
    except (GGUFError, CheckpointError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"{path}  {path.stat().st_size / 2**20:.1f} MiB")
    return 0


def inspect_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="so8t inspect", description="Print an SO8T GGUF file's so8t.* metadata.")
    parser.add_argument("file")
    args = parser.parse_args(argv)
    try:
        meta = read_metadata(args.file)
    except (GGUFError, OSError) as exc:  # a refusal, as every command's: exit 2 (1 is a crash)
        print(f"so8t inspect: {exc}", file=sys.stderr)
        return 2
    head = meta.pop("head")
    meta["head_shapes"] = {k: list(v.shape) for k, v in head.items()}
    print(json.dumps(meta, indent=1, ensure_ascii=False, default=str))
    return 0
