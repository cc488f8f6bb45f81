"""python -m so8t_lib.train ...: the same as `so8t train ...` (kept for torchrun, accelerate and habit)."""

import sys

from so8t_lib.cli import run

run(["train", *sys.argv[1:]])
