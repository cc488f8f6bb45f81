"""Where things live: the project root, the corpus, the public benchmarks, the cache.

Every default path in configs, specs and notebooks is taken from here, so a notebook run from
``notebooks/``, from a papermill ``cwd`` or as a copy elsewhere means the same files.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = PROJECT_ROOT / "data"
CORPUS_DIR = DATA_DIR / "so8t_safety"
SEEDS_DIR = DATA_DIR / "seeds"
CONFIGS_DIR = PROJECT_ROOT / "configs"
# The public prompt sets (evaluation only) sit in shared/ beside the repository.
BENCHMARKS_DIR = PROJECT_ROOT.parent / "shared" / "benchmarks"


CACHE_SETTING = "SO8T_CACHE"


def cache_root() -> Path:
    """Derived artifacts worth keeping between runs (tokenizers, converted base models): ``$SO8T_CACHE``,
    else ``~/.cache/so8t`` (also when it is set but empty). Its ``~`` is expanded (a .env file or a systemd unit
    passes it as written: a literal ./~ folder otherwise) and a relative path made absolute against the working
    folder of the call (set an absolute path where a process changes folder: notebooks enter the project root). NotADirectoryError (an OSError every command reports) when it, or the nearest of its
    folders that exists, is a file: each write under it would fail with a bare [Errno 20]."""
    setting = os.environ.get(CACHE_SETTING)  # empty means unset, not the cwd
    root = Path(os.path.abspath(Path(setting).expanduser() if setting else Path.home() / ".cache" / "so8t"))
    existing = next(path for path in (root, *root.parents) if path.exists())
    if not existing.is_dir():
        inside = "" if existing == root else f" ({root} would lie inside it)"
        raise NotADirectoryError(f"{existing} is a file, not a folder{inside}: point {CACHE_SETTING} at a folder "
                                 "(or unset it for ~/.cache/so8t)")
    return root


def enter_project_root() -> Path:
    """Make the project root the working directory and return it.

    A notebook may run from ``notebooks/``, from a papermill ``cwd``, or as a prepared copy in another
    folder (nbval runs each notebook from its own folder); its paths mean the same in all three.
    """
    if not (PROJECT_ROOT / "pyproject.toml").is_file():
        raise FileNotFoundError(
            f"{PROJECT_ROOT} is not the SO8T project folder: install the workbench editable "
            "(pip install -e . from the clone, as make does) so notebooks can find configs/ and data/")
    os.chdir(PROJECT_ROOT)
    return PROJECT_ROOT


def project_relative(path: str | Path) -> str:
    """``path`` relative to the project root when it lies inside it, else as given: result files are
    committed, and a machine's absolute paths mean nothing on the next one."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)
