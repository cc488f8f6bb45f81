"""What a HF tokenizer does before its BPE model runs, and whether a GGUF file can say the same to llama.cpp.

The export writes a tokenizer that is not copied from a source GGUF file as llama.cpp's ``gpt2`` model with the
``qwen2`` pre-tokenizer: byte-level BPE, split by Qwen2's pattern. A tokenizer that works otherwise (a "▁"
normalizer with byte fallback, as Gemma's, or another split) would be written "successfully" and then tokenize
differently in llama.cpp, so it is refused here, naming what differs.
"""

from __future__ import annotations

import json

from ..model.tokenizer import QWEN2_SPLIT_PATTERN
from .gguf_meta import NORMALIZERS, GGUFError

# the members of a Sequence, by component kind in tokenizer.json
_SEQUENCE_MEMBERS = ("normalizers", "pretokenizers", "decoders")


def _steps(node: dict | None) -> list[dict]:
    """A tokenizer.json component as its list of steps (a Sequence flattened; none for null)."""
    if not node:
        return []
    if node.get("type") == "Sequence":
        members = next((node[key] for key in _SEQUENCE_MEMBERS if key in node), [])
        return [step for member in members for step in _steps(member)]
    return [node]


def _spec(tokenizer) -> dict:
    return json.loads(tokenizer.backend_tokenizer.to_str())


def check_byte_level_bpe(tokenizer) -> None:
    """GGUFError unless ``tokenizer`` is what the file will declare: byte-level BPE (a ByteLevel pre-tokenizer or
    decoder) splitting by Qwen2's pattern, with no normalizer or NFC only (NFC travels as ``so8t.normalizer``)."""
    spec = _spec(tokenizer)
    kind = (spec.get("model") or {}).get("type")
    if kind != "BPE":
        raise GGUFError(f"tokenizer model {kind!r}: the GGUF export writes byte-level BPE tokenizers only; export a "
                        "model with a byte-level BPE tokenizer (as Qwen2's), or a base that came as a GGUF file")
    pre, decoder = _steps(spec.get("pre_tokenizer")), _steps(spec.get("decoder"))
    if not any(step.get("type") == "ByteLevel" for step in pre + decoder):
        raise GGUFError("the tokenizer is not byte-level BPE (no ByteLevel pre-tokenizer or decoder; its "
                        f"pre-tokenizer is {[s.get('type') for s in pre]}, its decoder {[s.get('type') for s in decoder]}"
                        "): llama.cpp would read the file as byte-level BPE and tokenize differently; export a model "
                        "with a byte-level BPE tokenizer, or a base that came as a GGUF file (its tokenizer is copied)")
    others = [step.get("type") for step in _steps(spec.get("normalizer")) if step.get("type") != "NFC"]
    if others:
        raise GGUFError(f"the tokenizer's normalizer {others} is not carried into a GGUF file (only NFC is): llama.cpp "
                        "would tokenize the raw text; export a model whose tokenizer has no normalizer or NFC only")
    splits = [step.get("pattern", {}) for step in pre if step.get("type") == "Split"]
    gpt2_regex = [step for step in pre if step.get("type") == "ByteLevel" and step.get("use_regex", True)]
    if splits != [{"Regex": QWEN2_SPLIT_PATTERN}] or gpt2_regex:
        raise GGUFError("the tokenizer does not split text by Qwen2's pattern alone (pre-tokenizer "
                        f"{[s.get('type') for s in pre]}), which the file declares (tokenizer.ggml.pre = qwen2): "
                        "llama.cpp would split differently; export a model with a Qwen2-style tokenizer")


def unicode_normalizer(tokenizer) -> str:
    """The Unicode normalization form the HF tokenizer applies (``NFC``...), or ``none``: written as
    ``so8t.normalizer`` so that the GGUF backend tokenizes NFD text as HF does (llama.cpp normalizes nothing).
    Other normalizer steps (Gemma's "▁" for spaces) are the copied source tokenizer's own business."""
    forms = list(dict.fromkeys(step.get("type") for step in _steps(_spec(tokenizer).get("normalizer"))
                               if step.get("type") in NORMALIZERS))
    if len(forms) > 1:
        raise GGUFError(f"the tokenizer's normalizer applies {forms}; a GGUF file carries one Unicode form")
    return forms[0] if forms else "none"


def adds_bos(tokenizer) -> bool:
    """Whether the HF tokenizer puts its BOS token before a text it encodes (its post-processor), as llama.cpp
    will when the file says ``add_bos_token``."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]
