"""python -m so8t_lib <command> ...: the same as the ``so8t`` command."""

from .cli import run

run()
