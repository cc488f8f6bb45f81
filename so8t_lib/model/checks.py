"""What a model build or a checkpoint load refuses before the model can decide wrong.

Each check turns a fault that would otherwise surface later (a reversed ranking, randomly filled weights, a run
that dies at its first step) into a ConfigError naming the config key or a CheckpointError naming the file.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..core.checkpoint import UNVERIFIED_ENV, UNVERIFIED_MARK, CheckpointError, unverified_allowed
from ..core.config import ConfigError
from ..core.temperature import usable_temperature

SHOWN_KEYS = 3  # how many of a list of weight names a message shows
GATE_MARKERS = (".r_safe.", ".r_cmd.")  # in the names of the SO(8) gates' parameters


def check_temperature(temperature: float, where: str | Path,
                      remedy: str = "restore the checkpoint from a copy or train it again") -> None:
    """CheckpointError unless the head's temperature is usable (``core.temperature``, the rule calibration and the
    GGUF reader apply): logits divided by a negative one rank the labels upside down, so a harmful request would get
    ALLOW."""
    if not usable_temperature(temperature):
        raise CheckpointError(f"{where}: safety_head.temperature is {temperature}, not a finite number > 0 in "
                              "float32's range, so the safety head would rank its labels wrongly (a negative one "
                              f"turns REFUSE into ALLOW); refusing it: {remedy}")


def _names(keys) -> str:
    keys = sorted(str(k[0] if isinstance(k, tuple) else k) for k in keys)
    return ", ".join(keys[:SHOWN_KEYS]) + (f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else "")


def check_loading_info(info: dict, where: str | Path) -> None:
    """CheckpointError when ``from_pretrained(..., output_loading_info=True)`` filled weights the files lack (at
    random), dropped weights the model has no place for, or skipped ones of another shape. transformers leaves out
    of these lists what it ties or initialises by design (a tied lm_head), so any entry is a damaged or foreign base."""
    for key, what in (("missing_keys", "missing (they would be filled at random)"),
                      ("unexpected_keys", "not part of this model (another architecture or config)"),
                      ("mismatched_keys", "of another shape than its config says")):
        if info.get(key):
            raise CheckpointError(f"{where}: base model weights {_names(info[key])} are {what}; the base is damaged "
                                  "or not the one its config.json describes: restore it (convert or copy it again)")
    if info.get("error_msgs"):
        raise CheckpointError(f"{where}: base model weights do not load ({'; '.join(info['error_msgs'])[:300]})")


def gate_slot(layer: nn.Module, target: str, hidden: int) -> tuple[nn.Module, str]:
    """(parent, attribute) of ``model.gates.target`` in a decoder layer: a linear projection whose output is the
    hidden state (hidden wide), the only place an SO(8) gate fits and folds into for export. ConfigError otherwise,
    at build, before a run writes anything (a wrong width failed only at the first training step)."""
    *parents, leaf = target.split(".")
    parent = layer
    try:
        for name in parents:
            parent = getattr(parent, name)
        module = getattr(parent, leaf)
    except AttributeError:
        raise ConfigError(f"model.gates.target {target!r}: the decoder layers ({type(layer).__name__}) have no such "
                          "module; name the attention output projection (e.g. self_attn.o_proj)") from None
    width = getattr(module, "out_features", None)
    if width != hidden:
        found = f"has {width} outputs" if width is not None else f"is a {type(module).__name__}, not a linear layer"
        raise ConfigError(f"model.gates.target {target!r} {found}; a gate rotates the hidden state, so it needs a "
                          f"linear layer with hidden_size ({hidden}) outputs, e.g. self_attn.o_proj")
    return parent, leaf


def check_read_layers(read_layers: list[int], n_outputs: int) -> None:
    """ConfigError unless each of ``model.head.read_layers`` is a hidden-state index of this base (1..n_outputs)."""
    if not all(1 <= index <= n_outputs for index in read_layers):
        raise ConfigError(f"model.head.read_layers {read_layers}: this base has hidden-state indices 1..{n_outputs} "
                          f"({n_outputs} is the final-norm state)")


def check_adapter_keys(missing: list[str], extra: list[str], file: str | Path) -> None:
    """CheckpointError when ``adapter.safetensors`` holds other weights than the model config builds. Gates present
    on one side only are named first: a gated layer's LoRA weights sit under another name too, so the plain lists
    would mostly show LoRA keys and hide that the gates are what differs."""
    if not (missing or extra):
        return
    saved_gates, built_gates = (any(m in k for k in keys for m in GATE_MARKERS) for keys in (extra, missing))
    hint = ""
    if saved_gates and not built_gates:
        hint = ("it holds SO(8) gates this config does not build (model.gates.order none, or other model.gates.layers):"
                " load it with the gates it was trained with; ")
    elif built_gates and not saved_gates:
        hint = "this config builds SO(8) gates the checkpoint does not have (model.gates): load it with its own; "
    raise CheckpointError(f"{file}: does not match this model config ({hint}missing: {_names(missing) or 'none'}; "
                          f"unexpected: {_names(extra) or 'none'})")


def unverifiable_base(trained_on: dict, loaded: dict, location: str) -> bool:
    """True when a checkpoint that recorded its base (``base_record``) is loaded on a base with no manifest, which
    nothing can compare: CheckpointError unless the operator set the override, as for a checkpoint without a
    manifest; the caller then marks the model's version ``+unverified``. (A base of another identity was refused.)"""
    recorded = trained_on.get("base_identity") or trained_on.get("base_fingerprint")
    if not recorded or loaded.get("base_identity") or loaded.get("base_fingerprint"):
        return False
    if not unverified_allowed():
        raise CheckpointError(f"{location}: no manifest.json, so it cannot be checked to be the base {recorded[:12]} "
                              "the checkpoint was trained on (another base loads and decides wrongly); point "
                              f"model.base_model at its converted base, or set {UNVERIFIED_ENV}=1 to load it anyway "
                              f"(every decision is then marked {UNVERIFIED_MARK})")
    return True


def check_lora_targets(model: nn.Module, targets: list[str]) -> None:
    """Before peft wraps anything: a target name that matches no module is a config error. peft says so with its own
    error class only from 0.21 (a plain ValueError before), so the match is checked here, as peft matches a list of
    names: a module whose dotted name is the target or ends with ``.<target>``."""
    names = [name for name, _ in model.named_modules()]
    if not any(name == target or name.endswith(f".{target}") for name in names for target in targets):
        raise ConfigError(f"model.lora.target_modules {targets}: no module of this base has such a name "
                          "(e.g. q_proj, v_proj, o_proj)")


def no_peft_match() -> tuple[type[Exception], ...]:
    """peft's own error for targets that match nothing (from peft 0.21; none before, where check_lora_targets is the
    only check): it also covers names that match only outside ``lora.layers`` or only in ``modules_to_save``."""
    try:
        from peft.utils.error import NoMatchingPeftModuleError
    except ImportError:
        return ()
    return (NoMatchingPeftModuleError,)
