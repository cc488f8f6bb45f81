"""Every command the documentation quotes exists: ``so8t`` subcommands, ``python -m`` modules, make targets,
and the configs, specs, notebooks, scripts and source files it names; every local link resolves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted({*ROOT.glob("*.md"), *ROOT.glob("docs/*.md"), *ROOT.glob("*/README.md"), *ROOT.glob("data/*/README.md")})
FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)
INLINE = re.compile(r"`([^`\n]+)`")
SO8T_COMMAND = re.compile(r"(?:^|[\s|;(/])so8t ([a-z][a-z-]*)")
PYTHON_M = re.compile(r"-m (so8t_lib[\w.]*)")
MAKE = re.compile(r"(?:^|[\s;(])make ([a-z][\w-]*)")
PATHS = re.compile(r"(?<![\w./-])((?:configs|experiments|notebooks|benchmarks|so8t_lib|tests|deploy)/[\w./-]+"
                   r"\.(?:yaml|ipynb|py))")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def code_of(text: str) -> list[str]:
    """Code blocks and inline code spans of a markdown text."""
    return FENCE.findall(text) + INLINE.findall(FENCE.sub("", text))


def headers() -> list[tuple[Path, str]]:
    """The comment headers of configs and sweep specs, and the markdown cells of notebooks: docs too."""
    out = [(p, "\n".join(line[1:] for line in p.read_text(encoding="utf-8").splitlines() if line.startswith("#  ")))
           for p in sorted([*ROOT.glob("configs/*.yaml"), *ROOT.glob("experiments/*.yaml")])]  # indented: commands
    for nb in sorted(ROOT.glob("notebooks/*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        markdown = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        out.append((nb, "\n".join(code_of(markdown))))
    return out


def sources() -> list[tuple[Path, list[str]]]:
    return [(p, code_of(p.read_text(encoding="utf-8"))) for p in DOCS] + [(p, [text]) for p, text in headers()]


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M))


def test_the_docs_quote_commands_at_all():
    quoted = [m for _, chunks in sources() for chunk in chunks for m in SO8T_COMMAND.findall(chunk)]
    assert {"train", "evaluate", "export", "runtime", "demo"} <= set(quoted)


def test_every_quoted_command_and_file_exists():
    from so8t_lib.cli import COMMANDS

    targets = make_targets()
    problems = []
    for path, chunks in sources():
        where = path.relative_to(ROOT)
        for chunk in chunks:
            problems += [f"{where}: so8t {c} is no command" for c in SO8T_COMMAND.findall(chunk) if c not in COMMANDS]
            for module in PYTHON_M.findall(chunk):
                folder = ROOT / module.replace(".", "/")
                if not (folder / "__main__.py").is_file():
                    problems.append(f"{where}: python -m {module} has no __main__")
            problems += [f"{where}: make {t} is no target" for t in MAKE.findall(chunk) if t not in targets]
            problems += [f"{where}: {p} does not exist" for p in PATHS.findall(chunk)
                         if "<" not in p and "*" not in p and not (ROOT / p).exists()
                         and not p.startswith(("experiments/runs/", "experiments/quant/", "experiments/eval/0"))]
    assert problems == []



EMPTY = "\0empty\0"  # a quoted empty argument ("" or '') while shlex reads the line


class _Parsed(Exception):
    """Raised once a command's arguments have parsed: the command itself must not run."""


def fenced_commands() -> list[tuple[str, str, list[str]]]:
    """(doc, program, argv) of each whole ``so8t <command>`` or ``python benchmarks/<script>.py`` line in the fenced
    blocks of the markdown docs, read as a shell reads it (a backslash continues a line; comments, pipes,
    redirections and ``)`` end a command); ``[--flag]`` reads as an optional flag, and a line with a
    ``<placeholder>`` or ``...`` is left out."""
    import shlex

    found = []
    for doc in DOCS:
        for block in FENCE.findall(doc.read_text(encoding="utf-8")):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                if not re.search(r"so8t |benchmarks/", line) or re.search(r"<\w|\.\.\.", line):
                    continue
                line = re.sub(r"(?<=\s)(''|\"\")(?=\s|$)", EMPTY, re.sub(r"\[(--[\w-]+)\]", r"\1", line))
                lexer = shlex.shlex(line, posix=True, punctuation_chars=True)  # it drops '' itself: EMPTY stands in
                lexer.whitespace_split = True
                tokens = ["" if token == EMPTY else token for token in lexer]
                for at, (token, program) in enumerate(zip(tokens, tokens[1:])):
                    if token == "so8t":
                        program = f"so8t {program}"
                    elif not (token == "python" and re.fullmatch(r"benchmarks/\w+\.py", program)):
                        continue
                    argv = []
                    for arg in tokens[at + 2:]:
                        if arg and set(arg) <= set(lexer.punctuation_chars):
                            argv = argv[:-1] if argv and arg.startswith(">") and argv[-1].isdigit() else argv
                            break
                        argv.append(arg)
                    found.append((str(doc.relative_to(ROOT)), program, argv))
    return found


def command_main(program: str):
    """The function a quoted program's command line runs: ``so8t``'s table entry, or a benchmark's ``main``."""
    import importlib
    import importlib.util
    import inspect
    import sys

    from so8t_lib.cli import COMMANDS

    if program.startswith("so8t "):
        command = COMMANDS[program.split()[1]]
        return getattr(importlib.import_module(f"so8t_lib.cli.{command.module}"), command.function)
    name = "docs_quoted_" + Path(program).stem
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / program)
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    main = sys.modules[name].main
    if inspect.signature(main).parameters:
        return main

    def main_of_sys_argv(argv):
        sys.argv = [program, *argv]
        return main()
    return main_of_sys_argv


def test_every_fenced_command_parses(monkeypatch):
    """Each ``so8t`` and benchmark command the docs show in full is accepted by its parser (an option renamed or
    dropped in the code, a required argument left out of the docs): checked by parsing, never by running it."""
    import argparse
    import contextlib
    import io
    import sys

    from so8t_lib.cli import COMMANDS

    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        parse(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the scripts import their neighbours, as python does
    commands = [c for c in fenced_commands() if not c[1].startswith("so8t ") or c[1].split()[1] in COMMANDS]
    problems = []
    for doc, program, argv in commands:  # an unknown so8t command: test_every_quoted_command_and_file_exists
        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
                command_main(program)(argv)
        except _Parsed:
            continue
        except SystemExit as stop:
            if stop.code in (0, None):
                continue  # --help
            problems.append(f"{doc}: {program} {' '.join(argv)}: {errors.getvalue().strip().splitlines()[-1:]}")
        else:
            problems.append(f"{doc}: {program} {' '.join(argv)} ran without parsing its arguments")
    assert len(commands) > 80 and problems == []  # the reader found the commands at all


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_local_links_resolve(doc):
    text = doc.read_text(encoding="utf-8")
    broken = [link for link in LINK.findall(text) if not link.startswith(("http://", "https://", "mailto:"))
              and not (doc.parent / link).exists()]
    assert broken == []


def test_the_readme_stays_a_front_page():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 200


def test_the_makefile_builds_the_llama_binding_pyproject_names():
    """make installs llama-cpp-python on its own line (to build it without the AMX kernels): the same spec."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    spec = next(d for d in extras["gguf"] if d.startswith("llama-cpp-python"))
    assert re.search(rf"^LLAMA_CPP := {re.escape(spec)}$", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M)


@pytest.mark.parametrize("system_info, rebuilds", [(b"AVX2 = 1 | AMX_INT8 = 1 | ", True),
                                                    (b"AVX2 = 1 | AMX_INT8 = 0 | ", False), (None, True)])
def test_the_makefile_rebuilds_a_llama_binding_with_the_amx_kernels_or_none(tmp_path, system_info, rebuilds):
    """make's LLAMA_OK check, run as make runs it, against a stand-in binding: an AMX build (which crashed in
    ggml_backend_amx_mul_mat) or a missing one is rebuilt, a plain one is kept."""
    import subprocess
    import sys

    check = re.search(r"^LLAMA_OK := (.+)$", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M).group(1)
    stand_in = (f"def llama_print_system_info():\n    return {system_info!r}\n" if system_info is not None
                else "raise ImportError('llama-cpp-python is not installed')\n")  # shadows the installed one
    (tmp_path / "llama_cpp.py").write_text(stand_in)
    done = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)},
                          capture_output=True, timeout=60)
    assert (done.returncode != 0) == rebuilds, done.stderr
