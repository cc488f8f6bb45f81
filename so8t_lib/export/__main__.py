"""python -m so8t_lib.export ...: the same as `so8t export ...` (kept for torchrun, accelerate and habit)."""

import sys

from so8t_lib.cli import run

run(["export", *sys.argv[1:]])
