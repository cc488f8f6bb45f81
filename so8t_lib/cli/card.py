"""so8t card: MODEL_CARD.md and figures/ from the committed result files (no model needed).

    so8t card [--config configs/training.yaml] [--eval experiments/eval/so8t-demo.json] [--out MODEL_CARD.md]
    so8t card --config configs/tiny-training.yaml --eval experiments/eval/so8t-tiny.json --quant \\
        benchmarks/results/gguf_decisions_cpu.json --compare "" --refit "" --operating-points "" --seeds "" \\
        --out build/tiny_card.md --figures ""

The recipe is read from --config (the committed file the run was trained with) or, when --run names a run
folder that still holds its config.yaml, from there. The result files default to the config's model's own
(experiments/eval/<name>.json, benchmarks/results/gguf_decisions_<name>.json, ...); the seed spread and the
comparison with corpus v6 are the default model's (so8t-demo) only. An evaluation of another model is refused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.config import ConfigError, read_config_mapping
from ..core.io import atomic_write_text
from ..workbench.card_inputs import config_model
from ..workbench.model_card import (
    FOLLOW_UP_ABLATIONS,
    CardInputError,
    build_card,
    figure_files,
    write_figures,
)

DEFAULT_MODEL = "so8t-demo"  # the model of configs/training.yaml, the one the seed and corpus-v6 results are of
DEFAULT_POINTS = "benchmarks/results/operating_point.json"
DEFAULT_COMPARE_LABEL = "corpus-v6 default"


def model_defaults(name: str) -> dict[str, str]:
    """The result files of the model called ``name`` (an option left out takes its entry): a card of the tiny
    preset quoted the default model's numbers when these were the default's whatever --config said."""
    demo = name == DEFAULT_MODEL
    return {"eval": f"experiments/eval/{name}.json", "quant": f"benchmarks/results/gguf_decisions_{name}.json",
            "refit": f"benchmarks/results/head_refit_{name}.json", "operating_points_recipe": name,
            "seeds": "benchmarks/results/seed_ensemble.json" if demo else "",
            "compare": "experiments/eval/so8t-demo-corpus-v6.json" if demo else ""}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="so8t card", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/training.yaml", help="the config the run was trained with")
    parser.add_argument("--run", default=None, help="a run folder whose config.yaml is read instead of --config")
    parser.add_argument("--eval", help="the model's evaluation (default experiments/eval/<model name>.json)")
    parser.add_argument("--quant", help="the GGUF benchmark's result (default "
                                        "benchmarks/results/gguf_decisions_<model name>.json)")
    parser.add_argument("--refit", help='the head-refit benchmark\'s result ("" for none; default '
                                        'benchmarks/results/head_refit_<model name>.json)')
    parser.add_argument("--operating-points", default=DEFAULT_POINTS,
                        help='the operating-point benchmark\'s result ("" for none)')
    parser.add_argument("--operating-points-recipe",
                        help="its entry for this model (the predictions file's stem; default the model's name: the "
                             "default's evaluation with val, docs/benchmarks.md)")
    parser.add_argument("--ablation", default="experiments/ablation/ablation.json")
    parser.add_argument("--seeds", help='benchmarks/seed_ensemble.py\'s result: the spread between seeds ("" for '
                                        'none; default the so8t-demo model\'s)')
    parser.add_argument("--compare", help='an evaluation of an earlier run of the recipe, on another corpus or with '
                                          'other settings ("" for none; default the so8t-demo model\'s on corpus v6)')
    parser.add_argument("--compare-label", default=DEFAULT_COMPARE_LABEL, help="what sets that run apart")
    parser.add_argument("--evaluated-as-this-recipe", action="store_true",
                        help="--eval is of a run of this recipe under another name (it was the default, so8t-demo, "
                        "when it was trained): taken, and said so in the card")
    parser.add_argument("--out", default="MODEL_CARD.md")
    parser.add_argument("--figures", default="figures", help='folder for the figures; "" skips them')
    parser.add_argument("--follow-up", action="append", default=None,
                        help=f"a further ablation.json to quote (repeatable; default {', '.join(FOLLOW_UP_ABLATIONS)})")
    args = parser.parse_args(argv)
    run_config = Path(args.run) / "config.yaml" if args.run else None
    if run_config is not None and not run_config.is_file():
        print(f"{run_config} is missing; the recipe is read from {args.config}")
        run_config = None
    try:  # a missing, unreadable or non-mapping config names its file (exit 2), as a bad result file does
        config = read_config_mapping(run_config or args.config)
    except ConfigError as exc:
        parser.error(str(exc))
    name, _ = config_model(config.get("model") or {}, config.get("training") or {})
    for key, value in model_defaults(name).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    follow_ups = tuple(Path(p) for p in (args.follow_up if args.follow_up is not None else FOLLOW_UP_ABLATIONS))
    try:  # every result file read and checked, and the card built, before a figure or the card is written
        planned = figure_files(Path(args.eval), Path(args.quant), Path(args.ablation), Path(args.figures)) \
            if args.figures else []
        card = build_card(config, Path(args.eval), Path(args.quant), Path(args.ablation), follow_ups=follow_ups,
                          compare_json=Path(args.compare) if args.compare else None,
                          compare_label=args.compare_label, refit_json=Path(args.refit) if args.refit else None,
                          points_json=Path(args.operating_points) if args.operating_points else None,
                          points_recipe=args.operating_points_recipe,
                          seeds_json=Path(args.seeds) if args.seeds else None, figures=planned, card_path=Path(args.out),
                          config_path=run_config or args.config, run_dir=args.run if run_config else None,
                          other_name=args.evaluated_as_this_recipe)
    except CardInputError as exc:
        parser.error(str(exc))  # exit 2, nothing written
    figures = write_figures(Path(args.eval), Path(args.quant), Path(args.ablation), Path(args.figures)) \
        if args.figures else []
    for path in figures:
        print(f"drew {path}")
    out = atomic_write_text(args.out, card)
    print(f"wrote {out}")
