"""Which run folders of a sweep hold the spec's results: resume the done ones, refuse the stale ones.

A run is *done* when its params.yaml equals the spec's parameters and its notebook's code is the one
it ran with; a folder with other parameters or older code is *stale*: resuming would report its
results as the spec's, so the sweep refuses to start until it is rerun or moved away.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Protocol

import yaml

from ..core.config import ConfigError


class SpecRuns(Protocol):
    """What the stale check needs of a sweep spec (``sweep.SweepSpec``), without importing it back."""

    name: str
    notebook: Path

    def runs(self) -> list[tuple[str, dict[str, Any]]]: ...


class StaleRunsError(ConfigError):
    """Run folders hold results of other settings than the spec's; resuming would report them as new."""


def read_run_json(path: Path) -> dict:
    """A run file's JSON object; ValueError naming the file when it cannot be read (a crash mid-write)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is unreadable (JSON {type(data).__name__}, not an object)")
    return data


def canonical_params(params: dict) -> str:
    """Parameters as params.yaml stores them: two runs match when these texts are equal."""
    return yaml.safe_dump(params, sort_keys=True, allow_unicode=True)


def notebook_digest(notebook: Path) -> str:
    """A hash of the notebook's code cells: outputs and markdown do not change results, code does."""
    cells = json.loads(Path(notebook).read_text(encoding="utf-8")).get("cells", [])
    code = ["".join(c.get("source", "")) for c in cells if c.get("cell_type") == "code"]
    return hashlib.sha256(json.dumps(code).encode()).hexdigest()[:16]


def run_state(run_dir: Path, params: dict, digest: str) -> tuple[str, str]:
    """(state, why): ``new`` (no folder), ``done`` (finished with these params and this notebook code),
    ``stale`` (the folder holds other settings: its results or checkpoints must not be reused) or
    ``todo`` (unfinished or failed with these params: rerun it, resuming from its checkpoint)."""
    if not run_dir.is_dir():
        return "new", ""
    params_file, status_file, metrics_file = run_dir / "params.yaml", run_dir / "status.json", run_dir / "metrics.json"
    if params_file.is_file():
        try:
            stored = yaml.safe_load(params_file.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            return "stale", f"{params_file} is unreadable ({type(exc).__name__})"
        stored, wanted = stored if isinstance(stored, dict) else {"(not a mapping)": stored}, yaml.safe_load(canonical_params(params))
        if changed := [f"{k} {stored.get(k, '(unset)')!r} -> {wanted.get(k, '(unset)')!r}"
                       for k in sorted(set(stored) | set(wanted), key=str)
                       if canonical_params({k: stored.get(k, "(unset)")}) != canonical_params({k: wanted.get(k, "(unset)")})]:
            return "stale", "params.yaml differs: " + ", ".join(changed)
    elif status_file.is_file() or metrics_file.is_file():
        return "stale", "it has results but no params.yaml to compare"
    try:
        status = read_run_json(status_file) if status_file.is_file() else {}
    except ValueError as exc:
        return "todo", str(exc)
    if status.get("status") != "ok" or not metrics_file.is_file():
        return "todo", ""
    if status.get("notebook_sha256", digest) != digest:  # runs from before the hash was recorded pass
        return "stale", "the notebook's code changed since it ran"
    return "done", ""


def check_stale(spec: SpecRuns, root: Path, rerun_stale: bool = False) -> list[str]:
    """The spec's runs whose folders hold other settings (``run_state``). Raises StaleRunsError naming
    each, unless ``rerun_stale``: then their folders are deleted so they run afresh."""
    digest = notebook_digest(spec.notebook)
    stale = {name: why for name, params in spec.runs()
             for state, why in [run_state(root / name, params, digest)] if state == "stale"}
    if stale and not rerun_stale:
        listed = "\n".join(f"  {name}: {why}" for name, why in stale.items())
        raise StaleRunsError(
            f"sweep {spec.name}: {len(stale)} run folder(s) in {root} hold results of other settings than the "
            f"spec's, and resuming would report them as this spec's results:\n{listed}\n"
            "Rerun them with 'so8t sweep --rerun-stale' (deletes those folders first), move them away, "
            "or give the sweep a new name to keep both.")
    for name in stale:
        print(f"sweep {spec.name}: rerunning stale {name} ({stale[name]})", file=sys.stderr)
        shutil.rmtree(root / name)
    return list(stale)
