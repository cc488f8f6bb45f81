"""Prompts for a GGUF file, rendered and tokenized exactly as the HF model's are: the file's own chat template and
system prompt (``so8t_lib.model.prompts``), its special tokens parsed whole, and the text between them normalized
as the HF tokenizer does (``so8t.normalizer``) before llama.cpp tokenizes it.

It exists so that the parity of the served prompt with the trained one is kept in one place; a token that differs
here flips decisions. ``GGUFPrompts`` is a part of ``gguf_backend.GGUFBackend`` and works on its llama.cpp context.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any

from ..export.gguf_meta import NORMALIZER_KEY, GGUFError
from ..model.prompts import SpecialStrings, build_messages


def _render_chat(template: str, messages: list[dict], eos_token: str | None, bos_token: str | None = None) -> str:
    """Render a chat template with transformers' own renderer (the same sandbox, extensions and
    variables as ``apply_chat_template``, e.g. ``tools`` for Qwen2.5's template)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template([messages], chat_template=template, add_generation_prompt=True,
                                        eos_token=eos_token, bos_token=bos_token or "")
    return rendered[0]


class GGUFPrompts:
    """``format_prompt`` (request -> the chat template's text) and ``prompt_tokens`` (that text -> the HF
    tokenizer's ids), from what ``_read_tokenizer`` took from the file once it was loaded."""

    path: Path
    meta: dict
    embedder: Any  # llama_cpp.Llama
    _llama: Any  # the llama_cpp module

    def _read_tokenizer(self) -> None:
        """The chat template, end and start tokens, normalizer and special tokens of the loaded file."""
        template = self.embedder.metadata.get("tokenizer.chat_template")
        if not template:
            raise GGUFError(f"{self.path}: no tokenizer.chat_template; export the checkpoint again")
        self.chat_template = template
        eos_id = self.embedder.token_eos()
        self.eos_token = self.embedder.detokenize([eos_id], special=True).decode("utf-8") if eos_id >= 0 else None
        # Gemma's template opens with the BOS token; the project's BPE has none (llama.cpp answers -1)
        bos_id = self.embedder.token_bos() if self.embedder.metadata.get("tokenizer.ggml.add_bos_token") == "true" \
            else -1
        self.bos_token = self.embedder.detokenize([bos_id], special=True).decode("utf-8") if bos_id >= 0 else None
        self.normalizer: str = self.meta[NORMALIZER_KEY]
        whole, control = self._special_tokens()
        self._special_ids = whole if self.normalizer != "none" else {}
        self.special_strings = SpecialStrings(control)  # broken in the messages, as HF's format_prompt does
        # leftmost, longest first, as HF's added-token matcher
        self._special_pattern = re.compile("|".join(
            re.escape(t) for t in sorted(self._special_ids, key=len, reverse=True))) if self._special_ids else None

    def format_prompt(self, request: str, context: str | None = None) -> str:
        messages = build_messages(request, context, system_prompt=str(self.meta["so8t.system_prompt"]))
        messages = self.special_strings.messages_as_text(messages)  # the user's "<end_of_turn>" is text
        return _render_chat(self.chat_template, messages, self.eos_token, self.bos_token)

    def prompt_tokens(self, prompt: str) -> list[int]:
        """The rendered prompt's tokens as the HF tokenizer gives them: special tokens parsed, and no BOS added
        (the chat template already starts with it; llama.cpp would add a second one). Where the file names the
        tokenizer's Unicode normalizer (``so8t.normalizer``), the text between special tokens is normalized first,
        as HF does (llama.cpp does not: NFD text got other ids, and decisions flipped)."""
        if self.normalizer == "none":
            return self.embedder.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        tokens, start = [], 0
        for match in self._special_pattern.finditer(prompt) if self._special_pattern else ():
            tokens += self._text_tokens(prompt[start:match.start()])
            tokens.append(self._special_ids[match.group()])
            start = match.end()
        return tokens + self._text_tokens(prompt[start:])

    def _text_tokens(self, text: str) -> list[int]:
        """Text with no special token in it, normalized and tokenized on its own (as HF tokenizes each piece)."""
        normalized = unicodedata.normalize(self.normalizer, text)
        return self.embedder.tokenize(normalized.encode("utf-8"), add_bos=False, special=False) if text else []

    def _special_tokens(self) -> tuple[dict[str, int], set[str]]:
        """The vocabulary's control and user-defined tokens (text -> id): what llama.cpp parses whole in a prompt,
        and HF's added tokens, which it splits off before normalizing; and the texts of those that are control
        tokens only, HF's special added tokens (Gemma's "</s>" is both, and an ordinary token to HF)."""
        model, lib = self.embedder._model, self._llama
        control, user = lib.LLAMA_TOKEN_ATTR_CONTROL, lib.LLAMA_TOKEN_ATTR_USER_DEFINED
        found, special = {}, set()
        for i in range(model.n_vocab()):
            attr = model.token_get_attr(i)
            if attr & (control | user):
                text = model.token_get_text(i)
                found[text] = i
                if attr & control and not attr & user:
                    special.add(text)
        found.pop("", None)  # an empty one would match between every two characters
        return found, special
