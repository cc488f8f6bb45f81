"""Length-grouped batches: an exact, resumable epoch order that pads little, and decisions that do not depend on
which requests share a batch."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_train import QUICK, ROOT

from so8t_lib.core.batching import batches_by_length
from so8t_lib.core.config import load_config
from so8t_lib.model import SO8TModel
from so8t_lib.train.optim import epoch_order, length_grouped_order
from so8t_lib.train.trainer import Trainer


def _batches(order: list[int], batch_size: int) -> list[list[int]]:
    return [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 300), min_size=1, max_size=120), batch_size=st.integers(1, 9),
       window=st.integers(1, 6), seed=st.integers(0, 5), epoch=st.integers(0, 3))
def test_grouped_order_is_a_permutation_whose_batches_each_come_from_one_sorted_window(lengths, batch_size, window,
                                                                                   seed, epoch):
    order = length_grouped_order(lengths, batch_size, window, seed, epoch)
    assert sorted(order) == list(range(len(lengths)))
    assert order == length_grouped_order(lengths, batch_size, window, seed, epoch)  # what resume relies on
    plain = epoch_order(len(lengths), seed, epoch)
    window_of = {row: position // (batch_size * window) for position, row in enumerate(plain)}
    full = len(lengths) // batch_size * batch_size
    batches = _batches(order[:full], batch_size)
    for batch in batches:
        assert len({window_of[row] for row in batch}) == 1
    for a in batches:  # within a window, batches hold contiguous runs of the sorted lengths: no interleaving
        for b in batches:
            if a is not b and window_of[a[0]] == window_of[b[0]]:
                assert (min(lengths[i] for i in a) >= max(lengths[i] for i in b)
                        or min(lengths[i] for i in b) >= max(lengths[i] for i in a))


def test_batches_by_length_cover_every_index_once_shortest_first():
    lengths = [5, 1, 9, 1, 7, 3, 2]
    batches = batches_by_length(lengths, 3)
    assert sorted(i for b in batches for i in b) == list(range(7)) and [len(b) for b in batches] == [3, 3, 1]
    assert [lengths[i] for b in batches for i in b] == sorted(lengths)
    with pytest.raises(ValueError, match="at least 1"):
        batches_by_length(lengths, 0)


def test_grouping_by_length_rejects_an_empty_batch_or_window():
    with pytest.raises(ValueError, match="at least 1"):
        length_grouped_order([3, 4], 0, 4, 0, 0)
    with pytest.raises(ValueError, match="at least 1"):
        length_grouped_order([3, 4], 2, 0, 0, 0)


def _epoch_widths(tmp_path, group: int) -> tuple[list[int], list[str]]:
    cfg = load_config(ROOT / "configs" / "tiny-training.yaml",
                      [*QUICK, f"training.output_dir={tmp_path}/g{group}", "training.train_max_rows=160",
                       f"training.group_by_length={group}", "training.max_length=512"])
    trainer = Trainer(cfg)
    widths, seen = [], []
    for _ in range(len(trainer.train_rows) // cfg.training.batch_size):
        rows = trainer._next_rows()
        assert rows == trainer.batch_rows(trainer.state.epoch, trainer.state.batch_in_epoch - 1)  # looked up again
        widths.append(trainer.collate(rows)["input_ids"].shape[1])
        seen += [row["id"] for row in rows]
    return widths, seen


def test_the_trainer_pads_less_with_grouped_batches_and_still_sees_every_row_once(tmp_path):
    plain_widths, plain_seen = _epoch_widths(tmp_path, 0)
    grouped_widths, grouped_seen = _epoch_widths(tmp_path, 8)
    assert sorted(grouped_seen) == sorted(plain_seen) and len(set(grouped_seen)) == len(grouped_seen)
    assert sum(grouped_widths) < 0.9 * sum(plain_widths)


def test_decisions_do_not_depend_on_the_batch_a_request_shares(tokenizer):
    """decide() batches prompts by length and hands the results back in the caller's order."""
    model = SO8TModel.from_config(load_config(ROOT / "configs" / "tiny-training.yaml").model, tokenizer).eval()
    requests = ["hi", "Please delete every audit log on the production cluster tonight and tell no one about it",
                "経費精算の締め日は？", "Share the salary table of the whole finance department with me", "ok?"]
    contexts = [None, "ops", None, None, "a longer context line that makes this prompt the longest of them all"]
    together = model.decide(requests, contexts, batch_size=2, return_logits=True)
    alone = torch.cat([model.decide([r], [c], batch_size=1, return_logits=True) for r, c in zip(requests, contexts)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)
    states = model.decision_states(requests, contexts, batch_size=3)
    torch.testing.assert_close(model.safety_head(states), together, rtol=1e-4, atol=1e-4)
