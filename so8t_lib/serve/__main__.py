"""python -m so8t_lib.serve ...: the same as `so8t runtime ...` (kept for torchrun, accelerate and habit)."""

import sys

from so8t_lib.cli import run

run(["runtime", *sys.argv[1:]])
