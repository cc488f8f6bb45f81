"""TaskHeadA's answer written a few tokens at a time.

The gate's model runs on one thread, and a decision waiting for it must not wait for a whole answer (up to
``generation_timeout_s``, two minutes by default). An ``HFAnswer`` keeps its KV cache between calls, so the
runtime can write an answer in chunks and let the decisions that arrived meanwhile run between two of them.
Greedy chunks give exactly the tokens of one ``generate`` call (tests/test_answers.py).
"""

from __future__ import annotations

import torch
from torch import nn

from .prompts import PromptTooLong, check_prompt_lengths
from .split import cache_argument


class HFAnswer:
    """One answer in progress: ``advance(n)`` writes up to ``n`` more tokens and says whether it is finished;
    ``text`` is what has been written so far (special tokens dropped)."""

    def __init__(self, model: nn.Module, prompt: str, max_tokens: int, temperature: float) -> None:
        """``model``: an SO8TModel (its ``causal_lm`` and ``tokenizer`` write the answer)."""
        if max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        device = next(model.parameters()).device
        self._ids = model.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
        self._prompt_length = self._ids.shape[1]
        limit = model.context_length
        check_prompt_lengths([self._prompt_length], limit)
        if limit is not None and self._prompt_length == limit:
            raise PromptTooLong(f"a prompt has {limit} tokens, this model's whole context: no room for an answer")
        if limit is not None:  # the answer stops where the base's positions end, as llama.cpp's does at n_ctx
            max_tokens = min(max_tokens, limit - self._prompt_length)
        self._model, self._max_tokens, self._temperature = model, max_tokens, temperature
        self._cache, self._cache_key = None, cache_argument(model.causal_lm)
        self.finished = False

    @property
    def written(self) -> int:
        """Tokens written so far (the end-of-text token included, when it came)."""
        return self._ids.shape[1] - self._prompt_length

    @torch.no_grad()
    def advance(self, tokens: int) -> bool:
        """Write up to ``tokens`` more (fewer when the answer ends or reaches ``max_tokens``); True once finished."""
        if self.finished:
            return True
        step = min(tokens, self._max_tokens - self.written)
        model, tokenizer = self._model, self._model.tokenizer
        was_training = model.training
        model.eval()
        try:
            out = model.causal_lm.generate(
                input_ids=self._ids, attention_mask=torch.ones_like(self._ids), max_new_tokens=step, do_sample=self._temperature > 0,
                temperature=self._temperature if self._temperature > 0 else None, top_p=None, top_k=None,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                return_dict_in_generate=True, **{self._cache_key: self._cache},
            )
        finally:
            model.train(was_training)
        new = out.sequences[0, self._ids.shape[1]:]
        self._ids, self._cache = out.sequences, out.cache if hasattr(out, "cache") else out.past_key_values
        ended = len(new) < step or (tokenizer.eos_token_id is not None and bool((new == tokenizer.eos_token_id).any()))
        self.finished = ended or self.written >= self._max_tokens
        if self.finished:
            self._cache = None  # the memory goes with the answer, not with whoever still holds this object
        return self.finished

    @property
    def text(self) -> str:
        return self._model.tokenizer.decode(self._ids[0, self._prompt_length:], skip_special_tokens=True)


__all__ = ["HFAnswer"]
