"""so8t demo: the main job on the default config (what ``make demo`` runs).

    so8t demo [--config configs/training.yaml] [--retrain] [--no-gguf] [--refit-head [--refit-rows N]]
              [key=value ...]

Trains to ``training.output_dir``, continues an interrupted run there, or reuses a finished one;
then scores the best checkpoint on the test split (bootstrap 95% intervals, written to
``<run folder>/test_metrics.json``), shows three example decisions, exports the GGUF ladder under
``dist/`` and decides one request from the Q4_K_M_T8 file (Q4_K_M, trained blocks at Q8_0) with llama.cpp,
after refitting that file's SafetyHeadB to the scored model's decisions with ``--refit-head``.

A folder holding a run started with another config (--config and overrides) is refused, naming the keys that
differ: --retrain starts it over, or choose another training.output_dir. A --dist that is a file, cannot be written
or lies inside the run folder is refused before training. Every refusal is one line, ``error: ...``, exit 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from ..eval.quant_refit import REFIT_ROWS
from ..export.gguf_meta import GGUFError
from ..export.head_refit import MIN_ROWS
from ..workbench.pipeline import DEFAULT_CONFIG, run_demo
from .arg_types import whole_number
from .train import ERRORS

# so8t train's refusals (a config, the data, the run folder, a checkpoint) and the GGUF part's: each named in one
# line with exit 2, never a traceback (exit 1 is a crash)
DEMO_ERRORS = (*ERRORS, GGUFError)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="so8t demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--retrain", action="store_true", help="delete the run folder and train from scratch")
    parser.add_argument("--bootstrap", type=whole_number(0), default=500, help="resamples for the 95%% intervals")
    parser.add_argument("--dist", default="dist", help="folder for the GGUF files (outside the run folder; checked "
                        "before training)")
    parser.add_argument("--no-gguf", action="store_true", help="skip the GGUF export")
    parser.add_argument("--refit-head", action="store_true",
                        help="refit the Q4_K_M_T8 file's SafetyHeadB to the decisions of the model the demo scored "
                             "(so8t export --refit-head does it to the fp32 checkpoint's) before deciding from it; "
                             "minutes: the model and the file each decide --refit-rows training rows")
    parser.add_argument("--refit-rows", type=int, default=REFIT_ROWS, help="training rows the refit uses (a quarter "
                        "held out to choose how far the head may move)")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. training.max_steps=100")
    args = parser.parse_args(argv)
    if args.refit_head and args.no_gguf:
        parser.error("--refit-head refits a GGUF file: drop --no-gguf")
    if args.refit_head and args.refit_rows < MIN_ROWS:  # refused now, not after training and the export
        parser.error(f"--refit-rows must be at least {MIN_ROWS} (a quarter is held out to choose the refit)")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    try:
        run_demo(args.config, args.overrides, retrain=args.retrain, bootstrap=args.bootstrap, dist=args.dist,
                 gguf=not args.no_gguf, refit_rows=args.refit_rows if args.refit_head else 0)
    except DEMO_ERRORS as err:  # a GGUF part that failed keeps the run and its test metrics
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
