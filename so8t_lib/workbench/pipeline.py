"""The main job, end to end: train (and calibrate), score on the test split, export the GGUF ladder,
(optionally refit the 4-bit file's head), decide from the Q4_K_M_T8 file. ``make demo`` runs ``so8t demo``, which is ``run_demo``.

Training and evaluation do not import each other; this is where they meet.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

import yaml

from ..core.checkpoint import CheckpointError, recover_interrupted_swap
from ..core.config import ConfigError, SO8TConfig, config_from_dict, load_config
from ..core.io import atomic_write_text
from ..core.paths import CONFIGS_DIR
from ..core.schema import (
    BEST_DIR,
    DEMO_TIMINGS_FILE,
    LABELS,
    LAST_DIR,
    ROUTER_FILE,
    RUN_CONFIG_FILE,
    RUN_METRICS_FILE,
    TEST_METRICS_FILE,
)
from ..data.tables import load_table
from ..eval.calibration import calibrate_checkpoint
from ..eval.evaluate import evaluate_table, format_report
from ..eval.quant_refit import refit_rungs
from ..export.gguf_meta import GGUFError
from ..export.quantize import check_out_dir, check_out_outside
from ..model.prompts import EXAMPLE_REQUESTS
from ..serve.backends import load_decider
from ..serve.router import RouterError, fit_router, load_router
from ..train.run_folder import LOCK_FILE, RunLock, run_differences
from ..train.trainer import train

DEFAULT_CONFIG = CONFIGS_DIR / "training.yaml"
# which exported file the demo decides from, in order of preference: Q4_K_M with the trained blocks at Q8_0
# (the 4-bit rung that keeps the decisions, docs/benchmarks.md), else plain Q4_K_M
DEMO_GGUF_SUFFIXES = ("-q4_k_m_t8.gguf", "-q4_k_m.gguf")
EXAMPLES = EXAMPLE_REQUESTS[:3]


def calibrate_run(run_dir: Path, config: SO8TConfig) -> dict | None:
    """Fit the best checkpoint's temperature on the val split, or on the same sample of it the run evaluated on
    (``training.calibrate_temperature``, ``training.eval_max_rows``)."""
    if not config.training.calibrate_temperature:
        return None
    if not (run_dir / BEST_DIR).is_dir():
        print(f"calibration: {run_dir} holds no best/ checkpoint (no evaluation finished), so there is no "
              "temperature to fit; so8t train --resume finishes a pending evaluation", file=sys.stderr)
        return None
    result = calibrate_checkpoint(run_dir / BEST_DIR, Path(config.training.data_dir) / "val.jsonl",
                                  config.training.eval_batch_size, max_rows=config.training.eval_max_rows,
                                  seed=config.training.data_seed)
    print(f"calibration: temperature {result['temperature']:.3f} on {result['rows']} val rows, "
          f"ECE {result['ece_before']:.3f} -> {result['ece_after']:.3f}", file=sys.stderr)
    return result


def train_and_calibrate(config: SO8TConfig, resume: bool = False,
                        on_log: Callable[[dict], None] | None = None) -> Path:
    """Train as the config says, then fit SafetyHeadB's temperature on val; returns the run folder.
    What ``so8t train``, ``make demo`` and notebook 01 run."""
    return train(config, resume=resume, on_log=on_log, after_training=lambda run_dir: calibrate_run(run_dir, config))


def config_of_run(run_dir: Path) -> SO8TConfig:
    """The config a run was started with (a resumed run continues under it, whatever the command line says)."""
    saved = run_dir / RUN_CONFIG_FILE
    try:
        data = yaml.safe_load(saved.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        data = exc
    if not isinstance(data, dict) or not data:  # empty would read as "all defaults": another run than this one
        what = "empty" if data is None or data == {} else \
            f"unreadable ({' '.join(str(data).split())})" if isinstance(data, Exception) else f"not a mapping of settings ({type(data).__name__})"
        raise CheckpointError(f"{saved} is {what}, so the config the run started with is unknown. Delete it and resume "
                              "with the command line the run was started with (so8t train --config <its config> "
                              "[its overrides] --resume): last/ holds that config's fingerprint, refuses any other, and "
                              "the resume writes config.yaml again")
    return config_from_dict(data, source=str(saved))


def fit_width(text: str, width: int) -> str:
    """Cut and pad to a terminal width, counting wide (CJK) characters as two columns."""
    out, used = "", 0
    for ch in text:
        w = 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        if used + w > width - 1:
            return out + "…" + " " * (width - used - 1)
        out, used = out + ch, used + w
    return out + " " * (width - used)


def run_demo(config_path: str | Path = DEFAULT_CONFIG, overrides: list[str] | tuple[str, ...] = (),
             retrain: bool = False, bootstrap: int = 500, dist: str | Path = "dist", gguf: bool = True,
             refit_rows: int = 0) -> dict:
    """Train (or continue, or reuse) the run of ``config_path``, score its best checkpoint on the test split
    (written to ``<run>/test_metrics.json``), show three example decisions, then export and decide from GGUF.
    With ``refit_rows`` the 4-bit file's SafetyHeadB is first refitted to the scored model's decisions on that
    many training rows (``eval.quant_refit``), so the file follows the model the test numbers describe."""
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:  # not after the training
        raise ValueError(f"bootstrap is a number of resamples, 0 or more; got {bootstrap!r}")
    config = load_config(config_path, overrides)
    if refit_rows and config.model.head.pooling == "max":  # refused now, not after training and the export
        raise GGUFError("--refit-head refits a head on pooled states, and this config's SafetyHeadB max-pools "
                        "token states (model.head.pooling: max; its 4-bit file keeps the decisions without it, "
                        "docs/benchmarks.md): drop --refit-head")
    run_dir = Path(config.training.output_dir)
    if gguf:  # a --dist that cannot take the files (or that lies in the run) was found after training and scoring
        check_out_dir(Path(dist))
        check_out_outside(Path(dist), run_dir)
    lock = RunLock(run_dir)  # a run another process is training is refused here, never emptied below
    try:
        config, resume = _prepare_run_folder(run_dir, config, retrain)
        start = time.perf_counter()
        train_and_calibrate(config, resume=resume)
        trained = time.perf_counter() - start
    finally:
        lock.release()

    clock = time.perf_counter()
    model = load_decider(run_dir)  # the best checkpoint
    test = load_table(Path(config.training.data_dir) / "test.jsonl")
    report = evaluate_table(model, test, bootstrap=bootstrap)
    timings = {"training_s": trained, "test_split_s": time.perf_counter() - clock}
    report["checkpoint"] = str(run_dir / BEST_DIR)
    atomic_write_text(run_dir / TEST_METRICS_FILE, json.dumps(report, indent=1, ensure_ascii=False))
    print(f"\ntraining: {trained:.0f}s. Test split ({len(test)} rows), best checkpoint {run_dir / BEST_DIR}:")
    print(format_report(report))

    requests, contexts = zip(*EXAMPLES)
    probs = model.decide(list(requests), list(contexts))
    print(f"\n{fit_width('request', 58)} " + " ".join(f"{label:>9s}" for label in LABELS))
    for request, row in zip(requests, probs):
        print(f"{fit_width(request, 58)} " + " ".join(f"{float(p):9.3f}" for p in row))
    print(f"\nmetrics: {run_dir / TEST_METRICS_FILE}; per-step log: {run_dir / RUN_METRICS_FILE}")
    clock = time.perf_counter()
    fit_run_router(run_dir, Path(config.training.data_dir))
    timings["router_s"] = time.perf_counter() - clock
    if gguf:
        clock = time.perf_counter()
        paths = export_ladder(run_dir, Path(dist))
        timings["gguf_ladder_s"] = time.perf_counter() - clock
        if paths:
            q4 = demo_gguf(paths)
            if refit_rows:
                clock = time.perf_counter()
                refit_rungs(run_dir, {q4.name: q4}, refit_rows, teacher=model, data_dir=config.training.data_dir)
                timings["head_refit_s"] = time.perf_counter() - clock
            decide_from_gguf(q4, requests[1], contexts[1])
    write_timings(run_dir, timings, time.perf_counter() - start)
    return report


def _prepare_run_folder(run_dir: Path, config: SO8TConfig, retrain: bool) -> tuple[SO8TConfig, bool]:
    """The config to train with and whether to resume: ``--retrain`` empties a folder a run wrote, a run killed
    before it saved anything is started over, a run without ``last/`` but with more is refused. Called with the
    folder's lock held, whose file stays (removing it would let another trainer take a new one meanwhile)."""

    def entries() -> list[str]:
        return sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE) if run_dir.is_dir() else []

    if retrain and entries():
        if RUN_CONFIG_FILE not in entries():  # only a folder a run wrote is emptied
            raise ConfigError(f"--retrain would delete {run_dir}, which does not hold a run (no {RUN_CONFIG_FILE}); "
                              "remove it yourself or choose another training.output_dir")
        _empty_run_folder(run_dir)
    recover_interrupted_swap(run_dir / LAST_DIR)  # a kill between the two renames of a save leaves .last.old-*
    resume = (run_dir / LAST_DIR).is_dir()
    leftovers = [] if resume else entries()
    if leftovers and set(leftovers) <= {RUN_CONFIG_FILE, RUN_METRICS_FILE}:  # killed before it saved anything
        print(f"{run_dir} holds a run that saved no checkpoint: starting it over")
        _empty_run_folder(run_dir)
    elif leftovers:
        raise ConfigError(f"{run_dir} holds a run without a last/ checkpoint ({', '.join(leftovers)}), so it cannot be "
                          "continued: so8t demo --retrain starts it over, or move the folder away")
    if resume:
        config = _config_to_continue(run_dir, config)
        print(f"{run_dir} holds a run: continuing it if unfinished (--retrain starts over)")
    return config, resume


def _config_to_continue(run_dir: Path, asked: SO8TConfig) -> SO8TConfig:
    """The config of the run in ``run_dir``, refused where the one asked for (--config and overrides) differs:
    the demo continued the run under its own config without a word, a Gemma config on a tiny run's folder too."""
    started = config_of_run(run_dir)
    changed = run_differences(started, asked)
    if changed:
        moved = (f" (it was started with training.output_dir={started.training.output_dir}: a run folder moved "
                 "since cannot be continued)" if "training.output_dir" in changed else "")
        raise ConfigError(f"{run_dir} holds a run started with another config ({run_dir / RUN_CONFIG_FILE}); these "
                          f"differ from it: {', '.join(changed)}{moved}. so8t demo --retrain starts it over under "
                          "the one asked for, or choose another training.output_dir")
    return started


def _empty_run_folder(run_dir: Path) -> None:
    """Everything in ``run_dir`` but its lock file, which this process holds."""
    for entry in run_dir.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def fit_run_router(run_dir: Path, data_dir: Path) -> Path:
    """``<run>/router.json``: the escalation router fitted on the run's training split (the runtime configs point
    ``escalation.router`` here); kept when it is already there, newer than the split, loads, and was fitted on
    this split (a router fitted on another data folder, or a damaged one, is fitted again)."""
    path, train_file = run_dir / ROUTER_FILE, data_dir / "train.jsonl"
    if path.is_file() and path.stat().st_mtime >= train_file.stat().st_mtime:
        try:
            if load_router(path).fitted_on.get("source") == str(train_file):
                return path
        except RouterError as exc:
            print(f"escalation router: {exc}; fitting it again")
    router = fit_router(load_table(train_file).to_dict("records"), source=str(train_file))
    router.save(path)
    print(f"escalation router: {router.fitted_on['rows']} rows of {train_file} -> {path}")
    return path


def write_timings(run_dir: Path, timings: dict[str, float], total: float) -> dict:
    """``<run>/demo_timings.json``: this invocation's stages, with the training run's own setup record (model,
    frozen-state cache, warm start) and step count, so the demo's cost can be read, not guessed."""
    setup, steps = {}, 0
    log = run_dir / RUN_METRICS_FILE
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record.get("kind") == "setup":
                setup = {k: v for k, v in record.items() if k.endswith("_s")}
            steps = max(steps, int(record.get("step") or 0))
    result = {"total_s": round(total, 1), **{k: round(v, 1) for k, v in timings.items()},
              "training_setup": setup, "training_steps": steps, "machine": machine_facts()}
    atomic_write_text(run_dir / DEMO_TIMINGS_FILE, json.dumps(result, indent=1))
    print("time: " + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.0f}s" for k, v in result.items()
                               if k.endswith("_s")) + f" (setup: {setup}); {run_dir / DEMO_TIMINGS_FILE}")
    return result


def machine_facts() -> dict:
    """What a timing needs beside it to be read: the cores torch used and this process's peak resident memory
    (children such as llama.cpp's quantizer run in-process, so it counts them too)."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:  # Linux names the model ("AMD EPYC ...", "Intel Xeon ..."); elsewhere the architecture will do
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    facts = {"cpu": cpu, "cores": os.cpu_count(),
             "torch_threads": torch.get_num_threads()}
    try:
        import resource
    except ImportError:  # not on Windows
        return facts
    # ru_maxrss counts kilobytes on Linux and bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    facts["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30, 2)
    return facts


def demo_gguf(paths: list[Path]) -> Path:
    """The file the demo decides from: the 4-bit rung the ladder benchmark recommends (trained blocks at Q8_0),
    plain Q4_K_M where an older export lacks it."""
    for suffix in DEMO_GGUF_SUFFIXES:
        for path in paths:
            if path.name.endswith(suffix):
                return path
    raise FileNotFoundError(f"no {' or '.join(DEMO_GGUF_SUFFIXES)} file among {[p.name for p in paths]}: "
                            "re-run the export (so8t export) to write the 4-bit rungs")


def export_ladder(run_dir: Path, dist: Path) -> list[Path]:
    """The GGUF ladder of the run's best checkpoint (none, with a note, where the gguf extra is missing)."""
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError:
        print("\nGGUF export skipped: pip install -e '.[gguf]' (gguf, llama-cpp-python)")
        return []
    from ..export.quantize import QUANT_TYPES, export

    paths = export(run_dir, dist, list(QUANT_TYPES))
    print("\nGGUF files (one file carries both heads):")
    for path in paths:
        print(f"  {path}  {path.stat().st_size / 2**20:5.1f} MiB")
    return paths


def decide_from_gguf(q4: Path, request: str, context: str | None) -> None:
    """One decision from the demo's 4-bit file with llama.cpp, printed."""
    probs = load_decider(q4).decide([request], [context])[0]
    decision = LABELS[int(probs.argmax())]
    print(f"\n{q4.name} (llama.cpp): {fit_width(request, 58)} -> {decision} "
          + " ".join(f"{label} {float(p):.3f}" for label, p in zip(LABELS, probs)))
