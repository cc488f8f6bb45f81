"""python -m so8t_lib.data.corpus ...: the same as `so8t corpus ...` (kept for torchrun, accelerate and habit)."""

import sys

from so8t_lib.cli import run

run(["corpus", *sys.argv[1:]])
