"""Refitting the SafetyHeadB of quantized files so that their decisions follow the unquantized model's.

The fit itself is ``so8t_lib.export.head_refit``; this module runs what it needs: the teacher (the checkpoint
in fp32, or the model ``so8t demo`` scored) decides a stratified sample of training rows (the targets), each
file computes its own states for the same rows through llama.cpp, and the head that wins on the held-out rows
is written into the file with a report naming the teacher. Like temperature calibration (``calibration``), it
fits on data and only the fit's result travels with the model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.checkpoint import resolve_checkpoint
from ..core.paths import CORPUS_DIR
from ..data.tables import load_split, stratified_sample
from ..export.gguf_meta import REFIT_KEY, GGUFError
from ..export.head_refit import refit_head, write_head
from ..model.so8t import SO8TModel
from ..serve.backends import Decider
from ..serve.gguf_backend import GGUFBackend
from .served import model_inputs

REFIT_ROWS = 1000  # training rows a refitted head is fitted on (a quarter held out to choose its pull)


def refit_gguf(path: str | Path, requests: list[str], contexts: list[str | None], teacher: torch.Tensor,
               progress: bool = False, provenance: dict | None = None) -> dict:
    """Refit the head of the SO8T GGUF at ``path`` to ``teacher`` (the unquantized model's probabilities for
    these requests) from the file's own states; written into the file only where it helps, with ``provenance``
    (what the teacher was, which rows) added to the report. Returns the report."""
    if len(requests) != len(teacher) or len(requests) != len(contexts):
        raise ValueError(f"{len(requests)} requests, {len(contexts)} contexts, {len(teacher)} teacher rows")
    backend = GGUFBackend(path)
    if backend.meta.get(REFIT_KEY) is not None:
        raise GGUFError(f"{path}: its head was refitted already; export again to refit from the exported head")
    states = backend.decision_states(requests, contexts, progress)
    head = backend.safety_head
    del backend  # llama.cpp's handle on the file, before the file is replaced
    chosen, report = refit_head(head, states, teacher)
    report.update(provenance or {})
    if report["refitted"]:
        write_head(path, chosen, report)
    return report


def refit_rungs(checkpoint: str | Path, files: dict[str, Path], rows: int = REFIT_ROWS, progress: bool = True,
                teacher: Decider | None = None, data_dir: str | Path = CORPUS_DIR) -> dict[str, dict]:
    """Refit the head of each file (rung name -> path) to the checkpoint's decisions on ``rows`` stratified
    rows of ``data_dir``'s training split; prints one line per file and returns the reports. The teacher is
    the checkpoint loaded in fp32, or ``teacher`` when the caller holds the model already (``so8t demo``
    passes the model it scored the test split with, so the file follows the numbers it reported)."""
    missing = [str(p) for p in files.values() if not Path(p).is_file()]
    if missing:
        raise GGUFError(f"no such file(s) to refit: {', '.join(missing)}; export them first")
    who = "fp32" if teacher is None else "the scored model"
    model = teacher if teacher is not None else SO8TModel.load(resolve_checkpoint(checkpoint), load_in_4bit=False,
                                                                 dtype="float32")
    # the runtime's text, teacher and files alike: the refitted head is served on it (rows it refuses are left out)
    inputs = model_inputs(stratified_sample(load_split("train", data_dir), rows, seed=0))
    requests, contexts = inputs.requests, inputs.contexts
    target = model.decide(requests, contexts, progress=progress)
    provenance = {"teacher": "fp32 checkpoint" if teacher is None else f"scored model ({model.model_version})",
                  "data": str(Path(data_dir) / "train.jsonl"), "text": "as the runtime cleans it",
                  "invalid_input_rows_left_out": len(inputs.invalid)}
    del model
    reports = {}
    for quant, path in files.items():
        report = reports[quant] = refit_gguf(path, requests, contexts, target, progress, provenance)
        verdict = f"refitted (pull {report['pull']})" if report["refitted"] else "kept the exported head"
        print(f"{Path(path).name}: held-out agreement with {who} {report['holdout_agreement_exported_head']:.3f} "
              f"with the exported head, best refit {max(report['holdout_agreement_by_pull'].values()):.3f} "
              f"({report['rows']} training rows): {verdict}")
    return reports
