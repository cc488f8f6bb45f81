"""The SO8T GGUF file format: the ``so8t.*`` metadata keys beside llama.cpp's own, and reading them back.

The export writes these keys (``gguf_writer``); the runtime's GGUF backend reads them
(``so8t_lib.serve.gguf_backend``), which is why serving depends on this module and not the reverse.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core.schema import POOLINGS
from ..core.temperature import usable_temperature
from .gguf_file import GGUFError, open_gguf  # GGUFError lives with the reader; imported from here too

SO8T_FORMAT = 1
REFIT_KEY = "so8t.head_refit"  # JSON: rows, the chosen pull, held-out agreement before and after
DEFAULT_THRESHOLD = 0.8  # SAFETY_POLICY.md: 0.8 basic, 0.9 production
REQUIRED_KEYS: tuple[str, ...] = (
    "so8t.format", "so8t.labels", "so8t.temperature", "so8t.threshold", "so8t.gate_order", "so8t.system_prompt",
    "so8t.model_version", "so8t.config_sha256", "so8t.head.keys",
)


# the Unicode normalization the HF tokenizer applies before its BPE (llama.cpp applies none): the GGUF backend
# applies it to the text between special tokens; a file without the key was written before it and gets none
NORMALIZER_KEY = "so8t.normalizer"
NORMALIZERS = ("none", "NFC", "NFD", "NFKC", "NFKD")

# one line each, where present: which tensors a mixed rung holds at which type (export.mixed), and which came
# byte for byte from the base's own GGUF file (export.source_tensors)
NOTE_KEYS = ("so8t.quant_mix", "so8t.source_tensors")


def read_metadata(path: str | Path) -> dict:
    """The ``so8t.*`` metadata and the SafetyHeadB weights of an SO8T GGUF; GGUFError otherwise."""
    path = Path(path)
    if path.is_dir():
        raise GGUFError(f"{path} is a folder, not a GGUF file; name the .gguf file in it")
    if not path.is_file():
        raise GGUFError(f"{path}: no such file")
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise GGUFError(f"{path}: not a GGUF file (the first bytes are not 'GGUF')")
    # the so8t.* keys and the two the architecture needs; the 262k-token vocabulary is stepped over, not decoded
    reader = open_gguf(path, want=lambda key: key.startswith(("so8t.", "general."))
                       or key.endswith((".block_count", ".context_length")))
    fields = reader.fields

    def value(key: str):
        if key not in fields:
            raise GGUFError(f"{path}: no {key!r} key; this GGUF was not exported by so8t export "
                            "(it lacks the safety head), export the checkpoint again")
        return fields[key].contents()

    meta = {key: value(key) for key in REQUIRED_KEYS}
    if not _whole(meta["so8t.format"]) or meta["so8t.format"] < 1:
        raise GGUFError(f"{path}: so8t.format {meta['so8t.format']!r} is not a format number (an integer >= 1); "
                        "this file was not written by so8t export, export the checkpoint again")
    if int(meta["so8t.format"]) > SO8T_FORMAT:
        raise GGUFError(f"{path}: so8t.format {meta['so8t.format']} is newer than this library ({SO8T_FORMAT})")
    for key in ("so8t.labels", "so8t.head.keys"):
        if not isinstance(meta[key], list) or not meta[key] or not all(isinstance(v, str) for v in meta[key]):
            raise GGUFError(f"{path}: {key} {meta[key]!r} is not a list of names; export the checkpoint again")
    # files written before mean pooling existed decide from the last token
    meta["so8t.pooling"] = fields["so8t.pooling"].contents() if "so8t.pooling" in fields else "last"
    if meta["so8t.pooling"] not in POOLINGS:
        raise GGUFError(f"{path}: so8t.pooling {meta['so8t.pooling']!r} is none of {POOLINGS}; a newer so8t wrote it, "
                        "upgrade so8t_lib to read it")
    arch = fields["general.architecture"].contents() if "general.architecture" in fields else None
    meta["block_count"] = fields[f"{arch}.block_count"].contents() if f"{arch}.block_count" in fields else None
    if meta["block_count"] is not None and (not _whole(meta["block_count"]) or meta["block_count"] < 1):
        raise GGUFError(f"{path}: {arch}.block_count {meta['block_count']!r} is not a layer count (an integer >= 1)")
    meta["block_count"] = None if meta["block_count"] is None else int(meta["block_count"])
    # the positions the model was built for: a longer prompt is refused, as the checkpoint refuses it
    trained = fields[f"{arch}.context_length"].contents() if f"{arch}.context_length" in fields else None
    if trained is not None and (not _whole(trained) or trained < 1):
        raise GGUFError(f"{path}: {arch}.context_length {trained!r} is not a token count (an integer >= 1)")
    meta["context_length"] = None if trained is None else int(trained)
    # hidden-state indices the head reads (HF numbering); files written before it read the final norm only
    meta["so8t.read_layers"] = _read_layers(path, fields["so8t.read_layers"].contents(), meta["block_count"]) \
        if "so8t.read_layers" in fields else []
    meta[NORMALIZER_KEY] = fields[NORMALIZER_KEY].contents() if NORMALIZER_KEY in fields else "none"
    if meta[NORMALIZER_KEY] not in NORMALIZERS:
        raise GGUFError(f"{path}: {NORMALIZER_KEY} {meta[NORMALIZER_KEY]!r} is none of {NORMALIZERS}; a newer so8t "
                        "wrote it, upgrade so8t_lib to read it")
    head = {}
    for key in meta["so8t.head.keys"]:
        try:
            shape = value(f"so8t.head.{key}.shape")
            if not isinstance(shape, list) or not all(_whole(s) for s in shape):  # [2.7] read as 2
                raise TypeError("a shape holds integers")
            shape = [int(s) for s in shape]
            flat = np.asarray(value(f"so8t.head.{key}"))
            if flat.dtype.kind not in "fiu":  # strings, bools
                raise TypeError("the values are numbers")
            flat = flat.astype(np.float32)
        except (TypeError, ValueError):
            raise GGUFError(f"{path}: so8t.head.{key} or its shape is not a list of numbers") from None
        if not shape or min(shape) < 1 or flat.size != int(np.prod(shape)):
            raise GGUFError(f"{path}: so8t.head.{key} has {flat.size} values, its shape says {shape}")
        if not np.isfinite(flat).all():  # a NaN head gives NaN probabilities, which argmax reads as ALLOW
            raise GGUFError(f"{path}: so8t.head.{key} holds values that are not finite; export the checkpoint again")
        head[key] = flat.reshape(shape)
    meta["head"] = head
    temperature = float(meta["so8t.temperature"]) if _real(meta["so8t.temperature"]) else float("nan")
    if not usable_temperature(temperature):  # a negative one turns the head's ranking upside down
        raise GGUFError(f"{path}: so8t.temperature {meta['so8t.temperature']!r} is not a positive number; export the "
                        "checkpoint again")
    threshold = float(meta["so8t.threshold"]) if _real(meta["so8t.threshold"]) else float("nan")
    if not 0 <= threshold <= 1:  # NaN included
        raise GGUFError(f"{path}: so8t.threshold {meta['so8t.threshold']!r} is not a probability (a number from 0 "
                        "to 1); export the checkpoint again")
    meta["general.file_type"] = int(fields["general.file_type"].contents()) if "general.file_type" in fields else None
    meta["tensor_count"] = len(reader.tensors)
    if REFIT_KEY in fields:  # a head refitted to this file's own states (export.head_refit) says how
        try:
            meta[REFIT_KEY] = json.loads(fields[REFIT_KEY].contents())
        except (json.JSONDecodeError, TypeError):
            raise GGUFError(f"{path}: {REFIT_KEY} is not JSON; export the checkpoint again") from None
    for key in NOTE_KEYS:
        if key in fields:
            meta[key] = fields[key].contents()
    return meta


def _whole(value) -> bool:
    """An integer stored as one: not a bool (GGUF has its own type for those), not a float (2.7 read as layer 2)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _real(value) -> bool:
    """A number stored as one: a string "0.5" or a bool is not a temperature or a threshold."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)


def _read_layers(path: Path, layers, block_count: int | None) -> list[int]:
    """``so8t.read_layers`` checked: distinct integers, each a hidden state the file's ``block_count`` layers have
    (1 .. block_count, HF numbering). A float, a string or -1 raised a bare ValueError or read another layer."""
    if not isinstance(layers, list) or not all(_whole(i) for i in layers):
        raise GGUFError(f"{path}: so8t.read_layers {layers!r} is not a list of integers (hidden-state indices); "
                        "export the checkpoint again")
    if layers and block_count is None:
        raise GGUFError(f"{path}: so8t.read_layers {layers} names layers, but the file has no block_count to check "
                        "them against; export the checkpoint again")
    if any(not 1 <= i <= block_count for i in layers) or len(set(layers)) != len(layers):
        raise GGUFError(f"{path}: so8t.read_layers {layers} are not distinct hidden states 1..{block_count} of the "
                        f"file's {block_count} layers; export the checkpoint again")
    return [int(i) for i in layers]


# ----- integrity: a sha256 sidecar beside every exported file -----------------------------------------
SHA256_SUFFIX = ".sha256"


def sidecar_path(path: str | Path) -> Path:
    """``model.gguf`` -> ``model.gguf.sha256``, in ``sha256sum`` format (so ``sha256sum -c`` checks it too)."""
    path = Path(path)
    return path.with_name(path.name + SHA256_SUFFIX)


def write_sha256_sidecar(path: str | Path) -> Path:
    """Hash a finished GGUF file and write its sidecar (whole or not at all)."""
    from ..core.io import atomic_write_text, sha256_file

    path = Path(path)
    return atomic_write_text(sidecar_path(path), f"{sha256_file(path)}  {path.name}\n")


def verify_sha256_sidecar(path: str | Path) -> bool:
    """True when the file matches its sidecar. GGUFError when it does not (damaged or altered); a
    missing or unreadable sidecar is refused like a checkpoint without a manifest (CheckpointError
    unless SO8T_ALLOW_UNVERIFIED_MODEL=1, then False and a logged warning)."""
    from ..core.checkpoint import refuse_unverified
    from ..core.io import sha256_file

    path = Path(path)
    side = sidecar_path(path)
    try:
        expected = side.read_text(encoding="ascii").split()[0].lower()
    except (OSError, UnicodeDecodeError, IndexError):
        refuse_unverified(path, f"no readable {side.name} (sha256 sidecar)")
        return False
    if len(expected) != 64 or sha256_file(path) != expected:
        raise GGUFError(f"{path}: damaged or altered (its sha256 does not match {side.name}); export it again")
    return True
