"""Saving and loading SO8T checkpoints: what SO8TModel adds to a base model, in an atomic folder.

A checkpoint folder holds ``so8t_model.yaml`` (the model config and the base's fingerprint),
``adapter.safetensors`` (LoRA, gates, SafetyHeadB with its temperature), ``tokenizer/`` and, for the tiny
preset whose random base cannot be rebuilt, ``base/`` (a plain HF model folder). A pretrained base is not
copied: it is found again (``base.base_location``) and checked against the recorded fingerprint.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..core.checkpoint import (
    UNVERIFIED_MARK,
    CheckpointError,
    atomic_folder,
    checkpoint_version,
    resolve_checkpoint,
    verify_manifest,
)
from ..core.config import ModelConfig
from ..core.schema import (
    ADAPTER_FILE,
    BASE_DIR,
    CHECKPOINT_FORMAT,
    MODEL_CONFIG_FILE,
    SAFETY_HEAD_PREFIX,
    TOKENIZER_DIR,
    is_adapter_key,
)
from .base import base_location, dequantized_state_dict, load_pretrained_base, load_saved_base
from .checks import check_adapter_keys, check_temperature, unverifiable_base
from .pretrained import base_mismatch, base_record
from .tokenizer import load_tokenizer

TEMPERATURE_KEY = f"{SAFETY_HEAD_PREFIX}temperature"
UNSAVED = "nothing was written; calibrate the head (a positive temperature) before saving it"


class CheckpointMixin:
    """``save``/``load`` for SO8TModel (which provides ``config``, ``tokenizer``, ``causal_lm`` and
    ``adapter_state_dict``)."""

    def _base_state_for_saving(self) -> dict[str, torch.Tensor]:
        """Base weights under their plain HF names (wrapper segments removed), dequantized when
        the base is 4-bit, so ``base/`` always loads as a plain HF model."""
        state = {}
        for name, tensor in dequantized_state_dict(self.causal_lm).items():
            if is_adapter_key(name):
                continue
            plain = name.replace(".wrapped", "").replace(".base_layer", "").replace(".original_module", "")
            state[plain] = tensor
        return state

    def base_record(self) -> dict[str, str | None]:
        """The pretrained base's hashes as a checkpoint records them (None for a base saved in ``base/``)."""
        return {"base_fingerprint": self.base_fingerprint, "base_identity": self.base_identity}

    def set_base_record(self, record: dict) -> None:
        self.base_fingerprint = record.get("base_fingerprint")
        self.base_identity = record.get("base_identity")

    def write_files(self, folder: Path) -> None:
        """Write the checkpoint files into an existing folder (``save`` makes it atomic); a head whose temperature
        would rank its labels wrongly is refused before anything is written."""
        check_temperature(float(self.safety_head.temperature), folder, UNSAVED)
        meta = {"format": CHECKPOINT_FORMAT, "model": self.config.model_dump(mode="json"),
                **self.base_record()}
        (folder / MODEL_CONFIG_FILE).write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")
        save_file(self.adapter_state_dict(), str(folder / ADAPTER_FILE), metadata={"format": str(CHECKPOINT_FORMAT)})
        self.tokenizer.save_pretrained(str(folder / TOKENIZER_DIR))
        if self.config.preset == "tiny":
            lm = self.causal_lm
            plain_config = copy.deepcopy(lm.config)
            for attr in ("quantization_config", "_pre_quantization_dtype"):
                if hasattr(plain_config, attr):  # base/ holds full-precision weights
                    delattr(plain_config, attr)
            with torch.random.fork_rng(devices=[]):  # the throwaway init must not shift training's RNG
                plain = type(lm)(plain_config)
            plain.load_state_dict(self._base_state_for_saving(), strict=True)
            plain.save_pretrained(str(folder / BASE_DIR))

    def matches_saved_base(self, folder: Path) -> bool:
        """True when this model's base weights are exactly those saved in ``folder`` (a checkpoint's ``base/``)."""
        saved: dict[str, torch.Tensor] = {}
        for file in sorted(folder.glob("*.safetensors")):
            saved.update(load_file(str(file)))
        mine = self._base_state_for_saving()
        return bool(saved) and all(name in mine and mine[name].dtype == tensor.dtype
                                   and torch.equal(mine[name].detach().cpu(), tensor) for name, tensor in saved.items())

    @classmethod
    def for_resume(cls, folder: Path, config: ModelConfig):
        """The model a resume from ``folder`` continues, before its adapters are loaded. A tiny base takes the
        checkpoint's own tokenizer (rebuilt from today's corpus, the same text would encode to other ids): the base
        is rebuilt from its seed with it and kept when it equals ``base/`` (bit-exact, 4-bit included, whose save
        and load drift), else ``base/`` is loaded (a retraining run's base, or another library's initialisation).
        A pretrained base is found again and checked by fingerprint (``check_same_base``)."""
        if config.preset != "tiny" or not (folder / BASE_DIR).is_dir():
            return cls.from_config(config)
        try:
            tokenizer = load_tokenizer(folder / TOKENIZER_DIR)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{folder / TOKENIZER_DIR}: the run's tokenizer cannot be read ({exc}); the run "
                                  "cannot be resumed without it") from None
        model = cls.from_config(config, tokenizer)
        if model.matches_saved_base(folder / BASE_DIR):
            return model
        return cls(load_saved_base(folder / BASE_DIR, config), tokenizer, config)

    def save(self, path: str | Path) -> Path:
        """Write the checkpoint atomically: a temporary folder with a manifest, then one rename."""
        check_temperature(float(self.safety_head.temperature), path, UNSAVED)  # before anything is staged
        with atomic_folder(path) as tmp:
            self.write_files(tmp)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, **model_overrides):
        """Load a checkpoint written by ``save``; ``model_overrides`` change ModelConfig fields
        (e.g. ``load_in_4bit=False`` to export a QLoRA run)."""
        path = resolve_checkpoint(path)
        if not path.is_dir():
            what = "a file, not a checkpoint folder" if path.is_file() else "no such folder"
            raise CheckpointError(f"{path}: {what}; name a checkpoint (a folder so8t train or save wrote) "
                                  "or a training run's folder (its best/ is loaded)")
        verify_manifest(path)
        config_file = path / MODEL_CONFIG_FILE
        if not config_file.is_file():
            raise CheckpointError(f"{config_file}: missing; {path} is not an SO8T checkpoint folder")
        try:
            meta = yaml.safe_load(config_file.read_text(encoding="utf-8"))
            written = meta.get("format")
        except Exception as exc:  # noqa: BLE001 - any parse failure means the same thing to the user
            raise CheckpointError(f"{config_file}: unreadable or invalid ({exc})") from None
        if written != CHECKPOINT_FORMAT:  # another layout: read as this one, it would load wrong (or not validate)
            raise CheckpointError(f"{config_file}: checkpoint format {written!r}; this version of so8t "
                                  f"reads format {CHECKPOINT_FORMAT} only: load it with the version that wrote it")
        try:
            config = ModelConfig.model_validate({**meta["model"], **model_overrides})
        except Exception as exc:  # noqa: BLE001 - any parse failure means the same thing to the user
            raise CheckpointError(f"{config_file}: unreadable or invalid ({exc})") from None
        tokenizer = _checkpoint_tokenizer(path / TOKENIZER_DIR)
        loaded_base, unverified_base = {}, False
        if (path / BASE_DIR).is_dir():
            lm = load_saved_base(path / BASE_DIR, config)
        elif config.preset == "tiny":  # its random base exists nowhere else
            raise CheckpointError(f"{path / BASE_DIR}: missing; a tiny-preset checkpoint keeps its base weights "
                                  "there, so it cannot load without them (restore the folder from a copy)")
        else:
            location = base_location(config)
            loaded_base = base_record(location)
            mismatch = base_mismatch(meta, loaded_base)
            if mismatch:
                raise CheckpointError(f"{path} was trained on another base than {location} ({mismatch}); point "
                                      "model.base_model at its base")
            unverified_base = unverifiable_base(meta, loaded_base, location)
            lm, _ = load_pretrained_base(location, config)
        model = cls(lm, tokenizer, config)
        model.set_base_record(loaded_base)
        model.load_adapter(path / ADAPTER_FILE)
        model.model_version = checkpoint_version(path, config.name) + (UNVERIFIED_MARK if unverified_base else "")
        return model.eval()

    def load_adapter(self, file: str | Path) -> None:
        file = Path(file)
        try:
            state = load_file(str(file))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{file}: damaged or truncated checkpoint file ({exc})") from None
        expected = self.adapter_state_dict()
        check_adapter_keys(sorted(set(expected) - set(state)), sorted(set(state) - set(expected)), file)
        for name, tensor in state.items():
            if tensor.shape != expected[name].shape:
                raise CheckpointError(f"{file}: {name} has shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)}")
        check_temperature(float(state[TEMPERATURE_KEY]), file)  # before it reaches the model
        for name, tensor in state.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):  # loaded, it decides NaN
                raise CheckpointError(f"{file}: {name} holds values that are not finite (NaN or inf), as a diverged "
                                      "step leaves them; load another checkpoint (a run's best/ is never saved so)")
        self.load_state_dict(state, strict=False)


def _checkpoint_tokenizer(folder: Path):
    """The checkpoint's tokenizer, or CheckpointError naming its folder when it is missing or damaged."""
    try:
        return load_tokenizer(folder)
    except Exception as exc:  # noqa: BLE001 - tokenizers raises its own exception types for a damaged file
        raise CheckpointError(f"{folder}: the checkpoint's tokenizer is missing or damaged ({type(exc).__name__}: "
                              f"{str(exc)[:200]}); restore the folder from a copy") from None
