"""What an evaluation of the val rows can score: the gold labels an early-stopping metric needs (checked before the
first step), and decisions that are not numbers (a diverged model, never scored nor saved as best/)."""

from __future__ import annotations

import numpy as np
import torch

from ..core.config import ConfigError
from ..core.metrics import headline_metrics
from ..core.schema import LABELS, REFUSE
from ..model.prompts import prompt_lengths

# the gold label an early-stopping metric cannot be measured without (macro_f1: any gold row). safety_score without
# gold REFUSE rows would select on the two precisions alone and never see the dangerous compliance it is there for
METRIC_NEEDS: dict[str, str] = {"refuse_recall": LABELS[REFUSE], "safety_score": LABELS[REFUSE]}


class TrainingDiverged(RuntimeError):
    """The loss, the gradient norm, the weights or the val decisions stopped being numbers. ``weights_usable``
    False: the weights as they are now must not be saved (an emergency save would replace the last good last/)."""

    def __init__(self, message: str, weights_usable: bool = True) -> None:
        super().__init__(message)
        self.weights_usable = weights_usable


def scored(rows: list[dict], probs: np.ndarray | torch.Tensor) -> dict:
    """The headline metrics of the argmax decisions; TrainingDiverged when a probability is not a finite number (the
    argmax of NaNs is ALLOW: a diverged model would score as one that allows everything, and could become best/)."""
    probs = np.asarray(probs.float().cpu() if isinstance(probs, torch.Tensor) else probs, dtype=np.float64)
    bad = int((~np.isfinite(probs).all(axis=-1)).sum())
    if bad:
        raise TrainingDiverged(f"{bad} of {len(rows)} val rows got decision probabilities that are not finite numbers: "
                               "the run diverged; lower the learning rates or check the loss weights and the data, "
                               "and start a new run (or resume from an earlier last/)", weights_usable=False)
    return headline_metrics([r["label"] for r in rows], [LABELS[i] for i in probs.argmax(-1).tolist()])


def check_prompts_fit(model, val_rows: list[dict], max_length: int, data_dir: str) -> None:
    """ConfigError, before the first step, when a training sequence (``training.max_length``) or a whole val prompt
    is longer than the base's positions: an evaluation decides each val prompt whole, and the model refuses one past
    its context (``PromptTooLong``), which would stop the run at its first evaluation, after the steps before it."""
    limit = model.context_length
    if limit is None:
        return
    if max_length > limit:
        raise ConfigError(f"training.max_length {max_length} is longer than this base's context of {limit} "
                          f"(max_position_embeddings): set training.max_length <= {limit}")
    lengths = prompt_lengths(model.tokenizer, [model.format_prompt(row["user_request"], row.get("context"))
                                               for row in val_rows])
    too_long = [(row["id"], n) for row, n in zip(val_rows, lengths) if n > limit]
    if too_long:
        raise ConfigError(f"{data_dir}: {len(too_long)} val row(s) are longer than this base's context of {limit} "
                          f"tokens (e.g. {too_long[0][0]!r}: {too_long[0][1]} tokens); the model cannot decide them "
                          "(the runtime escalates such a request): shorten or remove them from val.jsonl")


def check_metric_measurable(metric: str, val_rows: list[dict], data_dir: str) -> None:
    """ConfigError when the val rows lack the gold labels ``metric`` needs: found only at the first evaluation (after
    eval_every steps), such a run could neither finish nor be resumed under another metric."""
    golds = {row["label"] for row in val_rows}
    needed = METRIC_NEEDS.get(metric)
    if (needed is None and golds & set(LABELS)) or needed in golds:
        return
    need = f"gold {needed} rows" if needed else f"gold {'/'.join(LABELS)} rows"
    raise ConfigError(f"training.early_stopping.metric {metric} cannot be measured on the {len(val_rows)} val rows of "
                      f"{data_dir} (gold labels {sorted(golds)}): it needs {need}. Choose another metric "
                      "(training.early_stopping.metric=macro_f1), add such rows to val.jsonl, or raise "
                      "training.eval_max_rows (the val sample is stratified by label)")
