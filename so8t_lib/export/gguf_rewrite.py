"""Writing a GGUF file as a changed copy of another: some tensors taken from elsewhere (``mixed.splice``) or
some ``so8t.*`` keys replaced (``head_refit``), every other key and tensor as it was.

llama.cpp's quantizer is the only writer of quantized tensors here; this module never requantizes, it copies
tensor bytes with their types. The target appears whole or not at all, with its sha256 sidecar.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from .gguf_meta import write_sha256_sidecar


def rewrite_gguf(reader, target: str | Path, tensors: Sequence | None = None,
                 drop_key: Callable[[str], bool] = lambda name: False,
                 add_keys: Callable[[object], None] = lambda writer: None) -> Path:
    """Write ``target`` from ``reader`` (a ``gguf.GGUFReader``): its keys except those ``drop_key`` names,
    then what ``add_keys(writer)`` adds, then ``tensors`` (default: the reader's own, in order)."""
    import gguf

    arch_key = gguf.Keys.General.ARCHITECTURE
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp")
    tensors = list(reader.tensors if tensors is None else tensors)
    writer = gguf.GGUFWriter(str(tmp), reader.fields[arch_key].contents())
    try:
        try:
            for field in reader.fields.values():
                if field.name == arch_key or field.name.startswith("GGUF.") or drop_key(field.name):
                    continue  # the writer adds the architecture and the GGUF.* header fields itself
                if field.name == "general.alignment":  # the writer lays the data out by it: set, not copied
                    writer.add_custom_alignment(int(field.contents()))
                    continue
                kind = field.types[0]
                sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
                writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
            add_keys(writer)
            for tensor in tensors:
                writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                                       tensor.tensor_type)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for tensor in tensors:
                writer.write_tensor_data(tensor.data)
        finally:
            writer.close()
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    write_sha256_sidecar(target)
    return target
