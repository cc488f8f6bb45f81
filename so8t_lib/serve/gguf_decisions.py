"""Decisions from a GGUF file: ONE llama.cpp prefill pass per batch of prompts gives each prompt's final-norm hidden
state (or its read layers', through ``gguf_layers.LayerCapture``) pooled as the file's ``so8t.pooling`` says, and
SafetyHeadB turns those states into temperature-scaled probabilities.

It exists so that the llama.cpp decision call and the head that reads it sit together, apart from loading the file
and from writing answers. ``GGUFDecisions`` is a part of ``gguf_backend.GGUFBackend`` and works on its decision
context (``embedder``), its safety head and the layers the head reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.schema import LABELS
from ..export.gguf_meta import GGUFError
from ..model.heads import SafetyHeadB
from .gguf_layers import LayerCapture, node_name


class GGUFDecisions:
    """``decide`` (probabilities), ``decision_states`` (the head's input for raw requests) and ``hidden_states``
    (the head's input for rendered prompts: the llama.cpp pass itself)."""

    path: Path
    meta: dict
    embedder: Any  # llama_cpp.Llama, an embedding context
    safety_head: SafetyHeadB
    read_layers: list[int]
    batch_tokens: int
    _capture: LayerCapture | None
    _llama: Any  # the llama_cpp module

    def _layer_capture(self, stop_early: bool = True) -> LayerCapture | None:
        """A capturing context when the head reads more than the final-norm state (``so8t.read_layers``) or
        pools the tokens itself (``so8t.pooling`` max)."""
        self._same_file("was replaced while it was being loaded (an export finishing?)")
        n_layers, read = self.meta["block_count"], self.meta["so8t.read_layers"]
        width = self.embedder.n_embd() * max(1, len(self.read_layers))
        if self.safety_head.input_width != width:
            raise GGUFError(f"{self.path}: SafetyHeadB reads {self.safety_head.input_width} features but "
                            f"so8t.read_layers {read or '(final)'} gives {width}; export the checkpoint again")
        if (not read or read == [n_layers]) and not self.safety_head.pools_tokens:
            return None
        read = read or [n_layers]
        if n_layers is None or max(read) > n_layers:
            raise GGUFError(f"{self.path}: so8t.read_layers {read} does not fit the file's {n_layers} layers")
        return LayerCapture(self.embedder, {node_name(i, n_layers) for i in read}, stop_early=stop_early)

    def hidden_states(self, prompts: list[str], progress: bool = False) -> np.ndarray:
        """SafetyHeadB's input for each prompt, (N, hidden x read layers): the final-norm state (or each read
        layer's) pooled as the file's ``so8t.pooling`` says, several prompts per llama.cpp batch, one sequence id
        each. ``Llama.embed`` cannot be used: it tokenizes without parsing special tokens, so ``<|im_start|>``
        would become plain text. ``progress`` shows a bar that advances as each batch is decoded."""
        from tqdm.auto import tqdm

        self._same_bytes()  # before and after the pass: llama.cpp reads the mapped file as it is now
        bar = tqdm(total=len(prompts), desc="deciding (gguf)", unit="request", leave=False, disable=not progress)
        emb, n_embd = self.embedder, self.embedder.n_embd()
        n_batch, n_seq_max = emb.n_batch, emb.context_params.n_seq_max
        fill = min(n_batch, self.batch_tokens)
        states: list[np.ndarray] = []
        pending = 0

        spans: list[tuple[int, int]] = []  # each pending prompt's tokens in the batch

        def flush() -> None:
            if self._capture is not None:
                states.extend(self._pool_captured(self._capture.decode(emb._batch), spans))
            else:
                emb._ctx.kv_cache_clear()
                emb._ctx.decode(emb._batch)
                for seq in range(pending):
                    ptr = self._llama.llama_get_embeddings_seq(emb._ctx.ctx, seq)
                    states.append(np.ctypeslib.as_array(ptr, shape=(n_embd,)).astype(np.float32).copy())
            emb._batch.reset()
            bar.update(len(spans))
            spans.clear()

        emb._batch.reset()
        used = 0
        try:
            for prompt in prompts:
                tokens = self.prompt_tokens(prompt)
                if len(tokens) > self.context_limit:  # never decide on a cut prompt: the HF backend does not cut either
                    raise GGUFError(f"a prompt has {len(tokens)} tokens, more than this model's context of "
                                    f"{self.context_limit} (n_ctx, at most the trained context_length)")
                if pending and (used + len(tokens) > fill or pending >= n_seq_max):
                    flush()
                    pending, used = 0, 0
                emb._batch.add_sequence(tokens, pending, True)
                spans.append((used, len(tokens)))
                pending, used = pending + 1, used + len(tokens)
            if pending:
                flush()
        finally:  # a failed pass leaves no sequences in the cache nor a bar on the screen
            emb._ctx.kv_cache_clear()
            emb._batch.reset()
            emb.reset()
            bar.close()
        self._same_bytes()
        return np.stack(states) if states else np.zeros((0, self.safety_head.state_width), dtype=np.float32)

    def _pool_captured(self, nodes: dict[str, np.ndarray], spans: list[tuple[int, int]]) -> list[np.ndarray]:
        """Each prompt's read layers pooled (mean over its tokens, or its last token) and concatenated; for a max
        head, its hidden layer's maximum over the prompt's tokens of the concatenated layers."""
        names = [node_name(i, self.meta["block_count"]) for i in self.read_layers]
        total = sum(length for _, length in spans)
        if any(nodes[name].shape[0] != total for name in names):
            raise GGUFError(f"{self.path}: llama.cpp returned {[nodes[n].shape[0] for n in names]} token states "
                            f"for a batch of {total} tokens")
        if self.safety_head.pools_tokens:
            with torch.no_grad():
                return [self.safety_head.token_features(
                    torch.from_numpy(np.concatenate([nodes[name][start:start + length] for name in names], 1))[None],
                    torch.ones(1, length, dtype=torch.bool))[0].numpy() for start, length in spans]
        mean = self.meta["so8t.pooling"] == "mean"
        return [np.concatenate([nodes[name][start:start + length].mean(0) if mean else nodes[name][start + length - 1]
                                for name in names]) for start, length in spans]

    def decision_states(self, requests: list[str], contexts: list[str | None] | None = None,
                        progress: bool = False) -> torch.Tensor:
        """SafetyHeadB's input (N, hidden) for raw requests, packed into llama.cpp batches as ``decide`` packs
        them: what a readout fitted outside the file (a quantization study) must see. The counterpart of
        ``SO8TModel.decision_states``."""
        contexts = [None] * len(requests) if contexts is None else contexts  # [] is a mismatch
        if len(contexts) != len(requests):
            raise ValueError(f"{len(requests)} requests but {len(contexts)} contexts")
        prompts = [self.format_prompt(r, c) for r, c in zip(requests, contexts)]
        return torch.from_numpy(self.hidden_states(prompts, progress))

    @torch.no_grad()
    def decide(self, requests: list[str], contexts: list[str | None] | None = None, batch_size: int = 32,
               progress: bool = False) -> torch.Tensor:
        """Probabilities (N, 3) over ALLOW, REFUSE, ESCALATE, temperature-scaled (``batch_size``
        is accepted for interface parity with SO8TModel.decide)."""
        states = self.decision_states(requests, contexts, progress)
        return self.safety_head.probabilities(self.safety_head(states)) if len(states) else torch.empty(0, len(LABELS))
