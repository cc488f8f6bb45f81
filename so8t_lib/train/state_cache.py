"""The frozen layers' output, computed once per row and kept on disk.

With ``training.freeze_below: k`` nothing below layer k trains, so the state entering layer k is a fixed
function of a row's tokens. ``FrozenStates`` computes it once for every training and validation row (one
pass of the lower layers, with a progress bar), stores it as one float32 array under
``$SO8T_CACHE/states/<key>/``, and hands batches of it to the trainer, which then runs only the layers from
k up. The key is a hash of everything the states depend on: the base (its fingerprint, or the tiny preset's
config), k, and the token ids of every row, so a changed corpus, tokenizer or prompt builds a new cache. The index
records the states file's sha256, checked the first time a process opens the cache (the demo's 3.1 GB file is read
once more to hash it): a file damaged at the same size would otherwise train
on wrong states without a word.
"""

from __future__ import annotations

import hashlib
import json
import os
import reprlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..core.batching import batches_by_length
from ..core.config import ConfigError
from ..core.io import atomic_write_text, sha256_file
from ..core.paths import cache_root
from ..core.stop_signals import StopSignals
from ..data.tables import requests_and_contexts
from ..model.base import want_4bit
from ..model.so8t import SO8TModel, position_ids_from_mask
from ..model.split import DecoderSplit
from .collate import SafetyCollator

STATES_FILE, INDEX_FILE = "states.npy", "index.json"
CACHE_VERSION = 2  # 2: the shared prefix stored once
KEY_CHARS = 24  # a cache folder's name: this many hex digits of its key's sha256
STATES_SHA256 = "states_sha256"  # the index's record of the states file's hash (absent in caches written before)
# what ends a build without running its cleanup (SIGINT already raises KeyboardInterrupt)
# states files this process has hashed, as (path, inode, size, mtime): each is hashed once per process and again only
# when it was written since
_VERIFIED: set[tuple[str, int, int, int]] = set()


def _stamp(path: Path) -> tuple[str, int, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns


def verify_states(folder: Path, index: dict) -> None:
    """ValueError when the states file's sha256 is not the one its index recorded. A cache written before the hash
    was recorded is trusted as it is and gets it recorded now (where the cache is writable), so it is not rebuilt."""
    path = folder / STATES_FILE
    stamp = _stamp(path)
    if stamp in _VERIFIED:
        return
    digest = sha256_file(path)
    recorded = index.get(STATES_SHA256)
    if recorded is None:
        try:
            atomic_write_text(folder / INDEX_FILE, json.dumps({**index, STATES_SHA256: digest}))
        except OSError:
            pass  # a read-only cache still serves
    elif recorded != digest:
        raise ValueError(f"{STATES_FILE} does not match the sha256 its index recorded (damaged after it was written)")
    _VERIFIED.add(stamp)


def read_index(folder: Path) -> dict:
    """The cache's index, checked as far as it can be without the states file; ValueError when it is not one
    ``FrozenStates.build`` writes (the cache is then damaged and built again)."""
    path = folder / INDEX_FILE
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:  # '[' * 100000: json gives up before finding anything wrong
        raise ValueError(f"{path} is nested too deeply to be an index") from None
    check_index(index, path)
    return index


def check_index(index: object, where: Path) -> None:
    """ValueError naming the field when ``index`` is not a current-format index: counts that are not counts, rows
    that are not [id, start, stored, shared], or rows whose states do not tile the file after the shared prefix
    (a start past the end would read as no states at all)."""
    if not isinstance(index, dict):
        raise ValueError(f"{where}: a JSON {type(index).__name__}, not an index object")
    for key in ("k", "tokens", "prefix"):
        if type(index.get(key)) is not int or index[key] < 0:
            raise ValueError(f"{where}: {key} is {reprlib.repr(index.get(key))}, not a count")
    rows, prefix, tokens = index.get("rows"), index["prefix"], index["tokens"]
    if not isinstance(rows, list):
        raise ValueError(f"{where}: rows is {reprlib.repr(rows)}, not a list")
    seen: set[str] = set()
    for n, row in enumerate(rows):
        if not (isinstance(row, list) and len(row) == 4 and isinstance(row[0], str) and row[0] not in seen
                and all(type(v) is int and v >= 0 for v in row[1:]) and row[3] in (0, 1)):
            raise ValueError(f"{where}: rows[{n}] is {reprlib.repr(row)}, not [a new row id, start, count, 0 or 1]")
        seen.add(row[0])
    end = prefix
    for _, start, stored, _ in sorted(rows, key=lambda row: (row[1], row[2])):
        if start != end:
            raise ValueError(f"{where}: a row's states start at {start}, not at {end} where the previous ones end")
        end += stored
    if end != tokens:
        raise ValueError(f"{where}: the prefix and rows hold {end} states, the index records tokens {tokens}")


def base_key(model: SO8TModel) -> str:
    """What the frozen layers' weights depend on: the pretrained base's fingerprint, or the tiny preset's
    architecture and seed (its base is random but seeded)."""
    cfg = model.config
    # how the weights are computed with, where it differs from the default: nf4 states are another model's
    how = ("|nf4" if want_4bit(cfg) else "") + ("" if cfg.attn_implementation == "sdpa" else f"|{cfg.attn_implementation}")
    if model.base_identity or model.base_fingerprint:  # the identity: the same weights under another transformers
        return f"{model.base_identity or model.base_fingerprint}|{cfg.dtype}{how}"
    key = {"preset": cfg.preset, "tiny": cfg.tiny.model_dump(mode="json"), "seed": cfg.seed,
           "base_model": cfg.base_model, "dtype": cfg.dtype}
    if cfg.base_model and Path(cfg.base_model).is_dir():  # a local base without a manifest: its files as they are
        key["files"] = folder_stamp(Path(cfg.base_model))
    return json.dumps(key, sort_keys=True) + how


def folder_stamp(folder: Path) -> list:
    """(name, size, modification time) of every file of a folder: replaced weights give another stamp."""
    return [[str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns]
            for p in sorted(folder.rglob("*")) if p.is_file()]


def shared_prefix(encoded: list[list[int]]) -> list[int]:
    """The longest token prefix that most rows share (the chat template's opening and the system turn): the rows
    starting with the most common first token, their common prefix, one token short of the shortest of them so
    that each keeps a token of its own. Rows cut from the left (longer than ``max_length``) do not share it."""
    if not encoded:
        return []
    firsts: dict[int, int] = {}
    for ids in encoded:
        if ids:
            firsts[ids[0]] = firsts.get(ids[0], 0) + 1
    if not firsts:
        return []
    first = max(firsts, key=firsts.get)
    group = [ids for ids in encoded if ids and ids[0] == first]
    prefix = list(group[0])
    for ids in group[1:]:
        n = 0
        while n < min(len(prefix), len(ids)) and prefix[n] == ids[n]:
            n += 1
        del prefix[n:]
    return prefix[:min(len(ids) for ids in group) - 1]


class FrozenStates:
    """Row id -> the (length, hidden) state entering layer k, for every row it was built on.

    The prefix every prompt shares (the chat template's opening and the system turn: 25 tokens of the Gemma
    default's rows, which average 91 with their targets) has the same states in every row, since attention is
    causal: it is computed and stored once, and each row keeps only the tokens after it (rows cut from the left
    keep all of theirs)."""

    def __init__(self, folder: Path) -> None:
        index = read_index(folder)
        self.folder = folder
        self.k = int(index["k"])
        self.prefix_length = int(index["prefix"])
        # row id -> (start of its stored states, how many are stored, whether the shared prefix comes first)
        self.stored: dict[str, tuple[int, int, bool]] = {row_id: (start, stored, bool(shared))
                                                         for row_id, start, stored, shared in index["rows"]}
        self.lengths: dict[str, int] = {row_id: stored + (self.prefix_length if shared else 0)
                                        for row_id, (_, stored, shared) in self.stored.items()}
        self.states = np.load(folder / STATES_FILE, mmap_mode="r")
        if self.states.ndim != 2 or self.states.shape[0] != index["tokens"]:
            raise ValueError(f"{folder}: {STATES_FILE} is an array of shape {self.states.shape}, the index records "
                             f"{index['tokens']} states")
        verify_states(folder, index)
        self.prefix = torch.from_numpy(np.array(self.states[:self.prefix_length]))
        try:  # when it was last read: `so8t cache prune --unused-days` goes by it
            os.utime(folder / INDEX_FILE)
        except OSError:
            pass  # a read-only cache still serves

    @classmethod
    def build(cls, model: SO8TModel, split: DecoderSplit, rows: list[dict], collate: SafetyCollator,
              batch_size: int = 16, progress: bool = True) -> FrozenStates:
        """The cache for ``rows`` (built now, or found from an earlier run with the same key)."""
        encoded = [collate.encode(row)[0] for row in rows]
        digest = hashlib.sha256(f"v{CACHE_VERSION}|{base_key(model)}|k={split.k}".encode())
        for row, ids in zip(rows, encoded):
            digest.update(f"|{row['id']}:".encode() + np.asarray(ids, dtype=np.int64).tobytes())
        folder = cache_root() / "states" / digest.hexdigest()[:KEY_CHARS]
        if (folder / INDEX_FILE).is_file():
            try:
                return cls(folder)
            except (ValueError, OSError, KeyError) as exc:
                print(f"frozen-state cache {folder} is damaged ({exc}); building it again")
        folder.parent.mkdir(parents=True, exist_ok=True)  # a folder of this build's own: two runs may build at once
        with StopSignals():  # SIGTERM/SIGHUP end the build through its finally: no GBs of staging left
            tmp = Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp-", dir=folder.parent))
            try:
                return cls._fill(tmp, folder, model, split, rows, collate, encoded, batch_size, progress)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def _fill(cls, tmp: Path, folder: Path, model: SO8TModel, split: DecoderSplit, rows: list[dict],
              collate: SafetyCollator, encoded: list[list[int]], batch_size: int, progress: bool) -> FrozenStates:
        prefix = shared_prefix(encoded)
        shared = [len(prefix) > 0 and ids[:len(prefix)] == prefix for ids in encoded]
        own = [ids[len(prefix):] if is_shared else ids for ids, is_shared in zip(encoded, shared)]
        lengths = [len(ids) for ids in own]
        hidden = model.causal_lm.config.hidden_size
        states = np.lib.format.open_memmap(tmp / STATES_FILE, mode="w+", dtype=np.float32,
                                           shape=(len(prefix) + sum(lengths), hidden))
        starts = (len(prefix) + np.concatenate([[0], np.cumsum(lengths)[:-1]])).astype(int).tolist()
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                prefix_cache = None
                if prefix:
                    prefix_states, prefix_cache = split.below_prefix(torch.tensor([prefix], device=device))
                    states[:len(prefix)] = prefix_states[0].float().cpu().numpy()
                for group in (True, False):  # rows after the shared prefix, then the few without it
                    members = [i for i in range(len(rows)) if shared[i] == group]
                    batches = batches_by_length([lengths[i] for i in members], batch_size)
                    if progress:
                        from tqdm.auto import tqdm

                        batches = tqdm(batches, desc=f"caching layers 0-{split.k - 1}" +
                                       (f" after the {len(prefix)}-token shared prefix" if group else
                                        " (rows without the prefix)"), unit="batch", disable=not batches)
                    for chunk in batches:
                        chunk = [members[j] for j in chunk]
                        ids, mask = _padded([own[i] for i in chunk], collate.tokenizer.pad_token_id)
                        ids, mask = ids.to(device), mask.to(device)
                        out = split.below_after(prefix_cache, ids, mask) if group else \
                            split.below(ids, mask, position_ids_from_mask(mask))
                        for j, i in enumerate(chunk):
                            states[starts[i]:starts[i] + lengths[i]] = out[j, :lengths[i]].float().cpu().numpy()
        finally:
            model.train(was_training)
        states.flush()
        del states
        index = {"version": CACHE_VERSION, "base": model.config.preset, "k": split.k,
                 "tokens": len(prefix) + sum(lengths), "hidden": hidden, "prefix": len(prefix),
                 "rows": [[row["id"], start, length, int(is_shared)]
                          for row, start, length, is_shared in zip(rows, starts, lengths, shared)],
                 STATES_SHA256: sha256_file(tmp / STATES_FILE)}
        (tmp / INDEX_FILE).write_text(json.dumps(index), encoding="utf-8")
        if folder.exists():
            try:
                return cls(folder)  # another run built the same cache meanwhile: theirs serves
            except (ValueError, OSError, KeyError):
                shutil.rmtree(folder)  # the damaged one found above
        try:
            tmp.rename(folder)
            _VERIFIED.add(_stamp(folder / STATES_FILE))  # hashed just above, as it was written
        except OSError:  # put in place by another run between the check and the rename
            pass
        return cls(folder)

    def row_states(self, row_id: str, width: int | None = None, with_prefix: bool = True) -> torch.Tensor:
        """One row's (length, hidden) states, its first ``width`` tokens when given; without the shared prefix when
        ``with_prefix`` is false (a row that does not share it keeps all of its own)."""
        start, stored, shared = self.stored[row_id]
        skip = self.prefix_length if shared and not with_prefix else 0
        width = self.lengths[row_id] if width is None else min(width, self.lengths[row_id])
        if shared and with_prefix:
            own = max(0, width - self.prefix_length)
            return torch.cat([self.prefix[:width], torch.from_numpy(np.array(self.states[start:start + own]))])
        return torch.from_numpy(np.array(self.states[start:start + max(0, width - skip)]))

    def batch(self, rows: list[dict], width: int) -> torch.Tensor:
        """(B, width, hidden) states for rows collated to ``width`` tokens (right padding; pads are zeros); a row
        longer than ``width`` is cut to its first ``width`` tokens, as its token ids were."""
        out = torch.zeros(len(rows), width, self.states.shape[1])
        for i, row in enumerate(rows):
            states = self.row_states(row["id"], width)
            out[i, :len(states)] = states
        return out


def _padded(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for j, seq in enumerate(sequences):
        ids[j, :len(seq)], mask[j, :len(seq)] = torch.tensor(seq), 1
    return ids, mask


def check_frozen_below(model: SO8TModel, k: int, pet_layers: list[int]) -> None:
    """ConfigError (a config the user fixes: one line, before anything is written) when k lies outside the model or
    something below layer k would train: its cached output would then be stale."""
    n = len(model.decoder_layers)
    if not 0 < k < n:
        raise ConfigError(f"training.freeze_below must lie in 1..{n - 1} for this {n}-layer model, got {k}")
    prefix = ".layers."
    trained_below = sorted({name for name, param in model.named_parameters() if param.requires_grad
                            and prefix in name and int(name.split(prefix, 1)[1].split(".", 1)[0]) < k})
    if trained_below or model.config.lora.modules_to_save:
        what = trained_below[:3] or list(model.config.lora.modules_to_save)
        raise ConfigError(f"training.freeze_below={k}, but {what} would train below layer {k}: set model.lora.layers "
                         f"and model.gates.layers to layers >= {k} and model.lora.modules_to_save to []")
    n_states = n + 1  # the embeddings, then each layer's output (the last after the final norm)
    # counted from either end, as the loss indexes them; an index outside the model is the loss's to name
    low = [i for i in pet_layers if -n_states <= i < n_states and i % n_states <= k]
    if low:
        raise ConfigError(f"loss.pet.layers {low} (hidden states {[i % n_states for i in low]} of 0..{n}) lie in the "
                         f"frozen part (<= {k}); PET there has no gradient: choose states above {k}, e.g. -1")
    unread = [i for i in model.read_layers if i < k]
    if unread:
        raise ConfigError(f"model.head.read_layers {unread} lie below layer {k}, whose input is all the cache keeps: "
                         f"set training.freeze_below <= {min(model.read_layers)} (the layers between stay frozen)")


@torch.no_grad()
def decide_from_states(model: SO8TModel, split: DecoderSplit, frozen: FrozenStates, rows: list[dict],
                       collate: SafetyCollator, batch_size: int = 32) -> np.ndarray:
    """Temperature-scaled probabilities (N, 3) for cached rows, running only the layers from k up: what
    ``model.decide`` gives for them. The state at the end of the prompt does not see the target tokens that follow
    (causal attention); a row whose prompt the collator cut to its last ``max_length`` tokens (the cache holds only
    those) is decided whole by ``model.decide``, as the runtime decides it."""
    cut = [len(collate.prompt_ids(row)) > collate.max_length for row in rows]
    whole = [i for i, is_cut in enumerate(cut) if is_cut]
    cached = [i for i, is_cut in enumerate(cut) if not is_cut]
    probs = np.zeros((len(rows), 3), dtype=np.float32)
    if whole:
        probs[whole] = model.decide(*requests_and_contexts([rows[i] for i in whole]), batch_size=batch_size).numpy()
    was_training = model.training
    model.eval()
    chunks, done = [], []
    try:
        device = next(model.parameters()).device
        for part_of_cached in batches_by_length([frozen.lengths[rows[i]["id"]] for i in cached], batch_size):
            indices = [cached[j] for j in part_of_cached]
            done += indices
            part = [rows[i] for i in indices]
            batch = collate(part)
            states = frozen.batch(part, batch["input_ids"].shape[1]).to(device)
            out = model(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                        decision_positions=batch["decision_positions"].to(device), return_lm_logits=False,
                        states=states, split=split)
            chunks.append(model.safety_head.probabilities(out.safety_logits).float().cpu().numpy())
    finally:
        model.train(was_training)
    if chunks:
        probs[done] = np.concatenate(chunks)
    return probs
