"""The SO8T GGUF file format: the ``so8t.*`` metadata keys beside llama.cpp's own, and reading them back.

The export writes these keys (``gguf_writer``); the runtime's GGUF backend reads them
(``so8t_lib.serve.gguf_backend``), which is why serving depends on this module and not the reverse.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SO8T_FORMAT = 1
DEFAULT_THRESHOLD = 0.8  # SAFETY_POLICY.md: 0.8 basic, 0.9 production
REQUIRED_KEYS: tuple[str, ...] = (
    "so8t.format", "so8t.labels", "so8t.temperature", "so8t.threshold", "so8t.gate_order", "so8t.system_prompt",
    "so8t.model_version", "so8t.config_sha256", "so8t.head.keys",
)


class GGUFError(ValueError):
    """A file that is not a usable SO8T GGUF; the message names the file and what is wrong."""


def read_metadata(path: str | Path) -> dict:
    """The ``so8t.*`` metadata and the SafetyHeadB weights of an SO8T GGUF; GGUFError otherwise."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: no such file")
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise GGUFError(f"{path}: not a GGUF file (the first bytes are not 'GGUF')")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001 - a damaged file raises many kinds of errors
        raise GGUFError(f"{path}: damaged or truncated GGUF ({type(exc).__name__}: {exc})") from None
    fields = reader.fields

    def value(key: str):
        if key not in fields:
            raise GGUFError(f"{path}: no {key!r} key; this GGUF was not exported by so8t export "
                            "(it lacks the safety head), export the checkpoint again")
        return fields[key].contents()

    meta = {key: value(key) for key in REQUIRED_KEYS}
    if int(meta["so8t.format"]) > SO8T_FORMAT:
        raise GGUFError(f"{path}: so8t.format {meta['so8t.format']} is newer than this library ({SO8T_FORMAT})")
    head = {}
    for key in meta["so8t.head.keys"]:
        shape = [int(s) for s in value(f"so8t.head.{key}.shape")]
        flat = np.asarray(value(f"so8t.head.{key}"), dtype=np.float32)
        if flat.size != int(np.prod(shape)):
            raise GGUFError(f"{path}: so8t.head.{key} has {flat.size} values, its shape says {shape}")
        head[key] = flat.reshape(shape)
    meta["head"] = head
    meta["general.file_type"] = int(fields["general.file_type"].contents()) if "general.file_type" in fields else None
    meta["tensor_count"] = len(reader.tensors)
    return meta
