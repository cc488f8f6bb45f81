"""Papermill sweeps: one notebook, a parameter grid, several seeds, comparable results.

    so8t sweep experiments/<spec>.yaml [--workers 2] [--dry-run] [--rerun-stale]

A spec (YAML)::

    name: gate_ablation                 # runs go to experiments/runs/<name>/<run>/
    notebook: notebooks/01_train_so8t.ipynb
    params: {max_steps: 150}            # the same for every run
    grid: {gate_order: [safe_first, none], pet: [true, false]}
    seeds: [0, 1, 2, 3, 4]              # each grid point runs once per seed (parameter ``seed``)

``sweep_spec.load_spec`` reads and checks it (the name is one folder name; values are JSON's).
Each run executes the notebook with papermill into ``<run>/output.ipynb`` with the run's parameters
plus ``output_dir=<run>``; the notebook writes ``<run>/metrics.json``. ``params.yaml`` records the
parameters, ``inputs.json`` a hash of each file they name (a config) and ``status.json`` the outcome. A run
that finished ``ok`` is skipped on the next invocation (resume) while its params.yaml, those files and the
notebook's code are the spec's (``sweep_runs.run_state``); otherwise it is *stale* and the
sweep refuses to start (``rerun_stale`` deletes and reruns it). A failing run is recorded with its error
and the sweep goes on. ``--workers`` runs several at once (each in its own kernel). Ctrl-C cancels the
queued runs and interrupts the running ones. ``summary.csv`` rolls up params × scalar metrics.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from tqdm.auto import tqdm

from ..core.config import ConfigError
from ..core.io import atomic_write_text
from ..core.paths import PROJECT_ROOT
from .sweep_runs import (
    INPUTS_FILE,
    canonical_params,
    check_stale,
    input_digests,
    notebook_digest,
    read_run_json,
    run_state,
)
from .sweep_spec import SweepSpec, check_name, load_spec

__all__ = ["RUNS_ROOT", "SweepSpec", "load_spec", "run_one", "run_sweep", "summarize"]

RUNS_ROOT = Path("experiments/runs")
INTERRUPT_GRACE_S = 10.0  # after Ctrl-C, how long running notebooks get to stop before their kernels are killed


@dataclass
class _Stop:
    """What Ctrl-C reaches: the flag runs check, and the kernel of each running notebook. Kernels run in
    their own session (jupyter_client), so a terminal's Ctrl-C does not reach them on its own."""
    requested: threading.Event = field(default_factory=threading.Event)
    kernels: dict[str, Any] = field(default_factory=dict)

    def manager_class(self, run: str) -> type:
        """A kernel manager class that files each kernel it starts under ``run``."""
        from jupyter_client import AsyncKernelManager
        kernels = self.kernels

        class TrackedKernelManager(AsyncKernelManager):
            def __init__(self, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                kernels[run] = self

        return TrackedKernelManager

    def signal_kernels(self, signum: int) -> None:
        for manager in list(self.kernels.values()):
            process = getattr(getattr(manager, "provisioner", None), "process", None)
            if process is not None and process.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(process.pid, signum)  # the kernel leads its own process group


def run_one(spec: SweepSpec, name: str, params: dict, root: Path, stop: _Stop | None = None) -> dict:
    """Execute one run (or skip it when it already finished); never raises. A stale folder is left
    alone (status ``stale``): resuming from its checkpoint would mix two settings in one result."""
    import papermill

    run_dir = root / name
    status_file = run_dir / "status.json"
    stop = stop or _Stop()
    try:
        digest = notebook_digest(spec.notebook)
        state, why = run_state(run_dir, params, digest)
    except (OSError, ValueError) as exc:
        return {"run": name, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    if state == "done":
        return {"run": name, "status": "skipped"}
    if state == "stale":
        return {"run": name, "status": "stale", "error": why}
    if why:
        print(f"sweep {spec.name}: rerunning {name} ({why})", file=sys.stderr)
    if stop.requested.is_set():
        return {"run": name, "status": "cancelled"}
    start = time.perf_counter()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        for old in (status_file, run_dir / "metrics.json"):  # a failed rerun must not pass on the last attempt's
            old.unlink(missing_ok=True)
        atomic_write_text(run_dir / "params.yaml", canonical_params(params))
        atomic_write_text(run_dir / INPUTS_FILE, json.dumps({"files": input_digests(params)}, indent=1))
        papermill.execute_notebook(
            str(spec.notebook), str(run_dir / "output.ipynb"), parameters={**params, "output_dir": _output_dir(run_dir)},
            kernel_name=spec.kernel, progress_bar=False, execution_timeout=spec.timeout_s, cwd=os.getcwd(),
            kernel_manager_class=stop.manager_class(name),
        )
        if not (run_dir / "metrics.json").is_file():
            raise RuntimeError(f"the notebook did not write {run_dir / 'metrics.json'}")
        outcome = {"run": name, "status": "ok", "seconds": time.perf_counter() - start, "notebook_sha256": digest}
    except Exception as exc:  # noqa: BLE001 - a failing run is recorded; the sweep goes on
        outcome = {"run": name, "status": "interrupted" if stop.requested.is_set() else "failed",
                   "seconds": time.perf_counter() - start,
                   "error": f"{type(exc).__name__}: {str(exc)[-2000:]}", "traceback": traceback.format_exc()[-4000:],
                   "error_type": getattr(exc, "ename", None) or type(exc).__name__}  # the notebook's, if it raised
    finally:
        stop.kernels.pop(name, None)
    atomic_write_text(status_file, json.dumps(outcome, indent=1, ensure_ascii=False, default=str))
    return outcome


def _output_dir(run_dir: Path) -> str:
    """The run folder as the notebook gets it: as given when the sweep runs from the project root (where
    notebook 01 moves before it writes, and what earlier runs' checkpoints recorded), else absolute, so a
    sweep started elsewhere does not write its results under the project root."""
    if run_dir.is_absolute() or Path.cwd().resolve() == PROJECT_ROOT:
        return str(run_dir)
    return str(run_dir.resolve())


def _flatten(prefix: str, value: Any, out: dict) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    elif isinstance(value, (int, float, str, bool)) or value is None:
        out[prefix] = value


def summarize(root: Path, runs: list[tuple[str, dict]] | None = None) -> pd.DataFrame:
    """One row per run folder (only the spec's ``runs`` when given, not leftovers of an earlier grid): params,
    status, and every scalar in metrics.json (nested keys dotted). An unreadable file is named on stderr and
    its run's status becomes ``unreadable``, so analyses leave it out. A spec run without a folder (cancelled
    by Ctrl-C) gets a row of its params with status ``not run``, and a folder without status.json
    ``unfinished``, so "5 of 8 runs finished" counts the spec's runs, not the folders."""
    expected = dict(runs) if runs is not None else None
    rows = []
    for run_dir in sorted(p for p in root.iterdir() if p.is_dir() and (expected is None or p.name in expected)):
        row: dict[str, Any] = {"run": run_dir.name, "status": "unfinished"}
        try:
            if (run_dir / "params.yaml").is_file():
                row.update(yaml.safe_load((run_dir / "params.yaml").read_text(encoding="utf-8")) or {})
            if (run_dir / "status.json").is_file():
                row["status"] = read_run_json(run_dir / "status.json").get("status")
            if (run_dir / "metrics.json").is_file():
                metrics: dict = {}
                _flatten("", read_run_json(run_dir / "metrics.json"), metrics)
                row.update({f"metric.{k}": v for k, v in metrics.items()})
        except (OSError, ValueError, yaml.YAMLError) as exc:
            print(f"summary: {exc}; run {run_dir.name} is marked unreadable", file=sys.stderr)
            row["status"] = "unreadable"
        rows.append(row)
    folders = {row["run"] for row in rows}
    rows += [{"run": name, **params, "status": "not run"} for name, params in (expected or {}).items() if name not in folders]
    frame = pd.DataFrame(sorted(rows, key=lambda row: row["run"]))
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


def _stop_runs(pool: concurrent.futures.ThreadPoolExecutor, futures: list, stop: _Stop) -> None:
    """After Ctrl-C: cancel the queued runs, interrupt the running notebooks (SIGINT: the cell raises
    KeyboardInterrupt), and kill the kernels that have not stopped after INTERRUPT_GRACE_S or a second Ctrl-C."""
    stop.requested.set()
    pool.shutdown(wait=False, cancel_futures=True)
    running = [f for f in futures if not f.done()]
    print(f"\ninterrupted: cancelled the queued runs; stopping {len(running)} running notebook(s) "
          "(Ctrl-C again to kill them)", file=sys.stderr)
    deadline = time.monotonic() + INTERRUPT_GRACE_S
    try:
        while not all(f.done() for f in running) and time.monotonic() < deadline:
            stop.signal_kernels(signal.SIGINT)  # repeated: a kernel may have been starting the first time
            concurrent.futures.wait(running, timeout=1.0)
    except KeyboardInterrupt:  # a second Ctrl-C: kill now
        pass
    if not all(f.done() for f in running):
        stop.signal_kernels(signal.SIGKILL)
        concurrent.futures.wait(running, timeout=10.0)


def run_sweep(spec: SweepSpec, workers: int = 1, runs_root: Path = RUNS_ROOT,
              rerun_stale: bool = False) -> pd.DataFrame:
    """Run the spec's runs that are not done and return summary.csv's frame. Stale run folders make it
    refuse before anything runs (``check_stale``). On Ctrl-C it writes summary.csv for what finished
    and re-raises KeyboardInterrupt; interrupted runs are rerun by the next invocation."""
    root = Path(runs_root) / check_name(spec.name, f"sweep {spec.name!r}")
    runs = spec.runs()
    names = [name for name, _ in runs]
    spec = dataclasses.replace(spec, kernel=resolve_kernel(spec))
    root.mkdir(parents=True, exist_ok=True)
    check_stale(spec, root, rerun_stale)
    stop = _Stop()
    outcomes = []
    with share_cores(workers), tqdm(total=len(runs), desc=f"sweep {spec.name}", unit="run") as bar:
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers))
        futures = [pool.submit(run_one, spec, name, params, root, stop) for name, params in runs]
        try:
            for future in concurrent.futures.as_completed(futures):
                outcome = future.result()
                outcomes.append(outcome)
                bar.set_postfix(failed=sum(o["status"] != "ok" and o["status"] != "skipped" for o in outcomes))
                bar.update(1)
        except KeyboardInterrupt:
            _stop_runs(pool, futures, stop)
            summarize(root, runs)
            raise
        finally:
            pool.shutdown(wait=not stop.requested.is_set(), cancel_futures=True)
    for outcome in outcomes:
        if outcome["status"] not in ("ok", "skipped"):
            error = outcome.get("error") or ""
            print(f"{outcome['status']}: {outcome['run']}: {error.splitlines()[-1] if error else ''}", file=sys.stderr)
    if leftovers := sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in names):
        print(f"sweep {spec.name}: summary.csv leaves out {len(leftovers)} folder(s) in {root} that are not "
              f"runs of this spec (e.g. {leftovers[0]})", file=sys.stderr)
    return summarize(root, runs)
