"""Papermill sweeps: one notebook, a parameter grid, several seeds, comparable results.

    so8t sweep experiments/<spec>.yaml [--workers 2] [--dry-run]

A spec (YAML)::

    name: gate_ablation                 # runs go to experiments/runs/<name>/<run>/
    notebook: notebooks/01_train_so8t.ipynb
    params: {max_steps: 150}            # the same for every run
    grid: {gate_order: [safe_first, none], pet: [true, false]}
    seeds: [0, 1, 2, 3, 4]              # each grid point runs once per seed (parameter ``seed``)

Each run executes the notebook with papermill into ``<run>/output.ipynb`` with the run's parameters
plus ``output_dir=<run>``; the notebook writes ``<run>/metrics.json``. ``params.yaml`` records the
parameters and ``status.json`` the outcome. A run whose status is ``ok`` is skipped on the next
invocation (resume); a failing run is recorded with its error and the sweep goes on. ``--workers``
runs several at once (each in its own kernel). ``summary.csv`` rolls up params × scalar metrics.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import itertools
import json
import os
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from tqdm.auto import tqdm

from ..core.config import ConfigError, read_yaml_mapping
from ..core.io import atomic_write_text

RUNS_ROOT = Path("experiments/runs")


@dataclass
class SweepSpec:
    name: str
    notebook: Path
    params: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    kernel: str | None = None
    timeout_s: float | None = None

    def runs(self) -> list[tuple[str, dict[str, Any]]]:
        """(run name, parameters) for every grid point × seed, in a stable order."""
        keys = list(self.grid)
        out = []
        for values in itertools.product(*(self.grid[k] for k in keys)):
            point = dict(zip(keys, values))
            for seed in self.seeds:
                name = "__".join([f"{k}={_slug(v)}" for k, v in point.items()] + [f"seed={seed}"])
                out.append((name, {**self.params, **point, "seed": seed}))
        return out


def _slug(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return "".join(ch if ch.isalnum() or ch in "-._" else "-" for ch in text)


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    data = read_yaml_mapping(path, "sweep spec")
    allowed = {"name", "notebook", "params", "grid", "seeds", "kernel", "timeout_s"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    for key in ("name", "notebook"):
        if not data.get(key):
            raise ConfigError(f"{path}: '{key}' is required")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"{path}: grid must map each parameter to a non-empty list of values")
    seeds = data.get("seeds") or [0]
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{path}: seeds must be a list of integers")
    if "seed" in grid or "output_dir" in grid:
        raise ConfigError(f"{path}: 'seed' and 'output_dir' are set by the sweep, not the grid")
    notebook = Path(data["notebook"])
    if not notebook.is_file():
        raise ConfigError(f"{path}: notebook {notebook} not found (paths are relative to the working directory)")
    return SweepSpec(str(data["name"]), notebook, dict(data.get("params") or {}), grid, seeds,
                     data.get("kernel"), data.get("timeout_s"))


def _write_json(path: Path, payload: dict) -> None:
    atomic_write_text(path, json.dumps(payload, indent=1, ensure_ascii=False, default=str))


def run_one(spec: SweepSpec, name: str, params: dict, root: Path) -> dict:
    """Execute one run (or skip it when it already finished); never raises."""
    import papermill

    run_dir = root / name
    status_file = run_dir / "status.json"
    if status_file.is_file() and json.loads(status_file.read_text(encoding="utf-8")).get("status") == "ok" \
            and (run_dir / "metrics.json").is_file():
        return {"run": name, "status": "skipped"}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=True, allow_unicode=True), encoding="utf-8")
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(spec.notebook), str(run_dir / "output.ipynb"), parameters={**params, "output_dir": str(run_dir)},
            kernel_name=spec.kernel, progress_bar=False, execution_timeout=spec.timeout_s, cwd=os.getcwd(),
        )
        if not (run_dir / "metrics.json").is_file():
            raise RuntimeError(f"the notebook did not write {run_dir / 'metrics.json'}")
        outcome = {"run": name, "status": "ok", "seconds": time.perf_counter() - start}
    except Exception as exc:  # noqa: BLE001 - a failing run is recorded; the sweep goes on
        outcome = {"run": name, "status": "failed", "seconds": time.perf_counter() - start,
                   "error": f"{type(exc).__name__}: {str(exc)[-2000:]}", "traceback": traceback.format_exc()[-4000:]}
    _write_json(status_file, outcome)
    return outcome


def _flatten(prefix: str, value: Any, out: dict) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    elif isinstance(value, (int, float, str, bool)) or value is None:
        out[prefix] = value


def summarize(root: Path) -> pd.DataFrame:
    """One row per run folder: params, status, and every scalar in metrics.json (nested keys dotted)."""
    rows = []
    for run_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        row: dict[str, Any] = {"run": run_dir.name}
        if (run_dir / "params.yaml").is_file():
            row.update(yaml.safe_load((run_dir / "params.yaml").read_text(encoding="utf-8")) or {})
        if (run_dir / "status.json").is_file():
            row["status"] = json.loads((run_dir / "status.json").read_text(encoding="utf-8")).get("status")
        if (run_dir / "metrics.json").is_file():
            metrics: dict = {}
            _flatten("", json.loads((run_dir / "metrics.json").read_text(encoding="utf-8")), metrics)
            row.update({f"metric.{k}": v for k, v in metrics.items()})
        rows.append(row)
    frame = pd.DataFrame(rows)
    atomic_write_text(root / "summary.csv", frame.to_csv(index=False))
    return frame


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def share_cores(workers: int) -> Iterator[int | None]:
    """Give each parallel kernel its share of the cores while the sweep runs (kernels inherit this
    process's environment); the environment is restored afterwards.

    Without it every kernel's torch starts one thread per core, and two workers on two cores thrash.
    An explicit OMP_NUM_THREADS in the environment wins. Yields the threads per kernel it set, or None.
    """
    if workers <= 1 or any(os.environ.get(name) for name in THREAD_VARIABLES):
        yield None
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update({name: str(threads) for name in THREAD_VARIABLES})
    try:
        yield threads
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def resolve_kernel(spec: SweepSpec) -> str:
    """The kernel the runs use: the spec's, else the notebook's (``so8t``, registered by ``make``).

    A plain ``pip install -e .`` registers no ``so8t`` kernel; the sweep then uses this environment's
    ``python3`` kernel and says so, rather than failing 40 runs on a missing kernel.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    available = set(KernelSpecManager().find_kernel_specs())
    if spec.kernel:
        if spec.kernel not in available:
            raise ConfigError(f"sweep {spec.name}: kernel '{spec.kernel}' is not installed "
                              f"(installed: {sorted(available)}); 'make venv' registers 'so8t'")
        return spec.kernel
    wanted = json.loads(spec.notebook.read_text(encoding="utf-8")).get("metadata", {}).get("kernelspec", {}).get("name")
    if wanted in available:
        return wanted
    print(f"sweep {spec.name}: kernel '{wanted}' is not installed; using python3 from {sys.prefix} "
          "('make venv' registers the project kernel)", file=sys.stderr)
    return "python3"


def run_sweep(spec: SweepSpec, workers: int = 1, runs_root: Path = RUNS_ROOT) -> pd.DataFrame:
    root = Path(runs_root) / spec.name
    spec = dataclasses.replace(spec, kernel=resolve_kernel(spec))
    root.mkdir(parents=True, exist_ok=True)
    runs = spec.runs()
    outcomes = []
    with share_cores(workers), concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool, \
            tqdm(total=len(runs), desc=f"sweep {spec.name}", unit="run") as bar:
        futures = [pool.submit(run_one, spec, name, params, root) for name, params in runs]
        for future in concurrent.futures.as_completed(futures):
            outcome = future.result()
            outcomes.append(outcome)
            bar.set_postfix(failed=sum(o["status"] == "failed" for o in outcomes))
            bar.update(1)
    for outcome in outcomes:
        if outcome["status"] == "failed":
            print(f"failed: {outcome['run']}: {outcome['error'].splitlines()[-1] if outcome['error'] else ''}",
                  file=sys.stderr)
    return summarize(root)
