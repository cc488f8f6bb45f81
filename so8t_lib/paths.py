"""Where the project lives: every relative path in configs, specs and notebooks is taken from here."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


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
