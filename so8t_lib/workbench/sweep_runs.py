"""Which run folders of a sweep hold the spec's results: resume the done ones, refuse the stale ones.

A run is *done* when its params.yaml equals the spec's parameters, the files those parameters name (a
config, its ``extends`` chain, a data file) hold what they held when it ran (``inputs.json``), and its
notebook's code is the one it ran with; a folder with other settings or older code is *stale*: resuming
would report its results, or continue its checkpoint, as the spec's, so the sweep refuses to start until
it is rerun or moved away.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Protocol

import yaml

from ..core.checkpoint import ResumeMismatch
from ..core.config import ConfigError
from ..core.config_files import read_config_mapping
from ..core.paths import PROJECT_ROOT

INPUTS_FILE = "inputs.json"  # per run: a hash of each file its parameters name, written before it starts


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


def _named_file(value: Any) -> Path | None:
    """The file a parameter value names, if any: relative to the working directory, else to the project
    root (notebook 01 enters the project root before it reads its paths)."""
    if not isinstance(value, str) or not value or "\n" in value or len(value) > 1024:
        return None
    path = Path(value)
    for candidate in (path,) if path.is_absolute() else (path, PROJECT_ROOT / path):
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=256)
def _file_digest(path: Path, mtime_ns: int, size: int) -> str:
    """The bytes' hash; ``mtime_ns`` and ``size`` are only the cache key, so a changed file is hashed again."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _content_digest(path: Path) -> str:
    """A config file's settings with its ``extends`` chain resolved (an edit to the file it extends changes
    them too; a comment does not), else the file's bytes."""
    if path.suffix in (".yaml", ".yml"):
        try:
            merged = read_config_mapping(path)
        except (ConfigError, OSError, ValueError):
            pass
        else:
            return hashlib.sha256(json.dumps(merged, sort_keys=True, default=str).encode()).hexdigest()[:16]
    stat = path.stat()
    return _file_digest(path.resolve(), stat.st_mtime_ns, stat.st_size)


def input_digests(params: dict) -> dict[str, dict[str, str]]:
    """Per parameter that names a file (``config: configs/tiny-training.yaml``): its path and a hash of what
    it holds. params.yaml records only the path, so without this an edited config would leave old results
    looking current, and an interrupted run's checkpoint would be resumed under the new config."""
    files = {}
    for key, value in params.items():
        if (path := _named_file(value)) is not None:
            try:
                files[str(key)] = {"path": str(value), "sha256": _content_digest(path)}
            except OSError as exc:
                files[str(key)] = {"path": str(value), "sha256": f"unreadable ({type(exc).__name__})"}
    return files


def _changed_inputs(run_dir: Path, params: dict) -> str:
    """Why the files the run's parameters name differ from when it started ('' when they do not, or when
    the run predates ``inputs.json``)."""
    recorded_file = run_dir / INPUTS_FILE
    if not recorded_file.is_file():
        return ""
    recorded = read_run_json(recorded_file).get("files", {})
    current = input_digests(params)
    changed = [f"{key} {(recorded.get(key) or current.get(key) or {}).get('path')}"
               for key in sorted(set(recorded) | set(current)) if recorded.get(key) != current.get(key)]
    return f"the file(s) its parameters name changed since it ran: {', '.join(changed)}" if changed else ""


def run_state(run_dir: Path, params: dict, digest: str) -> tuple[str, str]:
    """(state, why): ``new`` (no folder), ``done`` (finished with these params, the same contents of the
    files they name and this notebook code), ``stale`` (the folder holds other settings: its results or
    checkpoints must not be reused) or ``todo`` (unfinished, failed or with unreadable results under these
    settings: rerun it, resuming from its checkpoint)."""
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
        if changed := _changed_inputs(run_dir, params):
            return "stale", changed
    except ValueError as exc:
        return "stale", str(exc)
    try:
        status = read_run_json(status_file) if status_file.is_file() else {}
    except ValueError as exc:
        return "todo", str(exc)
    if status.get("status") == "failed" and status.get("error_type") == ResumeMismatch.__name__:
        return "stale", (f"its checkpoint cannot go on under these settings (the data, the base or the code "
                         f"changed): {str(status.get('error', '')).strip().splitlines()[-1][-300:]}")
    if status.get("status") != "ok" or not metrics_file.is_file():
        return "todo", ""
    try:
        read_run_json(metrics_file)
    except ValueError as exc:  # torn (a full disk, half a copy): its results cannot count
        return "todo", str(exc)
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
