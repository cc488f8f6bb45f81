"""A sweep spec (``so8t sweep``'s YAML) read and checked before anything runs.

Every value becomes a papermill parameter, a run folder's name or a summary.csv column, so a value that
would fail later (a run that cannot start, forty runs failing on one typo) or write outside the runs
root is refused here with the file and the key.
"""

from __future__ import annotations

import ast
import itertools
import json
import keyword
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import ConfigError, read_yaml_mapping

SET_BY_SWEEP = ("seed", "output_dir")  # each run's own: a spec setting them would be overridden
SUMMARY_COLUMNS = ("run", "status")  # summary.csv's own columns: a parameter of that name would overwrite them
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]+")
MAX_SEED = 2**32 - 1  # numpy's and torch's seed range
NAME_MAX = 255  # bytes in one file or folder name on Linux and macOS file systems


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
        """(run name, parameters) for every grid point × seed, in a stable order. ConfigError when two
        parameter sets get one name (``_slug`` maps "a b" and "a-b" alike): they would share one folder."""
        keys = list(self.grid)
        out: list[tuple[str, dict[str, Any]]] = []
        seen: dict[str, dict[str, Any]] = {}
        for values in itertools.product(*(self.grid[k] for k in keys)):
            point = dict(zip(keys, values))
            for seed in self.seeds:
                name = "__".join([f"{k}={_slug(v)}" for k, v in point.items()] + [f"seed={seed}"])
                if len(name.encode()) > NAME_MAX:  # passed --dry-run, then the sweep died with OSError
                    longest = max(point, key=lambda k: len(f"{k}={_slug(point[k])}".encode()))
                    raise ConfigError(
                        f"sweep {self.name}: the run {name[:60]}... would be a folder name of {len(name.encode())} "
                        f"bytes, over the {NAME_MAX} a file system allows (a run's name spells out its grid values); "
                        f"shorten grid {longest}'s values")
                params = {**self.params, **point, "seed": seed}
                other = seen.setdefault(name.casefold(), params)  # casefold: macOS folders ignore case
                if other is not params:
                    raise ConfigError(
                        f"sweep {self.name}: two runs would share the folder {name}: {json.dumps(other, default=str)} "
                        f"and {json.dumps(params, default=str)}; make the grid values differ in letters, digits or "
                        "'-._' (run names keep only those)")
                out.append((name, params))
        return out


def _slug(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return "".join(ch if ch.isalnum() or ch in "-._" else "-" for ch in text)


def check_name(name: Any, where: str = "sweep spec") -> str:
    """The sweep's name as the one folder under the runs root it names; ConfigError for anything else
    ('../ablation' wrote over experiments/ablation/, '.' is the runs root that --rerun-stale deletes in)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name in (".", ".."):
        raise ConfigError(f"{where}: name {name!r} must be one folder name of letters, digits and '._-' "
                          "(not '.' or '..'): the runs go to <runs root>/<name>/")
    return name


def _json_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, bool, int)) or (isinstance(value, float) and math.isfinite(value))


def _json_value(value: Any) -> bool:
    """Whether papermill passes ``value`` on as it is (a YAML date or set would arrive as something else)."""
    if isinstance(value, list):
        return all(_json_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_value(v) for k, v in value.items())
    return _json_scalar(value)


def _check_parameter_names(path: Path, what: str, keys: list[Any]) -> None:
    for key in keys:
        if not isinstance(key, str) or not key.isidentifier() or keyword.iskeyword(key):
            raise ConfigError(f"{path}: {what} key {key!r} is not a parameter name (a Python variable of the notebook)")
        if key in SET_BY_SWEEP:
            raise ConfigError(f"{path}: '{key}' is set by the sweep for each run, not in {what} "
                              "(list the seeds under 'seeds')")
        if key in SUMMARY_COLUMNS:
            raise ConfigError(f"{path}: {what} key '{key}' would overwrite summary.csv's own '{key}' column; rename it")


def _mapping(path: Path, data: dict, key: str) -> dict:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {key} must be a mapping of parameter names to values, got {type(value).__name__}")
    return value


def _value_key(value: Any) -> tuple[str, Any]:
    """What makes two grid values the same: a number by its value (1 and 1.0 ran the same setting twice under
    two names), true and false apart from 1 and 0, anything else by its JSON text."""
    if isinstance(value, bool):
        return "bool", value
    return ("number", value) if isinstance(value, (int, float)) else ("json", json.dumps(value))


def _check_grid(path: Path, grid: dict, params: dict) -> None:
    _check_parameter_names(path, "grid", list(grid))
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid must map each parameter to a non-empty list of values; {key} does not")
        if bad := [v for v in values if not _json_scalar(v)]:
            raise ConfigError(f"{path}: grid {key}: {bad[0]!r} is not a string, number, true/false or null "
                              "(quote a date or a list to pass it as text)")
        same = [_value_key(v) for v in values]  # a list: the value may be 0 or null
        if dups := [v for v, k in zip(values, same) if same.count(k) > 1]:
            again = next(v for v in dups[1:] if _value_key(v) == _value_key(dups[0]))
            twice = "twice" if json.dumps(again) == json.dumps(dups[0]) else f"and {again!r}, the same number,"
            raise ConfigError(f"{path}: grid {key} lists {dups[0]!r} {twice} so one setting would run twice")
        if key in params:
            raise ConfigError(f"{path}: {key} is in both params and grid; the grid's values would replace the "
                              "param's, so keep it in one")


def _check_seeds(path: Path, seeds: Any) -> list[int]:
    if seeds is None:
        return [0]
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in seeds)):
        raise ConfigError(f"{path}: seeds must be a non-empty list of whole numbers from 0 to {MAX_SEED}, "
                          f"got {seeds!r} (leave it out for [0])")
    if dups := [s for s in seeds if seeds.count(s) > 1]:  # a list: seed 0 is falsy
        raise ConfigError(f"{path}: seeds lists {dups[0]} twice")
    return seeds


def _check_notebook(path: Path, value: Any) -> Path:
    if not isinstance(value, str):
        raise ConfigError(f"{path}: notebook must be one path, got {value!r}")
    notebook = Path(value)
    if not notebook.is_file():
        raise ConfigError(f"{path}: notebook {notebook} not found (paths are relative to the working directory)")
    try:
        cells = json.loads(notebook.read_text(encoding="utf-8")).get("cells")
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{path}: notebook {notebook} is not a Jupyter notebook ({type(exc).__name__})") from None
    if not isinstance(cells, list):
        raise ConfigError(f"{path}: notebook {notebook} is not a Jupyter notebook (no list of cells)")
    return notebook


def _assigned_names(target: ast.expr) -> set[str]:
    """``x``, or each name of ``a, b`` / ``[a, *b]``; not ``cfg['lr']`` or ``obj.x``, which set no parameter."""
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, (ast.Tuple, ast.List)):
        return set().union(*(_assigned_names(t) for t in target.elts))
    return _assigned_names(target.value) if isinstance(target, ast.Starred) else set()


def declared_parameters(notebook: Path) -> set[str] | None:
    """The names the notebook's cell tagged ``parameters`` assigns (``x = 1``, ``a = b = 0``, ``x: int = 1``, also
    inside ``if`` or ``try``; IPython's ``%`` and ``!`` lines are skipped); None without such a cell, SyntaxError
    when it is not Python."""
    cells = json.loads(notebook.read_text(encoding="utf-8")).get("cells")
    tagged = [c for c in cells if isinstance(c, dict) and isinstance(c.get("metadata"), dict)
              and isinstance(c["metadata"].get("tags"), list) and "parameters" in c["metadata"]["tags"]]
    if not tagged:
        return None
    source = tagged[0].get("source", "")
    source = "".join(source) if isinstance(source, list) else str(source)
    python = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
    tree = ast.parse(python)
    names: set[str] = set()
    nodes = [tree]
    while nodes:  # the cell's own scope: what a def or class assigns sets no parameter
        node = nodes.pop()
        if isinstance(node, ast.Assign):
            names.update(*(_assigned_names(t) for t in node.targets))
        elif isinstance(node, (ast.AugAssign, ast.NamedExpr)) or (isinstance(node, ast.AnnAssign) and node.value):
            names.update(_assigned_names(node.target))
        nodes += [child for child in ast.iter_child_nodes(node)
                  if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))]
    return names


def _check_declared(path: Path, notebook: Path, keys: list[str]) -> None:
    """ConfigError for a key the notebook's parameters cell does not assign: papermill only logs "Passed unknown
    parameter", so a typo (gate_ordr) ran every run on the notebook's default. ``seed`` and ``output_dir`` too,
    which the sweep passes to every run: a notebook without them would run every seed alike."""
    try:
        declared = declared_parameters(notebook)
    except SyntaxError as exc:
        raise ConfigError(f"{path}: {notebook}'s parameters cell is not Python ({exc.msg}, line {exc.lineno}), "
                          "so its parameter names cannot be read; fix the cell") from None
    if declared is None:
        raise ConfigError(f"{path}: {notebook} has no Python cell tagged 'parameters', so the sweep cannot set "
                          "anything in it; tag the cell that assigns the notebook's parameters")
    if unknown := [key for key in [*SET_BY_SWEEP, *keys] if key not in declared]:
        raise ConfigError(f"{path}: {unknown} {'is' if len(unknown) == 1 else 'are'} not parameter(s) of {notebook}; "
                          f"its parameters cell assigns {sorted(declared)}")


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep spec; ConfigError naming the file and the key for anything it refuses."""
    path = Path(path)
    data = read_yaml_mapping(path, "sweep spec")
    allowed = {"name", "notebook", "params", "grid", "seeds", "kernel", "timeout_s"}
    unknown = sorted(set(data) - allowed, key=str)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    for key in ("name", "notebook"):
        if data.get(key) in (None, ""):
            raise ConfigError(f"{path}: '{key}' is required")
    name = check_name(data["name"], str(path))
    params, grid = _mapping(path, data, "params"), _mapping(path, data, "grid")
    _check_parameter_names(path, "params", list(params))
    if bad := next((k for k, v in params.items() if not _json_value(v)), None):
        raise ConfigError(f"{path}: params {bad}: {params[bad]!r} is not a string, number, true/false, null, or a "
                          "list or mapping of those (quote a date to pass it as text)")
    _check_grid(path, grid, params)
    seeds = _check_seeds(path, data.get("seeds"))
    kernel, timeout = data.get("kernel"), data.get("timeout_s")
    if kernel is not None and not isinstance(kernel, str):
        raise ConfigError(f"{path}: kernel must be one kernel name (e.g. so8t), got {kernel!r}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not 0 < timeout < math.inf):
        raise ConfigError(f"{path}: timeout_s must be a number of seconds above 0 per cell, got {timeout!r}")
    notebook = _check_notebook(path, data["notebook"])
    _check_declared(path, notebook, [*params, *grid])
    spec = SweepSpec(name, notebook, dict(params), grid, seeds, kernel, timeout)
    spec.runs()  # refuses two parameter sets sharing a run name before anything runs
    return spec
