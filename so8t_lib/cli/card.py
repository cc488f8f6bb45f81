"""so8t card: MODEL_CARD.md and figures/ from the committed result files (no model needed).

    so8t card [--run checkpoints/so8t-tiny] [--out MODEL_CARD.md] [--figures figures]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.io import atomic_write_text
from ..workbench.model_card import FOLLOW_UP_ABLATIONS, build_card, write_figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="so8t card", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="checkpoints/so8t-tiny")
    parser.add_argument("--eval", default="experiments/eval/so8t-tiny.json")
    parser.add_argument("--quant", default="benchmarks/results/gguf_decisions_cpu.json")
    parser.add_argument("--ablation", default="experiments/ablation/ablation.json")
    parser.add_argument("--out", default="MODEL_CARD.md")
    parser.add_argument("--figures", default="figures", help='folder for the figures; "" skips them')
    parser.add_argument("--follow-up", action="append", default=None,
                        help=f"a further ablation.json to quote (repeatable; default {', '.join(FOLLOW_UP_ABLATIONS)})")
    args = parser.parse_args(argv)
    if args.figures:
        for path in write_figures(Path(args.eval), Path(args.quant), Path(args.ablation), Path(args.figures)):
            print(f"drew {path}")
    follow_ups = tuple(Path(p) for p in (args.follow_up if args.follow_up is not None else FOLLOW_UP_ABLATIONS))
    card = build_card(Path(args.run), Path(args.eval), Path(args.quant), Path(args.ablation), follow_ups=follow_ups)
    out = atomic_write_text(args.out, card)
    print(f"wrote {out}")
