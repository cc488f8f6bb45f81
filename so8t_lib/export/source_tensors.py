"""Frozen tensors of a quantized export, byte for byte from the base's own GGUF file.

A base that ships quantized (Gemma 3 270M arrives as Q4_K_M) reaches training dequantized, so every tensor
the checkpoint did not change holds exactly the values of the source file's blocks. Quantizing those values
again does not give the blocks back: the f16 export rounds them off the 4-bit grid and llama.cpp's quantizer
searches new scales, so each frozen tensor would carry a second rounding that the fp32 model never had.
Where a quantized file holds a tensor in the type the source file holds it in, and the export's values are
the source's to f16 rounding, the source's bytes are taken instead: the frozen layers then compute what the
fp32 model computes, and only the tensors the checkpoint changed carry the new quantization.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .gguf_file import open_gguf
from .gguf_meta import NOTE_KEYS, GGUFError
from .gguf_rewrite import rewrite_gguf

SOURCE_KEY = NOTE_KEYS[1]  # which tensors came byte for byte from the base's file
# the f16 export rounds each value to half an f16 unit in the last place (2^-11 relative; 2^-25 absolute
# below f16's normal range): a difference within that is the export's rounding, anything more is training
F16_RELATIVE_ROUNDING = 2.0**-11
F16_ABSOLUTE_ROUNDING = 2.0**-24


@dataclass(frozen=True)
class SourceTensors:
    """What ``take_source_tensors`` did to one file: the tensors taken, and how many the file holds."""

    path: Path
    taken: tuple[str, ...]
    total: int

    def summary(self, source_name: str) -> str:
        return f"{len(self.taken)} of {self.total} tensors byte for byte from {source_name}"


def holds_source_values(exported: np.ndarray, source: np.ndarray) -> bool:
    """Whether an exported tensor's values are the source tensor's up to the export's f16 rounding."""
    if exported.shape != source.shape:
        return False
    exported, source = exported.astype(np.float32), source.astype(np.float32)
    allowed = F16_RELATIVE_ROUNDING * np.abs(source) * (1 + 1e-6) + F16_ABSOLUTE_ROUNDING
    return bool(np.all(np.abs(exported - source) <= allowed))


def _values(tensor) -> np.ndarray:
    """A GGUF tensor's values as float32, in the shape llama.cpp's rows give it."""
    from gguf.quants import dequantize

    return dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(
        [int(d) for d in reversed(tensor.shape)])


def take_source_tensors(quantized: str | Path, exported: str | Path, source: str | Path) -> SourceTensors:
    """Rewrite ``quantized`` in place with every tensor that ``source`` (the base's original GGUF) holds in the
    same type and that ``exported`` (the f16 or f32 export the file was quantized from) holds unchanged. The
    file is left as it was when no tensor qualifies; otherwise it is replaced whole, with its sha256 sidecar."""

    quantized, exported, source = Path(quantized), Path(exported), Path(source)
    for path in (quantized, exported, source):
        if not path.is_file():
            raise GGUFError(f"{path}: no such GGUF file")
    target = open_gguf(quantized)
    reference = {t.name: t for t in open_gguf(exported).tensors}
    original = {t.name: t for t in open_gguf(source).tensors}
    if sorted(reference) != sorted(t.name for t in target.tensors):
        raise GGUFError(f"{quantized} is not a quantization of {exported}: they hold different tensors")
    chosen, taken = [], []
    for tensor in target.tensors:
        base = original.get(tensor.name)
        if (base is not None and base.tensor_type == tensor.tensor_type
                and [int(d) for d in base.shape] == [int(d) for d in tensor.shape]
                and (np.array_equal(np.asarray(base.data), np.asarray(tensor.data))  # already the source's bytes
                     or holds_source_values(_values(reference[tensor.name]), _values(base)))):
            tensor = base
            taken.append(tensor.name)
        chosen.append(tensor)
    result = SourceTensors(quantized, tuple(taken), len(chosen))
    if taken:  # written beside, then renamed over the file the reader still maps (its old bytes stay readable)
        note = result.summary(source.name)
        rewrite_gguf(target, quantized, chosen, drop_key=lambda key: key == SOURCE_KEY,
                     add_keys=lambda writer: writer.add_string(SOURCE_KEY, note))
    return result
