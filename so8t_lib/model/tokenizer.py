"""The project's own tokenizer: byte-level BPE trained locally (no hub here).

Same shape as Qwen2's tokenizer (its pre-tokenizer regex, byte-level alphabet,
ChatML special tokens and chat template), so the GGUF export can declare the
``qwen2`` pre-tokenizer and llama.cpp splits text exactly as we do. Trained only
on the corpus's training split (requests, contexts, answers, rationales).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ..core.paths import CORPUS_DIR, cache_root
from ..data.tables import load_table

logger = logging.getLogger("so8t.model")

# Qwen2's pre-tokenizer pattern (a public fact: contractions, letter runs, single digits, ...).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TOKENIZER_VERSION = 1  # bump when the recipe changes, so caches are rebuilt
TOKENIZER_FILE = "tokenizer.json"  # what a saved tokenizer folder must hold
CACHE_PREFIX, DIGEST_CHARS = "bpe-", 16  # a cached tokenizer's folder: bpe-<vocab size>-<16 hex digits>
DEFAULT_TRAIN_FILE = CORPUS_DIR / "train.jsonl"


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=IM_END, pad_token=ENDOFTEXT, unk_token=None, bos_token=None,
        model_input_names=["input_ids", "attention_mask"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "right"
    return fast


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` (deterministic for the same texts)."""
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok)


def corpus_texts(path: str | Path) -> list[str]:
    """All text a tokenizer may learn from in a corpus file: context, request, answer, rationale.

    Reads through ``so8t_lib.data.tables.load_table``, so a bad row is reported the same way everywhere.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"tokenizer training file not found: {path}. Build the corpus with "
            "`so8t corpus build` (it is committed under data/so8t_safety/)."
        )
    table = load_table(path)
    return [text for row in table[["context", "user_request", "task_output", "rationale"]].itertuples(index=False)
            for text in row if text]


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a saved tokenizer folder. Uses PreTrainedTokenizerFast directly: with transformers 5,
    AutoTokenizer on a qwen2 folder would impose Qwen2's own tokenizer class."""
    path = Path(path)
    if not (path / TOKENIZER_FILE).is_file():
        raise FileNotFoundError(f"no {TOKENIZER_FILE} in {path}")
    tok = PreTrainedTokenizerFast.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = ENDOFTEXT
    if not tok.chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_tokenizer(vocab_size: int = 8192, train_file: str | Path = DEFAULT_TRAIN_FILE) -> PreTrainedTokenizerFast:
    """The tiny preset's tokenizer: trained on the training split once, then read from the cache.

    The cache key is the hash of the training file, the vocabulary size and the recipe
    version, so editing the corpus retrains automatically. Writes are atomic.
    """
    train_file = Path(train_file)
    digest = hashlib.sha256()
    digest.update(train_file.read_bytes() if train_file.is_file() else b"")
    digest.update(f"{vocab_size}:{TOKENIZER_VERSION}".encode())
    target = cache_root() / "tokenizers" / f"{CACHE_PREFIX}{vocab_size}-{digest.hexdigest()[:DIGEST_CHARS]}"
    cached = _cached(target, warn=True)
    if cached is not None:
        return cached
    tok = train_tokenizer(corpus_texts(train_file), vocab_size=vocab_size)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        tok.save_pretrained(str(tmp))
        try:
            os.replace(tmp, target)
        except OSError:
            if _cached(target, warn=False) is None:  # not another process's copy: a broken or damaged leftover
                logger.warning("%s holds no %s that loads; replacing it with the tokenizer just trained", target,
                               TOKENIZER_FILE)
                shutil.rmtree(target, ignore_errors=True)
                with contextlib.suppress(OSError):  # another process's copy may land in between: load reads it
                    os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return load_tokenizer(target)


def _cached(target: Path, warn: bool) -> PreTrainedTokenizerFast | None:
    """The cached tokenizer in ``target``, or None when there is none or it does not load (a truncated or damaged
    file: trained again, as when missing, rather than stopping the run)."""
    if not (target / TOKENIZER_FILE).is_file():
        return None
    try:
        return load_tokenizer(target)
    except Exception as exc:  # json, Key-, Type-, RecursionError, tokenizers' bare Exception: all are remade
        if warn:
            logger.warning("cached tokenizer %s does not load (%s: %s); training it again", target,
                           exc.__class__.__name__, str(exc)[:200])
        return None
