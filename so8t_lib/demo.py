"""The main job on the tiny default: train it on the safety corpus, then score it on the test split.

    python -m so8t_lib.demo [--config configs/training.yaml] [--retrain] [key=value ...]

Trains to ``training.output_dir`` (``checkpoints/so8t-tiny/``, a few minutes on 2 CPU cores),
continues an interrupted run there, or reuses a finished one; then loads the best checkpoint,
decides on every test row, prints the safety report (bootstrap 95% intervals) and writes it to
``<run folder>/test_metrics.json``. ``--retrain`` starts over in a fresh folder. Finally it
exports the best checkpoint to GGUF under ``dist/`` (f16, Q8_0, Q4_K_M, Q4_K_S, IQ4_XS) and decides
one request from the Q4_K_M file with llama.cpp (``--no-gguf`` skips this).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import unicodedata
import warnings
from pathlib import Path

import yaml

from .checkpoint import atomic_write_text
from .config import LABELS, config_from_dict, load_config
from .data import load_table
from .evaluate import evaluate_table, format_report
from .model import SO8TModel
from .prompts import EXAMPLE_REQUESTS
from .train import CONFIG_FILE, train

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "training.yaml"
EXAMPLES = EXAMPLE_REQUESTS[:3]


def _fit(text: str, width: int) -> str:
    """Cut and pad to a terminal width, counting wide (CJK) characters as two columns."""
    out, used = "", 0
    for ch in text:
        w = 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        if used + w > width - 1:
            return out + "…" + " " * (width - used - 1)
        out, used = out + ch, used + w
    return out + " " * (width - used)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--retrain", action="store_true", help="delete the run folder and train from scratch")
    parser.add_argument("--bootstrap", type=int, default=500, help="resamples for the 95%% intervals")
    parser.add_argument("--dist", default="dist", help="folder for the GGUF files")
    parser.add_argument("--no-gguf", action="store_true", help="skip the GGUF export")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. training.max_steps=100")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")

    config = load_config(args.config, args.overrides)
    run_dir = Path(config.training.output_dir)
    if args.retrain and run_dir.exists():
        shutil.rmtree(run_dir)
    resume = (run_dir / "last").is_dir()
    if resume:  # continue (or reuse) the run under the config it was started with
        config = config_from_dict(yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8")),
                                  source=str(run_dir / CONFIG_FILE))
        print(f"{run_dir} holds a run: continuing it if unfinished (--retrain starts over)")
    start = time.perf_counter()
    train(config, resume=resume)
    trained = time.perf_counter() - start

    model = SO8TModel.load(run_dir)  # the best checkpoint
    test = load_table(Path(config.training.data_dir) / "test.jsonl")
    report = evaluate_table(model, test, bootstrap=args.bootstrap)
    report["checkpoint"] = str(run_dir / "best")
    atomic_write_text(run_dir / "test_metrics.json", json.dumps(report, indent=1, ensure_ascii=False))
    print(f"\ntraining: {trained:.0f}s. Test split ({len(test)} rows), best checkpoint {run_dir / 'best'}:")
    print(format_report(report))

    requests, contexts = zip(*EXAMPLES)
    probs = model.decide(list(requests), list(contexts))
    print(f"\n{_fit('request', 58)} " + " ".join(f"{label:>9s}" for label in LABELS))
    for request, row in zip(requests, probs):
        print(f"{_fit(request, 58)} " + " ".join(f"{float(p):9.3f}" for p in row))
    print(f"\nmetrics: {run_dir / 'test_metrics.json'}; per-step log: {run_dir / 'metrics.jsonl'}")
    if not args.no_gguf:
        _gguf_step(run_dir, Path(args.dist), requests[1], contexts[1])


def _gguf_step(run_dir: Path, dist: Path, request: str, context: str | None) -> None:
    try:
        from .gguf import QUANT_TYPES, export
        from .gguf_backend import GGUFBackend
    except ImportError:
        print("\nGGUF export skipped: pip install -e '.[gguf]' (gguf, llama-cpp-python)")
        return
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError:
        print("\nGGUF export skipped: llama-cpp-python is not installed (pip install -e '.[gguf]')")
        return
    paths = export(run_dir, dist, list(QUANT_TYPES))
    print("\nGGUF files (one file carries both heads):")
    for path in paths:
        print(f"  {path}  {path.stat().st_size / 2**20:5.1f} MiB")
    q4 = next(p for p in paths if p.name.endswith("-q4_k_m.gguf"))
    backend = GGUFBackend(q4)
    probs = backend.decide([request], [context])[0]
    decision = LABELS[int(probs.argmax())]
    print(f"\n{q4.name} (llama.cpp): {_fit(request, 58)} -> {decision} "
          + " ".join(f"{label} {float(p):.3f}" for label, p in zip(LABELS, probs)))


if __name__ == "__main__":
    main()
