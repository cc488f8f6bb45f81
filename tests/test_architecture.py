"""The package's shape: layers import only downwards, no import cycles, small modules, the vocabulary
declared once, and one command line whose every entry works.

The layer rules (README "Architecture"):
- core imports nothing else from so8t_lib; data imports no model;
- model imports nothing from train, eval, serve or workbench;
- train and eval do not import each other; serve imports nothing from train, eval or workbench;
- only the CLI (and the ``__main__`` shims that call it) sits above the workbench.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "so8t_lib"
LAYERS = ("core", "data", "model", "train", "export", "serve", "eval", "workbench", "cli")
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "data": {"core", "data"},
    "model": {"core", "data", "model"},
    "train": {"core", "data", "model", "train"},
    "export": {"core", "data", "model", "export"},
    "serve": {"core", "data", "model", "export", "serve"},
    "eval": {"core", "data", "model", "export", "serve", "eval"},
    "workbench": set(LAYERS) - {"cli"},
    "cli": set(LAYERS),
    "": {"core", "cli"},  # so8t_lib/__init__.py re-exports the config API; __main__ runs the CLI
}
MAX_LINES = 400


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else ""


def imported_modules(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
    """Every so8t_lib module a source file imports, at module level or inside functions (a lazy import is
    still a dependency). ``from pkg import name`` counts as importing ``pkg.name`` when that is a module."""
    package = module if is_package else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("so8t_lib")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("so8t_lib"):
                continue
            subs = {f"{target}.{alias.name}" for alias in node.names} & known
            found |= subs or {target}
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    known = set(files)
    return {name: imported_modules(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", known)
            for name, path in files.items()}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        if module.endswith("__main__"):
            continue  # entry shims: `python -m so8t_lib.train` calls the CLI
        for target in sorted(targets):
            if layer_of(target) not in ALLOWED[layer_of(module)]:
                problems.append(f"{module} imports {target} ({layer_of(module) or 'root'} may not import "
                                f"{layer_of(target) or 'root'})")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_layers_import_only_downwards():
    assert layer_violations(import_graph()) == []


def test_there_are_no_import_cycles():
    graph = {m: t for m, t in import_graph().items()}
    # a package's __init__ re-exporting its modules is not a cycle with them
    plain = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items()}
    assert cycles(plain) == []


def test_the_checker_catches_a_wrong_import_and_a_cycle(tmp_path):
    """The rule test must be able to fail: a model module that imports the trainer, and two modules that
    import each other."""
    root = tmp_path / "so8t_lib"
    for layer in ("model", "train", "data"):
        (root / layer).mkdir(parents=True)
        (root / layer / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "model" / "so8t.py").write_text("from ..train.trainer import Trainer\n")
    (root / "train" / "trainer.py").write_text("from ..model import so8t\n")
    (root / "data" / "a.py").write_text("from . import b\n")
    (root / "data" / "b.py").write_text("def f():\n    from .a import x\n")
    graph = import_graph(root)
    assert layer_violations(graph) == [
        "so8t_lib.model.so8t imports so8t_lib.train.trainer (model may not import train)"]
    assert ["so8t_lib.data.a", "so8t_lib.data.b"] in cycles(graph)


def test_no_module_is_over_the_size_limit():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, f"split these by job (at most {MAX_LINES} lines): {long}"


SCHEMA_NAMES = {"LABELS", "CATEGORIES", "ROUTE_CATEGORIES", "LANGS", "SPLITS", "NOT_ALLOW", "GOLD_LABELS",
                "HUMAN_DECISIONS"}
SCHEMA_FILES = {"adapter.safetensors", "so8t_model.yaml", "manifest.json", "trainer_state.pt", "metrics.jsonl",
                "test_metrics.json"}


def test_the_vocabulary_is_declared_once_in_core_schema():
    schema = PACKAGE / "core" / "schema.py"
    problems = []
    for path in PACKAGE.rglob("*.py"):
        if path == schema:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            problems += [f"{path.relative_to(PACKAGE)} assigns {t.id}" for t in targets
                         if isinstance(t, ast.Name) and t.id in SCHEMA_NAMES]
        problems += [f"{path.relative_to(PACKAGE)}:{n.lineno} spells {n.value!r}" for n in ast.walk(tree)
                     if isinstance(n, ast.Constant) and n.value in SCHEMA_FILES]
    assert problems == [], "import these from so8t_lib.core.schema"


def test_every_command_in_the_table_loads_and_answers_help(capsys):
    from so8t_lib import cli

    assert cli.main([]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in cli.COMMANDS)
    for name in cli.COMMANDS:
        with pytest.raises(SystemExit) as exc:
            cli.main([name, "--help"])
        assert exc.value.code == 0, name
        assert f"so8t {name}" in capsys.readouterr().out
    assert cli.main(["evalute"]) == 2 and "did you mean 'evaluate'" in capsys.readouterr().err


def test_python_dash_m_entry_points_name_existing_commands():
    from so8t_lib import cli

    for shim in PACKAGE.rglob("__main__.py"):
        source = shim.read_text(encoding="utf-8")
        if shim.parent == PACKAGE:
            assert "run()" in source
            continue
        command = source.split('run(["', 1)[1].split('"', 1)[0]
        assert command in cli.COMMANDS, f"{shim}: {command}"
