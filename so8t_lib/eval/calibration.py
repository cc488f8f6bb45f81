"""Temperature scaling of SafetyHeadB: fit T on held-out rows so its probabilities mean what they say.

The runtime's threshold rule reads those probabilities, so a calibrated head escalates when it is
unsure instead of when it happens to be sharp. The pipeline calls this after training
(``training.calibrate_temperature``); ``so8t evaluate --calibrate`` refits it on any data.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from ..core.checkpoint import atomic_folder, resolve_checkpoint
from ..core.schema import ADAPTER_FILE, CHECKPOINT_FORMAT, LABELS, MANIFEST_FILE, NOT_ALLOW
from ..core.temperature import usable_temperature
from ..data.benchmarks import load_any
from ..data.tables import stratified_sample
from ..model.prompts import prompt_lengths
from ..model.so8t import SO8TModel
from .report import expected_calibration_error
from .served import ModelInputs, model_inputs

TEMPERATURE_RANGE = (0.25, 10.0)
# rows of each gold class a temperature is fitted on at least: on one class alone (SimpleSafetyTests is all
# REFUSE, XSTest all ALLOW once NOT_ALLOW is dropped) the NLL falls as T sharpens toward that class, so T runs to
# its bound and the checkpoint is ruined for every other class (test ECE 0.044 -> 0.437)
MIN_ROWS_PER_CLASS = 2


class CalibrationDataError(ValueError):
    """Rows that cannot calibrate a three-way head: a gold class is missing or too rare. Raised before any model
    loads or file changes."""


def check_calibration_rows(table: pd.DataFrame, name: str | Path = "the calibration data") -> dict[str, int]:
    """The rows per gold class a fit on ``table`` would use (NOT_ALLOW and invalid input left out, as in
    ``calibrate``); CalibrationDataError unless each class has ``MIN_ROWS_PER_CLASS``."""
    kept = table[table["label"] != NOT_ALLOW]
    shown = kept["label"].iloc[model_inputs(kept).positions]
    counts = {label: int((shown == label).sum()) for label in LABELS}
    if min(counts.values()) < MIN_ROWS_PER_CLASS:
        raise CalibrationDataError(
            f"{name}: a temperature needs at least {MIN_ROWS_PER_CLASS} rows of each gold class the model is shown, "
            f"and these have {', '.join(f'{k} {v}' for k, v in counts.items())} (NOT_ALLOW rows and invalid input "
            "left out): fitted on fewer classes it only sharpens the head toward them; nothing was fitted or "
            "stored. Calibrate on the val split (--calibration-data val) or a file with all three classes")
    return counts


def fit_temperature(logits: np.ndarray, gold_idx: np.ndarray, max_iter: int = 200) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T) on labelled rows.

    Optimised over log T (LBFGS), so T stays positive; a model that is already calibrated
    gets T close to 1, an overconfident one T > 1.
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(gold_idx), dtype=torch.long)
    if z.ndim != 2 or y.shape != (z.shape[0],) or z.shape[0] == 0:
        raise ValueError(f"need logits (N, K) and labels (N,) with N > 0, got {tuple(z.shape)} and {tuple(y.shape)}")
    broken = int((~torch.isfinite(z)).any(dim=1).sum())
    if broken:  # one NaN or inf logit makes the NLL, and so the fitted temperature, NaN
        raise ValueError(f"{broken} of {z.shape[0]} rows have logits that are not finite (NaN or inf): no temperature "
                         "can be fitted on them; the checkpoint is broken on those rows (so8t evaluate counts them as "
                         "non_finite_rows), so fix or retrain it before calibrating")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    # When every row is already right the NLL keeps falling as T -> 0; bound T so a small, easy val
    # split cannot make the head 20x sharper (and the threshold rule unable to escalate).
    return checked_temperature(float(log_t.detach().clamp(math.log(TEMPERATURE_RANGE[0]),
                                                          math.log(TEMPERATURE_RANGE[1])).exp()))


def checked_temperature(temperature: float) -> float:
    """``temperature`` when it is a finite number > 0; else ValueError. A NaN temperature stored in a checkpoint
    makes every probability NaN, and the runtime would then escalate every request."""
    if not usable_temperature(temperature):
        raise ValueError(f"the fitted temperature is {temperature}, not a finite number > 0 in float32's range; "
                         "nothing was stored. The "
                         "logits it was fitted on overflow or the optimiser diverged: check the checkpoint's "
                         "decisions on the calibration rows (so8t evaluate --data ...)")
    return temperature


def _within_context(model: SO8TModel, inputs: ModelInputs) -> ModelInputs:
    """``inputs`` without the rows longer than the model's context: the model refuses them (``PromptTooLong``) and
    the runtime escalates them whatever the temperature, so they are left out of the fit as invalid input is."""
    limit = getattr(model, "context_length", None)  # a stand-in model in a test may have none
    if limit is None or not inputs.requests:
        return inputs
    lengths = prompt_lengths(model.tokenizer, [model.format_prompt(r, c) for r, c in zip(inputs.requests, inputs.contexts)])
    if max(lengths) <= limit:
        return inputs
    kept = [i for i, n in enumerate(lengths) if n <= limit]
    too_long = {inputs.positions[i]: f"longer than the model's context of {limit} tokens ({n})"
                for i, n in enumerate(lengths) if n > limit}
    return ModelInputs([inputs.requests[i] for i in kept], [inputs.contexts[i] for i in kept],
                       [inputs.positions[i] for i in kept], {**inputs.invalid, **too_long})


def calibrate(model: SO8TModel, table: pd.DataFrame, batch_size: int = 32, progress: bool = True) -> dict:
    """Fit SafetyHeadB's temperature on ``table`` (the val split) and set it on the model. The model reads the
    runtime's text (``served.model_inputs``); a row the runtime refuses as invalid input (or longer than the
    model's context) is left out of the fit, since the runtime never shows it to the model (its answer, ESCALATE,
    does not depend on the temperature)."""
    table = table[table["label"] != NOT_ALLOW]
    inputs = _within_context(model, model_inputs(table))
    gold = np.array([LABELS.index(label) for label in table["label"].iloc[inputs.positions]], dtype=np.int64)
    if not inputs.positions:
        raise ValueError(f"none of the {len(table)} labelled rows can be shown to the model: the runtime refuses "
                         f"each as invalid input ({next(iter(inputs.invalid.values()), 'no rows')}); calibrate on "
                         "other rows")
    logits = model.decide(inputs.requests, inputs.contexts, batch_size=batch_size,
                          progress=progress, return_logits=True).numpy().astype(np.float64)
    # "before" is the model as it decides now, at its current temperature (a trained run is calibrated already)
    probs = torch.softmax(torch.as_tensor(logits) / float(model.safety_head.temperature), dim=-1).numpy()
    temperature = checked_temperature(fit_temperature(logits, gold))  # before it reaches the model or a file
    with torch.no_grad():
        model.safety_head.temperature.fill_(temperature)
    scaled = torch.softmax(torch.as_tensor(logits) / temperature, dim=-1).numpy()
    return {"temperature": temperature, "rows": len(inputs.positions), "invalid_input_rows": len(inputs.invalid),
            "ece_before": expected_calibration_error(probs, gold),
            "ece_after": expected_calibration_error(scaled, gold)}


def calibrate_checkpoint(path: str | Path, data: str | Path = "val", batch_size: int = 32,
                         progress: bool = True, max_rows: int | None = None, seed: int = 0,
                         table: pd.DataFrame | None = None) -> dict:
    """Fit the temperature on ``data`` (a stratified sample of ``max_rows`` of it, drawn with ``seed``) and store
    it in the checkpoint: only the temperature entry of ``adapter.safetensors`` changes, in a copy of the folder
    with its own manifest that is swapped in whole; every other file (a training run's trainer_state.pt too) stays.
    ``table`` is ``data`` already loaded (the CLI loads every table before it changes anything). The rows must hold
    every gold class (``check_calibration_rows``). ``ece_before``/``ece_after`` are measured on the rows fitted on:
    they show the fit, not a held-out gain."""
    folder = resolve_checkpoint(path)
    table = load_any(data) if table is None else table
    table = stratified_sample(table, max_rows, seed)
    check_calibration_rows(table, data)  # before the model loads or the adapter changes
    model = SO8TModel.load(folder)
    result = calibrate(model, table, batch_size, progress)
    state = load_file(str(folder / ADAPTER_FILE))
    state["safety_head.temperature"] = torch.tensor(result["temperature"], dtype=state["safety_head.temperature"].dtype)
    # a copy of the checkpoint with the new adapter and its own manifest, swapped in whole: a kill at any moment
    # leaves the old checkpoint or the new one, never an adapter its manifest does not describe
    with atomic_folder(folder, owned=True) as staged:
        # (an adapter.safetensors.tmp left by a kill under an earlier version is not carried over)
        shutil.copytree(folder, staged, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(MANIFEST_FILE, f"{ADAPTER_FILE}.tmp"))
        save_file(state, str(staged / ADAPTER_FILE), metadata={"format": str(CHECKPOINT_FORMAT)})
    return {**result, "checkpoint": str(folder), "data": str(data)}
