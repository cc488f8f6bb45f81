"""JSON objects whose keys are each given once.

``json.loads`` keeps the last of a repeated key without a word; a reader in front of or behind the workbench may
keep the first, so ``{"label": "ALLOW", "label": "REFUSE"}`` (or two ``user_request``s) means one thing to it and
another here. Every reader of outside JSON lines uses this hook and refuses such an object instead.
"""

from __future__ import annotations


class RepeatedKey(ValueError):
    """A key given twice in one JSON object; ``key`` names it."""

    def __init__(self, key: str) -> None:
        shown = repr(key) if len(key) <= 80 else repr(key[:80]) + f" (cut; {len(key)} characters)"
        super().__init__(f"the key {shown} is given twice in one object")
        self.key = key


def unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """``json.loads(..., object_pairs_hook=unique_keys)``: the object, or ``RepeatedKey``."""
    record: dict = {}
    for key, value in pairs:
        if key in record:
            raise RepeatedKey(key)
        record[key] = value
    return record
