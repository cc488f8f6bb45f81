"""A GGUF file's keys and tensors, read without gguf's per-element parse of metadata arrays.

``gguf.GGUFReader`` builds a numpy view for every element of every metadata array. A base with a 262k-token
vocabulary (Gemma 3: tokens, scores and token types) keeps it busy about 14 s on 2 cores each time a file is
opened, before one ``so8t.*`` key can be read: every GGUFBackend start, every rung of the quantization ladder
(three files each), every head refit. (Upstream has proposed the same change to gguf-py, llama.cpp PRs 10159
and 13378; gguf 0.19 still parses element by element.)

``GGUFFile`` walks the layout the GGUF spec gives (v2 and v3: magic, version, tensor count, key count; each
key as length-prefixed name, value type, value; then the tensor infos, then the aligned data) with ``struct``
over a memory map. Numeric arrays become one ``numpy.frombuffer`` each, string arrays a loop over their
lengths. It offers the part of GGUFReader's interface this package uses (``fields[key].contents()``,
``field.types``, ``tensors`` with name, type, shape and data), and ``open_gguf`` falls back to GGUFReader
for the layouts it does not read (big-endian files, arrays of arrays).
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ALIGNMENT_KEY = "general.alignment"
READ_VERSIONS = (2, 3)  # version 1 used 32-bit lengths; no tool writes it any more
# tensor types whose data GGUFReader gives typed; every other type comes as its raw bytes
TYPED_TENSORS = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I8": np.int8, "I16": np.int16,
                 "I32": np.int32, "I64": np.int64}


class GGUFError(ValueError):
    """A file that is not a usable SO8T GGUF; the message names the file and what is wrong."""


class _Unsupported(Exception):
    """A valid layout this reader leaves to gguf.GGUFReader."""


@dataclass(frozen=True)
class HeaderField:
    """One key: its value types as GGUFReader lists them ((type,) or (ARRAY, item type)) and its value."""

    name: str
    types: tuple
    value: Any

    def contents(self) -> Any:
        return self.value


@dataclass(frozen=True)
class TensorData:
    """One tensor: name, ggml type, shape in GGUF order (fastest dimension first) and its data, mapped."""

    name: str
    tensor_type: Any
    shape: tuple[int, ...]
    data: np.ndarray


class GGUFFile:
    """The keys (``fields``) and tensors of a little-endian GGUF v2/v3 file; only keys ``want(name)`` accepts
    are decoded (all by default). Raises GGUFError for a damaged or truncated file."""

    def __init__(self, path: str | Path, want: Callable[[str], bool] | None = None) -> None:
        import gguf

        self.path = Path(path)
        self._gguf = gguf
        self._scalars = {kind: np.dtype(dtype).newbyteorder("<")
                         for kind, dtype in gguf.GGUFReader.gguf_scalar_to_np.items()}
        try:
            with self.path.open("rb") as handle:
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:  # ValueError: an empty file cannot be mapped
            raise GGUFError(f"{self.path}: cannot be read as GGUF ({exc})") from None
        try:
            self._parse(want)
        except (struct.error, UnicodeDecodeError, ValueError, OverflowError, IndexError, TypeError, KeyError) as exc:
            raise GGUFError(f"{self.path}: damaged or truncated GGUF ({type(exc).__name__}: {exc})") from None

    # -- the layout --------------------------------------------------------------------------------------------
    def _take(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self._map, self._at)
        self._at += struct.calcsize(fmt)
        return value

    def _span(self, count: int) -> tuple[int, int]:
        """Step over ``count`` bytes; their (start, end) in the map."""
        start, end = self._at, self._at + count
        if count < 0 or end > len(self._map):
            raise ValueError(f"{count} bytes at offset {start} run past the end of the file")
        self._at = end
        return start, end

    def _string(self, decode: bool = True) -> str | None:
        start, end = self._span(self._take("<Q"))
        return self._map[start:end].decode("utf-8") if decode else None

    def _numbers(self, dtype: np.dtype, count: int, decode: bool) -> list | None:
        start, _ = self._span(count * dtype.itemsize)
        return np.frombuffer(self._map, dtype, count, start).tolist() if decode else None

    def _value(self, kind: int, decode: bool) -> tuple[tuple, Any]:
        types = self._gguf.GGUFValueType
        kind = types(kind)
        if kind == types.STRING:
            return (kind,), self._string(decode)
        if kind in self._scalars:
            value = self._numbers(self._scalars[kind], 1, decode)
            return (kind,), value[0] if decode else None
        if kind != types.ARRAY:
            raise ValueError(f"unknown value type {kind}")
        item, count = types(self._take("<I")), self._take("<Q")
        if item in self._scalars:
            return (kind, item), self._numbers(self._scalars[item], count, decode)
        if item == types.STRING:
            strings = [self._string(decode) for _ in range(count)]
            return (kind, item), strings if decode else None
        raise _Unsupported(f"arrays of {item.name}")

    def _parse(self, want: Callable[[str], bool] | None) -> None:
        gguf = self._gguf
        self._at = 0
        if self._take("<I") != gguf.GGUF_MAGIC:
            raise GGUFError(f"{self.path}: not a GGUF file (the first bytes are not 'GGUF')")
        version = self._take("<I")
        if version not in READ_VERSIONS:
            raise _Unsupported(f"version {version} (byte-swapped: {int.from_bytes(version.to_bytes(4, 'little'), 'big')})")
        n_tensors, n_keys = self._take("<Q"), self._take("<Q")
        self.fields: dict[str, HeaderField] = {}
        for _ in range(n_keys):
            name = self._string()
            decode = want is None or want(name) or name == ALIGNMENT_KEY  # the data offset needs it
            types, value = self._value(self._take("<I"), decode)
            if name in self.fields:
                raise ValueError(f"key {name!r} appears twice")
            if decode:
                self.fields[name] = HeaderField(name, types, value)
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            dims = struct.unpack_from(f"<{self._take('<I')}Q", self._map, self._at)
            self._at += 8 * len(dims)
            infos.append((name, dims, gguf.GGMLQuantizationType(self._take("<I")), self._take("<Q")))
        alignment = int(self.fields[ALIGNMENT_KEY].value) if ALIGNMENT_KEY in self.fields \
            else gguf.GGUF_DEFAULT_ALIGNMENT
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"{ALIGNMENT_KEY} is {alignment}, not a power of two")
        self.data_offset = -(-self._at // alignment) * alignment
        self.tensors = [self._tensor(*info) for info in infos]
        if len({t.name for t in self.tensors}) != len(self.tensors):
            raise ValueError("a tensor name appears twice")

    def _tensor(self, name: str, dims: tuple[int, ...], kind, offset: int) -> TensorData:
        from gguf.quants import quant_shape_to_byte_shape

        block, type_size = self._gguf.GGML_QUANT_SIZES[kind]
        elements = int(np.prod(dims, dtype=np.int64)) if dims else 1
        shape = tuple(reversed([int(d) for d in dims]))
        start, nbytes = self.data_offset + offset, elements * type_size // block
        if start + nbytes > len(self._map):
            raise ValueError(f"tensor {name!r} runs past the end of the file")
        if kind.name in TYPED_TENSORS:
            dtype = np.dtype(TYPED_TENSORS[kind.name]).newbyteorder("<")
            data = np.frombuffer(self._map, dtype, elements, start).reshape(shape)
        else:
            data = np.frombuffer(self._map, np.uint8, nbytes, start).reshape(quant_shape_to_byte_shape(shape, kind))
        return TensorData(name, kind, tuple(int(d) for d in dims), data)


def open_gguf(path: str | Path, want: Callable[[str], bool] | None = None):
    """``GGUFFile`` where it reads the layout, else ``gguf.GGUFReader`` (slow, complete); GGUFError for a
    missing, foreign or damaged file."""
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: no such GGUF file")
    try:
        return GGUFFile(path, want)
    except _Unsupported:
        import gguf

        try:
            return gguf.GGUFReader(str(path))
        except Exception as exc:  # noqa: BLE001 - a damaged file raises many kinds of errors
            raise GGUFError(f"{path}: damaged or truncated GGUF ({type(exc).__name__}: {exc})") from None


def differences_from_gguf_reader(path: str | Path) -> list[str]:
    """Where ``GGUFFile`` and ``gguf.GGUFReader`` read ``path`` differently (key names, value types, values,
    tensor names, types, shapes, bytes): empty when they agree. For tests and the open-time benchmark."""
    import gguf

    ours, theirs = GGUFFile(path), gguf.GGUFReader(str(path))
    keys = [k for k in theirs.fields if not k.startswith("GGUF.")]  # GGUFReader's own header entries
    found = [] if list(ours.fields) == keys else [f"keys: {list(ours.fields)} against {keys}"]
    for key in (k for k in keys if k in ours.fields):
        mine, reference = ours.fields[key], theirs.fields[key]
        if (mine.types[0], mine.types[-1]) != (reference.types[0], reference.types[-1]):
            found.append(f"{key}: types {mine.types} against {reference.types}")
        elif mine.contents() != reference.contents():
            found.append(f"{key}: another value")
    if [t.name for t in ours.tensors] != [t.name for t in theirs.tensors]:
        return found + ["tensor names or order differ"]
    for mine, reference in zip(ours.tensors, theirs.tensors):
        if (mine.tensor_type != reference.tensor_type or list(mine.shape) != [int(d) for d in reference.shape]
                or mine.data.dtype != reference.data.dtype or mine.data.shape != reference.data.shape
                or not np.array_equal(np.asarray(mine.data).view(np.uint8), np.asarray(reference.data).view(np.uint8))):
            found.append(f"tensor {mine.name} differs")
    return found
