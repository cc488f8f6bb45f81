"""Step 3: train further from the serving checkpoint, on the corpus train split plus the new rows.

The run is the trainer's own (two optimizers, early stopping on val, autosave, ``--resume``), with
three differences set here: the model config is the serving checkpoint's (so the adapters fit), the
data folder is the one ``preprocess`` wrote, and the model starts from the serving checkpoint rather
than from a fresh initialisation: its base weights when they travel with it (the tiny preset's
random base), then its LoRA, gates and SafetyHeadB (with its standardiser and temperature), loaded
after the trainer is built and before its first step. (The trainer builds its model from the config;
``ContinuedTrainer`` is the seam until it can be given a checkpoint to start from.) Afterwards the
temperature is fitted on val again, as for any run.
"""

from __future__ import annotations

import gc
import hashlib
import json
from pathlib import Path

import torch
import yaml

from ...core.checkpoint import CheckpointError, checkpoint_version, resolve_checkpoint, verify_manifest
from ...core.config import ConfigError, SO8TConfig, config_from_dict, load_config
from ...core.io import atomic_write_text, sha256_file
from ...core.schema import (
    ADAPTER_FILE,
    BASE_DIR,
    MANIFEST_FILE,
    MODEL_CONFIG_FILE,
    RUN_CONFIG_FILE,
    is_adapter_key,
)
from ...data.training_split import new_train_ids
from ...model.so8t import SO8TModel
from ...train.collate import SafetyCollator
from ...train.optim import rng_state, set_rng_state
from ...train.state_cache import FrozenStates
from ...train.trainer import Trainer
from ..pipeline import calibrate_run

ORIGIN_FILE = "retrained_from.json"


def _saved_base_digest(folder: Path) -> str:
    """sha256 over the manifest entries of a checkpoint's saved base: it names that base, where the tiny
    preset's config (seed and shape) only names the base a fresh initialisation would draw."""
    files = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))["files"]
    entries = {name: entry["sha256"] for name, entry in files.items() if name.startswith(f"{BASE_DIR}/")}
    return "saved-base:" + hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def serving_model_config(serving: str | Path) -> dict:
    """The model section a checkpoint was built with (its so8t_model.yaml)."""
    folder = resolve_checkpoint(serving)
    path = folder / MODEL_CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{serving}: not an SO8T checkpoint (no {MODEL_CONFIG_FILE})")
    return yaml.safe_load(path.read_text(encoding="utf-8"))["model"]


def serving_training_config(serving: str | Path) -> Path:
    """The training config the serving run was made with (the ``config.yaml`` its trainer wrote beside
    ``best/``): retraining repeats that recipe unless told otherwise."""
    folder = resolve_checkpoint(serving)
    for candidate in (folder / RUN_CONFIG_FILE, folder.parent / RUN_CONFIG_FILE):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{serving}: no {RUN_CONFIG_FILE} of the run that made it; name the training config to "
                      "retrain with (--config, e.g. configs/tiny-training.yaml for the tiny preset)")


def retrain_config(base_config: str | Path | None, serving: str | Path, data_dir: str | Path,
                   output_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SO8TConfig:
    """``base_config``'s loss and training sections (with ``overrides``; None: the serving run's own),
    the serving checkpoint's model, the new data folder and run folder; no head warm start (the head
    comes from the checkpoint)."""
    base_config = base_config or serving_training_config(serving)
    config = load_config(base_config, [*overrides, f"training.data_dir={data_dir}",
                                       f"training.output_dir={output_dir}", "training.head_warm_start=false"])
    return config_from_dict({**config.to_dict(), "model": serving_model_config(serving)},
                            source=f"{base_config} + {serving}")


class ContinuedTrainer(Trainer):
    """The trainer, starting from a checkpoint's weights instead of a fresh initialisation."""

    def __init__(self, config: SO8TConfig, serving: str | Path, resume: bool = False, on_log=None) -> None:
        super().__init__(config, resume=resume, on_log=on_log)
        try:
            folder = resolve_checkpoint(serving)
            verify_manifest(folder)
            self.serving = folder
            # loading draws from the RNGs, which a resume has just restored from last/: the steps would draw other
            # dropout masks and sampled positions than the uninterrupted run's, so they are put back as they were
            rng = rng_state()
            try:
                self._start_from(folder, resume)
            finally:
                set_rng_state(rng)
        except BaseException:
            self.release_lock()  # the run folder's lock, taken by the trainer
            raise

    def _start_from(self, folder: Path, resume: bool) -> None:
        """The serving checkpoint's base (when it travels with it) and, unless resuming, its adapters."""
        with torch.no_grad():
            if (folder / BASE_DIR).is_dir():  # a random base travels with its checkpoint: take it from there
                loaded = SO8TModel.load(folder)
                base = {k: v for k, v in loaded.state_dict().items() if not is_adapter_key(k)}
                missing, unexpected = self.model.load_state_dict(base, strict=False)
                if unexpected or [k for k in missing if not is_adapter_key(k)]:
                    raise CheckpointError(f"{folder}: its base does not fit this model config")
                self._adopt_tokenizer(folder, loaded.tokenizer)
                self.model.base_fingerprint = _saved_base_digest(folder)  # the frozen-state cache key: this base
                del loaded
            if not resume:  # a resumed run has its own adapters from last/
                self.model.load_adapter(folder / ADAPTER_FILE)
        if self.frozen is not None:  # the cached lower-layer states must come from the loaded weights
            self.frozen = FrozenStates.build(self.model, self.split, self.train_rows + self.val_rows, self.collate,
                                             self.tcfg.eval_batch_size, progress=self.main)

    def _adopt_tokenizer(self, folder: Path, tokenizer) -> None:
        """The tiny preset's tokenizer is built from the corpus train split, so a serving checkpoint made
        before the corpus changed has another one; its embeddings only fit its own, so training goes on
        with the checkpoint's tokenizer (saved with the new checkpoint), provided its special tokens are
        where the model config put them."""
        if tokenizer.get_vocab() == self.model.tokenizer.get_vocab():
            return
        special = ("pad_token_id", "bos_token_id", "eos_token_id")
        if [getattr(tokenizer, k) for k in special] != [getattr(self.model.tokenizer, k) for k in special] or \
                len(tokenizer) > self.model.causal_lm.get_input_embeddings().num_embeddings:
            raise CheckpointError(f"{folder}: its tokenizer's special tokens or size do not fit the model this config "
                                  "builds; retrain from scratch instead")
        self.model.tokenizer = tokenizer
        self.collate = SafetyCollator(tokenizer, self.tcfg.max_length, self.model.system_prompt,
                                      self.tcfg.max_target_tokens)


def serving_origin(config: SO8TConfig, serving: str | Path) -> dict:
    """The serving half of ``run_origin``, which needs no data: ``run_flow`` checks it before extracting."""
    folder = resolve_checkpoint(serving)
    return {"serving": str(folder), "serving_version": checkpoint_version(folder, config.model.name)}


def run_origin(config: SO8TConfig, serving: str | Path, data_dir: str | Path | None = None) -> dict:
    """What a retraining run starts from: the serving model's version and the data files' sha256 (those in
    ``data_dir`` when given, e.g. a staged folder about to replace the config's)."""
    data = Path(data_dir or config.training.data_dir)
    return {**serving_origin(config, serving), "data_dir": str(config.training.data_dir),
            "data_sha256": {p.name: sha256_file(p) for p in sorted(data.glob("*.jsonl"))}}


def train_rows(trainer: Trainer, config: SO8TConfig) -> dict:
    """What the run trains on: the new rows (every one kept, ``training_tables``) and the corpus rows sampled
    beside them, under ``train_max_rows``."""
    new = new_train_ids(config.training.data_dir)
    kept = sum(row["id"] in new for row in trainer.train_rows)
    return {"new": kept, "corpus": len(trainer.train_rows) - kept, "train_max_rows": config.training.train_max_rows}


def check_same_origin(run_dir: Path, origin: dict) -> None:
    """A run is continued only from the serving model and data it started from: a folder left by last month's
    run would otherwise be "resumed" with nothing to do and handed on as this month's model."""
    path = run_dir / ORIGIN_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{run_dir} holds a run, but {ORIGIN_FILE} cannot be read ({type(exc).__name__}), so "
                              "what it was trained from is unknown: retrain into a new folder") from None
    changed = [key for key in ("serving_version", "data_sha256") if key in origin and
               (not isinstance(saved, dict) or saved.get(key) != origin[key])]
    if changed:
        was = saved.get("serving_version") if isinstance(saved, dict) else None
        raise CheckpointError(f"{run_dir} holds a run trained from {was} on other data or from another model "
                              f"({', '.join(changed)} differ from this run's): retrain into a new folder (another "
                              "--work or --out); to continue that run, give it the model and data it started from "
                              "(--resume, or retrain run again on the same logs); or delete it to start it again")


def train_from_serving(config: SO8TConfig, serving: str | Path, resume: bool = False, on_log=None) -> Path:
    """Train ``config`` from ``serving``, then fit the temperature on val; returns the run folder (which
    also records where it started from, written before the first step and checked by a resume, and how many new
    and corpus rows it trains on)."""
    origin, run_dir = run_origin(config, serving), Path(config.training.output_dir)
    if resume:
        check_same_origin(run_dir, origin)
    trainer = ContinuedTrainer(config, serving, resume=resume, on_log=on_log)
    if trainer.main and not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        origin["train_rows"] = train_rows(trainer, config)
        atomic_write_text(run_dir / ORIGIN_FILE, json.dumps(origin, indent=1))
    run_dir, is_main = trainer.run(), trainer.main
    del trainer
    gc.collect()
    if is_main:
        calibrate_run(run_dir, config)
    return run_dir
