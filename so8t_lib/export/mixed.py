"""``Q4_K_M_T8``: a 4-bit file whose trained layers stay at 8 bits.

The pretrained default starts from a base that ships as Q4_K_M, so its frozen layers hold 4-bit values, which
the export takes byte for byte from the source file (``export.source_tensors``). The layers the checkpoint trained (LoRA
merged, gates folded into ``o_proj``) hold new values, and at 4 bits they move SafetyHeadB's decisions:
measured on the Gemma default (``python benchmarks/quant_mix.py``), blocks 12-17 at Q8_0 and the rest at
Q4_K_M bring the pooled state's error from 10% to 2.4% and the agreement with fp32 from 0.80 to Q8_0's level,
for 5% more bytes than Q4_K_M. This module builds such a file from the two llama.cpp quantizations of the same
f16 export: every tensor from the 4-bit file except those of the trained layers, which come from the 8-bit one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..core.config import ModelConfig
from .gguf_file import open_gguf
from .gguf_meta import NOTE_KEYS, GGUFError
from .gguf_rewrite import rewrite_gguf

# name -> (the file it starts from, the type its trained layers keep)
MIXED_TYPES: dict[str, tuple[str, str]] = {"Q4_K_M_T8": ("Q4_K_M", "Q8_0")}
MIX_KEY = NOTE_KEYS[0]  # says which tensors came from where; general.file_type keeps the 4-bit type


def trained_tensor_prefixes(config: ModelConfig, n_layers: int) -> list[str]:
    """GGUF tensor-name prefixes of everything the checkpoint changed: the blocks with LoRA or a gate pair,
    and the embedding or output matrix when trained in full (``modules_to_save``)."""
    from ..model.so8t import resolve_layers

    blocks: set[int] = set()
    if config.lora.r > 0:
        blocks |= set(resolve_layers(config.lora.layers, n_layers, "model.lora.layers"))
    if config.gates.order != "none":
        blocks |= set(resolve_layers(config.gates.layers, n_layers, "model.gates.layers"))
    prefixes = [f"blk.{i}." for i in sorted(blocks)]
    saved = set(config.lora.modules_to_save) if config.lora.r > 0 else set()
    if "embed_tokens" in saved:
        prefixes.append("token_embd.")
    if "lm_head" in saved:
        prefixes.append("output.")
    return prefixes


def describe(prefixes: list[str], low: str, high: str) -> str:
    """One line for the file's metadata and ``so8t inspect``: e.g. 'Q4_K_M; at Q8_0: blocks 12-17'."""
    blocks = [int(p.split(".")[1]) for p in prefixes if p.startswith("blk.")]
    parts = []
    if blocks:
        runs, start = [], blocks[0]
        for prev, cur in zip(blocks, blocks[1:] + [None]):
            if cur != prev + 1:
                runs.append(f"{start}" if start == prev else f"{start}-{prev}")
                start = cur
        parts.append("blocks " + ",".join(runs))
    parts += [p.rstrip(".") for p in prefixes if not p.startswith("blk.")]
    return f"{low}; at {high}: " + (", ".join(parts) if parts else "nothing (no trained tensors)")


def splice(low_path: str | Path, high_path: str | Path, target: str | Path, take: Callable[[str], bool],
           note: str) -> Path:
    """Write ``target``: metadata and tensors of ``low_path``, except tensors for which ``take(name)`` holds,
    copied from ``high_path`` (the same model quantized otherwise). Whole or not at all, with a sha256 sidecar."""

    low, high = open_gguf(low_path), open_gguf(high_path)
    high_tensors = {t.name: t for t in high.tensors}
    low_names = [t.name for t in low.tensors]
    if sorted(low_names) != sorted(high_tensors):
        raise GGUFError(f"{low_path} and {high_path} hold different tensors: not two quantizations of one export")
    chosen = []
    for tensor in low.tensors:
        if take(tensor.name):
            other = high_tensors[tensor.name]
            if [int(d) for d in other.shape] != [int(d) for d in tensor.shape]:
                raise GGUFError(f"{tensor.name}: shape {list(other.shape)} in {high_path}, "
                                f"{list(tensor.shape)} in {low_path}")
            tensor = other
        chosen.append(tensor)
    return rewrite_gguf(low, target, chosen, drop_key=lambda key: key == MIX_KEY,
                        add_keys=lambda writer: writer.add_string(MIX_KEY, note))
