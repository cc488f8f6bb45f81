"""so8t train: safety-aware (Q)LoRA training with two optimizers, early stopping, autosave and exact resume,
then the temperature fitted on val.

    so8t train --config configs/training.yaml [key=value ...] [--resume]
    accelerate launch --num_processes 2 -m so8t_lib.train --config ...   # several GPUs
    torchrun --nproc_per_node 2 -m so8t_lib.train --config ...           # several CPU processes (gloo)
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from ..core.checkpoint import CheckpointError
from ..core.config import ConfigError, load_config
from ..core.schema import BEST_DIR, LAST_DIR, RUN_CONFIG_FILE
from ..data.tables import DataError
from ..train.run_folder import run_differences
from ..train.val_checks import TrainingDiverged
from ..workbench.pipeline import config_of_run, train_and_calibrate

# a user's mistake (a config, the data, the run folder, a checkpoint, learning rates that diverge): named in one
# line, no traceback
ERRORS = (ConfigError, DataError, CheckpointError, FileExistsError, OSError, TrainingDiverged)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="so8t train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/training.yaml")
    parser.add_argument("--resume", action="store_true", help="continue the run in training.output_dir from last/")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. training.max_steps=50")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    try:
        _train(args)
    except ERRORS as exc:
        sys.exit(f"error: {exc}")


def _train(args: argparse.Namespace) -> None:
    named = Path(args.config)
    if args.resume and named.name == RUN_CONFIG_FILE and (named.parent / LAST_DIR).is_dir():
        config_of_run(named.parent)  # a run's own config.yaml left empty would load as all defaults: refused by name
    config = load_config(args.config, args.overrides)
    run_dir = Path(config.training.output_dir)
    if args.resume and (run_dir / RUN_CONFIG_FILE).is_file():
        started = config_of_run(run_dir)  # the run continues under the config it started with
        changed = run_differences(started, config)
        if changed:  # overrides that would be dropped without a word
            sys.exit(f"error: --resume continues {run_dir} under the config it started with ({run_dir / RUN_CONFIG_FILE}"
                     f"); these differ from it: {', '.join(changed)}. Resume with --config {run_dir / RUN_CONFIG_FILE}, or "
                     "start a new run in another training.output_dir")
        config = started
    run_dir = train_and_calibrate(config, resume=args.resume)
    if not (run_dir / BEST_DIR).is_dir():  # reported, never claimed: nothing could load it
        sys.exit(f"error: the run in {run_dir} holds no best checkpoint ({BEST_DIR}/): no evaluation finished. "
                 f"Continue it with so8t train --config {run_dir / RUN_CONFIG_FILE} --resume")
    print(f"run folder: {run_dir} (best checkpoint: {run_dir / BEST_DIR})")
