"""The operations manual's retraining flow (再学習フロー), its five steps end to end:

1. ``extract``: resolved escalations and reviewed audit records -> labelled rows (masked, traceable);
2. ``preprocess``: validated rows, families, a train/val split; the corpus test split untouched;
3. ``train``: further training from the serving checkpoint on corpus train + the new rows;
4. ``gate``: non-regression against the serving model on the test split and the public sets;
5. ``deploy``: GGUF export of the promoted model, the runtime in test mode on the new file.

    so8t retrain run --logs logs/ --serving checkpoints/so8t-tiny --work experiments/retrain/2026-11
    so8t retrain extract|preprocess|train|evaluate|deploy ...      (one step at a time)

``run_flow`` is ``so8t retrain run`` and notebook 08.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ...core.checkpoint import atomic_folder
from ...core.config import SO8TConfig
from ...core.io import atomic_write_text
from ...core.paths import CORPUS_DIR
from ...core.schema import LAST_DIR, MANIFEST_FILE
from ...core.staging import LockedFolder, remove_stale
from ...data.tables import DataError
from ...train.run_folder import check_fresh
from .deploy import GATE_FILE, NotPromoted, checked_gate, deploy
from .extract import ExtractError, check_extract_out, extract_rows, write_rows
from .gate import check_gate_settings, compare, load_tables, run_gate
from .preprocess import PreprocessError, check_out, preprocess
from .train import (
    ORIGIN_FILE,
    ContinuedTrainer,
    check_same_origin,
    retrain_config,
    run_origin,
    serving_origin,
    serving_training_config,
    train_from_serving,
)

__all__ = ["GATE_FILE", "ContinuedTrainer", "ExtractError", "NotPromoted", "PreprocessError", "check_extract_out", "checked_gate",
           "compare", "deploy", "extract_rows", "preprocess", "retrain_config", "run_flow", "run_gate",
           "serving_training_config", "train_from_serving", "write_rows"]
ROWS_FILE, DATA_DIR, RUN_DIR, DIST_DIR, SMOKE_DIR, SUMMARY_FILE = (
    "additional_training.jsonl", "data", "run", "dist", "smoke-logs", "retrain.json")
STAGE_PREFIX = ".retrain-staging-"


def run_flow(logs: list[str | Path], serving: str | Path, work: str | Path,
             base_config: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
             queue: str | Path | None = None, reviews: str | Path | None = None, key: str | None = None,
             hmac_key: str | None = None, public: tuple[str, ...] = ("xstest", "sst"),
             eval_max_rows: int | None = None, bootstrap: int = 1000, threshold: float | None = None,
             margin: float = 0.0, quants: list[str] | None = None, runtime_config: str | Path = "configs/basic.yaml",
             log=print) -> dict:
    """All five steps into ``work/``; stops after the gate when it refuses (``promote`` false, nothing
    exported). ``base_config`` None trains with the serving run's own config. Returns, and writes to
    ``work/retrain.json``, what each step did. A ``work/run`` that holds a run is continued only from the serving
    model and data it started from; otherwise the flow stops before it replaces anything in ``work/``.

    Extract and preprocess are staged in ``work/.retrain-staging-*`` and moved into place after that check. When
    preprocess rejects the rows, they stay where the operator can read them and the error names that file:
    ``work/additional_training.jsonl`` when no earlier run left rows or data in ``work/`` (as the step-by-step
    commands leave it), else the staging folder, so an earlier run's files are never replaced. Any other error
    (a full disk, no memory) ends the run as it is, its staging folder removed. Each run locks its staging folder
    (``core.staging``); the next run on the same ``work/`` removes (and logs) those no running run holds."""
    check_gate_settings(bootstrap, threshold, margin, eval_max_rows)  # before anything is trained
    load_tables(list(public))  # a misspelt public set stops here, not after training (one not installed: a note)
    work = Path(work)
    summary: dict = {"serving": str(serving), "work": str(work)}
    config = retrain_config(base_config, serving, work / DATA_DIR, work / RUN_DIR, overrides)
    resume = check_work(work, config, serving)  # before extract: a refusal leaves the folder as it was
    rows, summary["extract"] = extract_rows(logs, queue, reviews, key, hmac_key)
    log(f"1 extract: {len(rows)} rows {summary['extract']['labels']}, left out {summary['extract']['left_out']}")
    if not rows:
        raise ExtractError("no labelled rows: no resolved escalation with a gate label and no review in the logs "
                           f"(left out: {summary['extract']['left_out']}); give gate labels with so8t escalation "
                           "resolve --supersede --gate-label, or spot checks with --reviews; nothing to retrain on")
    work.mkdir(parents=True, exist_ok=True)
    clear_stale_stages(work, log)
    # extract and preprocess are staged, and replace work's only once the run may go on with them
    with LockedFolder(work, STAGE_PREFIX) as staged:
        stage = staged.path
        write_rows(rows, stage / ROWS_FILE)
        try:
            summary["preprocess"] = preprocess(stage / ROWS_FILE, stage / DATA_DIR, input_as=work / ROWS_FILE)
        except (PreprocessError, DataError) as exc:  # the rows were refused: the operator corrects them
            staged.keep = keep_rejected_rows(exc, stage, work, resume)
            raise
        if resume:
            check_same_origin(work / RUN_DIR, run_origin(config, serving, stage / DATA_DIR))
        check_out(work / DATA_DIR, work / ROWS_FILE, CORPUS_DIR)
        with atomic_folder(work / DATA_DIR) as tmp:
            for path in (stage / DATA_DIR).iterdir():
                if path.name != MANIFEST_FILE:  # atomic_folder writes its own
                    os.replace(path, tmp / path.name)
        os.replace(stage / ROWS_FILE, work / ROWS_FILE)
    log(f"2 preprocess: kept {summary['preprocess']['kept']} of {summary['preprocess']['rows']} "
        f"{summary['preprocess']['splits']}; test split untouched (sha256 {summary['preprocess']['test_sha256'][:12]})")
    run_dir = train_from_serving(config, serving, resume=resume)
    rows_used = json.loads((run_dir / ORIGIN_FILE).read_text(encoding="utf-8")).get("train_rows", {})
    summary["train"] = {"run": str(run_dir), "max_steps": config.training.max_steps, "train_rows": rows_used}
    log(f"3 train: {run_dir} (from {serving}, {config.training.max_steps} steps, on {rows_used.get('new', '?')} new "
        f"rows, all kept, and {rows_used.get('corpus', '?')} corpus rows)")
    gate = run_gate(str(serving), str(run_dir), [str(work / DATA_DIR / "test.jsonl"), *public], eval_max_rows,
                    bootstrap, threshold, margin)
    atomic_write_text(work / GATE_FILE, json.dumps(gate, indent=1, ensure_ascii=False))
    summary["gate"] = {"promote": gate["promote"], "refusals": gate["refusals"], "notes": gate["notes"],
                       "datasets": list(gate["datasets"])}
    log("4 gate: " + ("promote" if gate["promote"] else "REFUSED: " + "; ".join(gate["refusals"])))
    if gate["promote"]:
        summary["deploy"] = deploy(run_dir, work / GATE_FILE, work / DIST_DIR, quants, runtime_config,
                                   work / SMOKE_DIR)
        log(f"5 deploy: {summary['deploy']['runtime_file']} decided {len(summary['deploy']['decisions'])} requests "
            f"in test mode ({summary['deploy']['model_version']})")
    summary["promote"] = gate["promote"]
    atomic_write_text(work / SUMMARY_FILE, json.dumps(summary, indent=1, ensure_ascii=False))
    return summary


def check_work(work: Path, config: SO8TConfig, serving: str | Path) -> bool:
    """Whether ``work/run`` holds a run to continue; refused (nothing written) when it holds one from another
    serving model, a run that saved nothing to continue, or a data folder preprocess may not replace. Whether the
    new data matches the run's is checked once preprocess has staged it."""
    run_dir = work / RUN_DIR
    resume = (run_dir / LAST_DIR).is_dir()
    if resume:
        check_same_origin(run_dir, serving_origin(config, serving))
    else:
        check_fresh(run_dir)
    check_out(work / DATA_DIR, work / ROWS_FILE, CORPUS_DIR)
    return resume


def clear_stale_stages(work: Path, log=print) -> None:
    """Removes the staging folders (``work/.retrain-staging-*``, nothing else) that a run killed mid-step or
    stopped by preprocess left behind: each holds a copy of the masked rows that nothing else would clear. A
    folder another run still holds (locked) is left to it."""
    for old, gone in remove_stale(work, (STAGE_PREFIX,)):
        if gone:
            log(f"removed {old}: a staging folder an earlier retrain run left behind (killed or stopped by preprocess)")
        else:
            log(f"could not remove {old}, left by an earlier retrain run; check its permissions and remove it by hand")


def keep_rejected_rows(exc: Exception, stage: Path, work: Path, resume: bool) -> bool:
    """Keeps the rows preprocess rejected where the operator can read them and makes ``exc`` name that file, not
    the staging copy. They go to ``work/additional_training.jsonl`` only when no earlier run left rows, data or a
    run to continue there (a hard link, which never replaces a file); else they stay in the staging folder.
    Returns whether the staging folder must be kept."""
    staged, placed = stage / ROWS_FILE, work / ROWS_FILE
    why = f"{work} holds an earlier run's rows, data or run, left as they were"
    if not (resume or os.path.lexists(placed) or os.path.lexists(work / DATA_DIR)):
        try:
            os.link(staged, placed)
        except OSError as link_error:
            why = f"they could not be linked to {placed} ({link_error})"
        else:
            note = (f" (the extracted rows are kept in {placed}: correct them there and go on step by step with so8t "
                    f"retrain preprocess --input {placed} --out {work / DATA_DIR}, or correct the logs and run so8t "
                    "retrain run again)")
            _rename_in_message(exc, staged, placed, note)
            return False
    shutil.rmtree(stage / DATA_DIR, ignore_errors=True)
    note = (f" (the extracted rows are kept in {staged}, since {why}; copy the file out to inspect it: the next "
            "so8t retrain run on this --work removes that folder)")
    _rename_in_message(exc, staged, staged, note)
    return True


def _rename_in_message(exc: Exception, staged: Path, kept: Path, note: str) -> None:
    if exc.args and isinstance(exc.args[0], str) and type(exc).__str__ is BaseException.__str__:
        exc.args = (exc.args[0].replace(str(staged), str(kept)) + note, *exc.args[1:])
    else:
        exc.add_note(note.strip())
