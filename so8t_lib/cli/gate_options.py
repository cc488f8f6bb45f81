"""The options ``so8t runtime`` and ``so8t serve`` share: which model decides and where it runs.

Both commands load the same Agent, so one place turns these flags into config overrides; a flag means
the same in both, and a new one reaches both.
"""

from __future__ import annotations

import argparse

from ..core.config_files import literal_override
from ..serve.config import DEVICES


def add_gate_options(parser: argparse.ArgumentParser) -> None:
    """--use-gguf, --model-path, --device and the free ``key=value`` overrides."""
    parser.add_argument("--use-gguf", action="store_true", help="decide with the config's GGUF file")
    parser.add_argument("--model-path", help="override model.checkpoint_path (a folder or a .gguf file), taken as "
                        "written: never read as YAML")
    parser.add_argument("--device", choices=DEVICES, help="where the model runs (inference.device)")


def gate_overrides(args: argparse.Namespace) -> list[str]:
    """The config overrides the parsed options stand for, after the ones given as ``key=value``; a
    ``--model-path`` ending in .gguf also selects the llama.cpp backend with that file. The path is quoted
    (``literal_override``): read as YAML, ``run #3`` would lose its '#3' and ``20240601`` become a number."""
    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"inference.device={args.device}")
    if args.use_gguf:
        overrides.append("model.use_gguf=true")
    if args.model_path:
        overrides.append(literal_override("model.checkpoint_path", args.model_path))
        if args.model_path.endswith(".gguf"):
            overrides += ["model.use_gguf=true", literal_override("model.gguf_path", args.model_path)]
    return overrides
