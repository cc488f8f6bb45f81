"""python -m so8t_lib.eval ...: the same as `so8t evaluate ...` (kept for torchrun, accelerate and habit)."""

import sys

from so8t_lib.cli import run

run(["evaluate", *sys.argv[1:]])
