"""Prepare every notebook for nbval with tiny parameters (the second half of ``make test``).

    python tests/prepare_notebooks.py build/nbval
    python -m pytest --nbval-lax --nbval-current-env build/nbval

Each notebook in ``notebooks/`` gets its entry of ``tests/notebook_params.yaml`` injected by papermill
(prepare only: an ``injected-parameters`` cell after the ``parameters`` cell, nothing executed) and is
written to ``<out>/``. The fixtures the parameters name are built under ``<out>/work``: an untrained
tiny checkpoint, twelve test-split rows, a synthetic sweep summary for the ablation notebook, and a
log folder with decisions and reviewers' resolutions (tests/ops_fixtures.py) for the compliance report
and the retraining flow. ``{work}`` and ``{today}`` (UTC, the day the logs were written) are filled in.
These are fixtures for running the notebooks, not results: nothing here is quoted anywhere.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import papermill
import yaml

ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = ROOT / "tests" / "notebook_params.yaml"


def _fill(value, work: Path, today: str):
    if isinstance(value, str):
        return value.replace("{work}", str(work)).replace("{today}", today)
    if isinstance(value, list):
        return [_fill(v, work, today) for v in value]
    if isinstance(value, dict):
        return {key: _fill(v, work, today) for key, v in value.items()}
    return value


def build_fixtures(work: Path) -> None:
    from so8t_lib.core.config import ModelConfig
    from so8t_lib.data.tables import load_split
    from so8t_lib.model import SO8TModel
    from so8t_lib.model.tokenizer import tiny_tokenizer

    work.mkdir(parents=True)
    SO8TModel.from_config(ModelConfig(), tiny_tokenizer()).save(work / "ckpt")
    load_split("test").groupby("label").head(4).to_json(work / "rows.jsonl", orient="records", lines=True,
                                                        force_ascii=False)
    rng = np.random.default_rng(0)  # a made-up sweep: 4 gate orders x PET x 3 seeds
    rows = [{"run": f"{order}-{pet}-{seed}", "gate_order": order, "pet": pet, "seed": seed, "status": "ok",
             "metric.macro_f1": 0.55 + rng.normal(0, 0.03), "metric.safety_score": 0.6 + rng.normal(0, 0.03)}
            for order in ("safe_first", "cmd_first", "commuting", "none") for pet in (True, False) for seed in range(3)]
    pd.DataFrame(rows).to_csv(work / "summary.csv", index=False)
    from ops_fixtures import build_ops_logs  # tests/ is this script's folder

    build_ops_logs(work / "ops_logs")


def prepare(out: Path) -> list[Path]:
    params = yaml.safe_load(PARAMS_FILE.read_text(encoding="utf-8"))
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    missing = [nb.name for nb in notebooks if nb.name not in params]
    if missing:
        raise SystemExit(f"{PARAMS_FILE}: no tiny parameters for {missing}; every notebook runs under nbval")
    if out.exists():
        shutil.rmtree(out)  # generated, never edited by hand
    work = out / "work"
    build_fixtures(work)
    today = dt.datetime.now(dt.UTC).date().isoformat()
    written = []
    for nb in notebooks:
        target = out / nb.name
        papermill.execute_notebook(str(nb), str(target), parameters=_fill(params[nb.name], work, today),
                                   prepare_only=True, progress_bar=False)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default=str(ROOT / "build" / "nbval"))
    args = parser.parse_args(argv)
    written = prepare(Path(args.out).resolve())
    print(f"{len(written)} notebooks prepared in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
