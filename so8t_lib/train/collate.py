"""Rows of the safety table -> training batches for both heads.

A training concern (LM targets with the prompt masked, the position SafetyHeadB reads), so it lives
with the trainer; it renders prompts with ``so8t_lib.model.prompts``, the format every backend reads.
"""

from __future__ import annotations

import pandas as pd
import torch

from ..core.schema import LABELS
from ..data.tables import DataError
from ..model.prompts import format_prompt

IGNORE_INDEX = -100  # PyTorch's cross-entropy default: positions that carry no LM target


def target_text(row: dict) -> str:
    """What TaskHeadA learns to write: the answer for ALLOW, the rationale otherwise."""
    return (row.get("task_output") if row["label"] == "ALLOW" else row.get("rationale")) or ""


class SafetyCollator:
    """Rows -> input ids, attention mask, LM targets (prompt masked), safety labels, decision positions.

    The decision position is the prompt's last token: SafetyHeadB reads it there, so the
    head never sees the answer or rationale that follows (causal attention).
    """

    def __init__(self, tokenizer, max_length: int = 512, system_prompt: str | None = None,
                 max_target_tokens: int | None = None) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a pad token")
        if max_length < 8:
            raise ValueError("max_length must be at least 8 tokens")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.system_prompt = system_prompt
        self.max_target_tokens = max_target_tokens

    def fingerprint(self) -> str:
        """What decides the token ids of a row: part of the frozen-state cache key."""
        return f"{self.max_length}|{self.max_target_tokens}|{self.system_prompt}|{len(self.tokenizer)}"

    def prompt_ids(self, row: dict) -> list[int]:
        """The whole prompt's token ids, as ``model.decide`` reads them (``encode`` keeps the last ``max_length``)."""
        prompt = format_prompt(self.tokenizer, row["user_request"], row.get("context") or None, self.system_prompt)
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def encode(self, row: dict) -> tuple[list[int], list[int], int]:
        if row["label"] not in LABELS:
            raise DataError(f"row {row.get('id')}: label {row['label']!r} cannot be trained on (evaluation only)")
        prompt_ids = self.prompt_ids(row)[-self.max_length:]
        target = target_text(row)
        target_ids = self.tokenizer(target, add_special_tokens=False)["input_ids"] if target else []
        if target_ids and self.tokenizer.eos_token_id is not None:
            target_ids = target_ids + [self.tokenizer.eos_token_id]
        if self.max_target_tokens is not None:
            target_ids = target_ids[: self.max_target_tokens]
        target_ids = target_ids[: self.max_length - len(prompt_ids)]
        return prompt_ids + target_ids, [IGNORE_INDEX] * len(prompt_ids) + target_ids, len(prompt_ids) - 1

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        encoded = [self.encode(row) for row in rows]
        width = max(len(ids) for ids, _, _ in encoded)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        lm_labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, labels, _) in enumerate(encoded):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            lm_labels[i, : len(ids)] = torch.tensor(labels)
            attention_mask[i, : len(ids)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "lm_labels": lm_labels,
            "safety_labels": torch.tensor([LABELS.index(row["label"]) for row in rows]),
            "decision_positions": torch.tensor([pos for _, _, pos in encoded]),
        }


def table_rows(table: pd.DataFrame) -> list[dict]:
    """The table as a list of plain dicts (what a DataLoader and the collator consume)."""
    return table.to_dict(orient="records")
