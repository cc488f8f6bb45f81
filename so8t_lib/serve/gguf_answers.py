"""Answers from a GGUF file: the task answer (ALLOW) or rationale that TaskHeadA writes after the prompt, generated
by a second llama.cpp context over the same (memory-mapped) weights, whole (``complete``) or in chunks
(``start_answer``, so that decisions run between them).

It exists so that the answer context (opened on the first answer, and only on the very file the gate loaded) and
its streaming sit apart from the decision pass. ``GGUFAnswers`` is a part of ``gguf_backend.GGUFBackend``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from ..export.gguf_meta import GGUFError


class Completion(NamedTuple):
    """One generated answer and what it cost in tokens."""

    text: str
    prompt_tokens: int
    answer_tokens: int


class GGUFAnswers:
    """``generate`` (text), ``complete`` (text and token counts) and ``start_answer`` (a ``LlamaAnswer``)."""

    eos_token: str | None
    context_limit: int  # tokens a prompt and its answer may take together (GGUFBackend: n_ctx, within the trained)
    _kwargs: dict
    _generator: Any  # llama_cpp.Llama, opened on the first answer
    _llama: Any  # the llama_cpp module

    def _answer_model(self):
        """The answer context, opened on the first answer: it must be the very file checked at start, and still
        hold the same bytes at every answer (the context maps the file, as the decision context does)."""
        if self._generator is not None:
            self._same_bytes()
        else:
            self._same_file("was replaced since the gate loaded it, so answers would come from another file than "
                            "decisions")
            generator = self._llama.Llama(**self._kwargs, embedding=False)
            self._same_file("was replaced while the answer model was being loaded")
            self._generator = generator
        return self._generator

    def _answer_room(self, request: str, context: str | None, max_tokens: int) -> tuple[list[int], int]:
        """The prompt's tokens and how many answer tokens fit after them: llama.cpp checks a prompt against its own
        padded context (a multiple of 256), not the n_ctx its buffers were sized for, and an answer past that
        overran them. The answer stops where the context ends, as the HF answer stops at the base's positions."""
        if max_tokens <= 0:  # llama.cpp reads 0 or less as "up to its own padded context", past the cap
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        tokens = self.prompt_tokens(self.format_prompt(request, context))
        if len(tokens) >= self.context_limit:
            raise GGUFError(f"a prompt has {len(tokens)} tokens, this model's context is {self.context_limit}: "
                            "no room for an answer")
        return tokens, min(max_tokens, self.context_limit - len(tokens))

    def start_answer(self, request: str, context: str | None = None, max_tokens: int = 128,
                     temperature: float = 0.0) -> LlamaAnswer:
        """An answer written in chunks (``LlamaAnswer.advance``), so that decisions run between them. The answer
        context holds one answer at a time: the runtime finishes (or drops) one before starting the next."""
        tokens, max_tokens = self._answer_room(request, context, max_tokens)
        stream = self._answer_model().create_completion(
            tokens, max_tokens=max_tokens, temperature=temperature,
            stop=[self.eos_token] if self.eos_token else None, stream=True)
        return LlamaAnswer(stream, self._same_bytes)

    def generate(self, request: str, context: str | None = None, max_tokens: int = 128,
                 temperature: float = 0.0) -> str:
        """The task answer (ALLOW) or rationale (otherwise) that TaskHeadA writes after the prompt."""
        return self.complete(request, context, max_tokens, temperature).text

    def complete(self, request: str, context: str | None = None, max_tokens: int = 128, temperature: float = 0.0,
                 stop_at_eos: bool = True) -> Completion:
        """``generate`` with llama.cpp's token counts. ``stop_at_eos=False`` drops the stop string of the chat
        template's end token (for timing longer answers, benchmarks/gguf_cuda.py); llama.cpp still stops at the
        model's own end-of-generation token, so read ``answer_tokens`` for how many were written."""
        # tokens, not text: from text llama.cpp prepends a BOS to a prompt that already starts with one
        tokens, max_tokens = self._answer_room(request, context, max_tokens)
        out = self._answer_model().create_completion(
            tokens, max_tokens=max_tokens, temperature=temperature,
            stop=[self.eos_token] if self.eos_token and stop_at_eos else None)
        self._same_bytes()
        usage = out["usage"]
        return Completion(out["choices"][0]["text"], usage["prompt_tokens"], usage["completion_tokens"])


class LlamaAnswer:
    """One llama.cpp answer in progress, over its streamed completion: ``advance(n)`` takes up to ``n`` more
    tokens and says whether it is finished; ``text`` is what has been written so far. ``check`` runs before and
    after each chunk (the backend's test that its file is unchanged: no chunk may come from other weights)."""

    def __init__(self, stream, check: Callable[[], None] | None = None) -> None:
        self._stream, self._pieces, self.finished = stream, [], False
        self._check = check

    def advance(self, tokens: int) -> bool:
        if self.finished:
            return True
        if self._check is not None:
            self._check()
        for _ in range(tokens):
            try:
                self._pieces.append(next(self._stream)["choices"][0]["text"])
            except StopIteration:
                self.finished, self._stream = True, None
                break
        if self._check is not None:
            self._check()
        return self.finished

    @property
    def text(self) -> str:
        return "".join(self._pieces)
