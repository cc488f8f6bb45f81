"""PET and the composite loss on hand-made cases."""

import pytest
import torch

from so8t_lib.core.config import LossConfig, PETConfig
from so8t_lib.core.schema import ALLOW, ESCALATE, REFUSE
from so8t_lib.model import SO8TOutput
from so8t_lib.train.losses import (
    composite_loss,
    dangerous_compliance,
    pet_loss,
    pet_weight,
)


def _linear_sequence(batch=2, length=7, dim=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(batch, 1, dim, generator=gen), torch.randn(batch, 1, dim, generator=gen)
    t = torch.arange(length, dtype=torch.float32).view(1, -1, 1)
    return a + b * t


def test_pet_is_zero_on_states_linear_in_t():
    h = _linear_sequence()
    assert pet_loss(h, torch.ones(2, 7)).item() == pytest.approx(0.0, abs=1e-10)


def test_pet_is_positive_otherwise_and_matches_the_formula():
    h = _linear_sequence()
    h[0, 3] += 1.0  # one bent point
    mask = torch.ones(2, 7)
    # the bend enters three triplets with coefficients 1, -2, 1 -> (1 + 4 + 1) * ||e||^2 / D over 2*5 triplets
    expected = (1 + 4 + 1) * (16 * 1.0) / 16 / 10
    assert pet_loss(h, mask).item() == pytest.approx(expected, rel=1e-5)


def test_padding_positions_do_not_change_pet():
    h = _linear_sequence(length=9)
    h[:, 4] += torch.randn(2, 16)
    mask = torch.ones(2, 9)
    mask[0, 6:] = 0  # right padding on row 0
    mask[1, :2] = 0  # left padding on row 1
    base = pet_loss(h, mask)
    garbage = h.clone()
    garbage[0, 6:] = 1e3 * torch.randn(3, 16)
    garbage[1, :2] = -1e3 * torch.randn(2, 16)
    assert torch.allclose(pet_loss(garbage, mask), base)
    # and equals PET over the unpadded pieces, weighted by their triplet counts (4 and 5)
    row0, row1 = pet_loss(h[:1, :6], torch.ones(1, 6)), pet_loss(h[1:, 2:], torch.ones(1, 7))
    assert torch.allclose(base, (4 * row0 + 5 * row1) / 9)


def test_pet_averages_over_layers():
    h1, h2 = _linear_sequence(seed=1), _linear_sequence(seed=2)
    h2 = h2 + torch.randn_like(h2)
    mask = torch.ones(2, 7)
    assert torch.allclose(pet_loss([h1, h2], mask), (pet_loss(h1, mask) + pet_loss(h2, mask)) / 2)


def test_pet_schedule():
    cfg = PETConfig(weight=2.0)
    assert [pet_weight(p, cfg) for p in (0.0, 0.29, 0.3, 0.69, 0.7, 1.0, 1.5)] == pytest.approx(
        [0.02, 0.02, 0.2, 0.2, 2.0, 2.0, 2.0]
    )
    assert pet_weight(0.9, PETConfig(enabled=False)) == 0.0


def test_dangerous_compliance_is_mean_allow_probability_on_refuse_rows():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]))
    labels = torch.tensor([REFUSE, REFUSE, ALLOW])
    assert dangerous_compliance(logits, labels).item() == pytest.approx((0.7 + 0.1) / 2, rel=1e-5)
    assert dangerous_compliance(logits, torch.tensor([ALLOW, ESCALATE, ALLOW])).item() == 0.0


def test_composite_loss_adds_its_weighted_parts():
    torch.manual_seed(0)
    batch, length, vocab = 3, 6, 11
    logits = torch.randn(batch, length, vocab)
    safety_logits = torch.randn(batch, 3)
    hidden = tuple(torch.randn(batch, length, 8) for _ in range(3))
    lm_labels = torch.randint(0, vocab, (batch, length))
    lm_labels[:, :3] = -100
    labels = torch.tensor([ALLOW, REFUSE, ESCALATE])
    mask = torch.ones(batch, length)
    cfg = LossConfig(alpha=0.7, beta=0.3, delta=0.2)
    parts = composite_loss(SO8TOutput(logits, safety_logits, hidden[-1][:, -1], hidden), lm_labels, labels, mask, cfg, 0.8)
    expected = parts.task + 0.7 * parts.safety + 0.3 * parts.rationale + parts.pet_weight * parts.pet + 0.2 * parts.dangerous
    assert torch.allclose(parts.total, expected)
    assert parts.pet_weight == pytest.approx(cfg.pet.weight)  # p >= 0.7: full weight
    # task CE only from the ALLOW row, rationale CE only from the others
    ce = torch.nn.functional.cross_entropy
    assert torch.allclose(parts.task, ce(logits[0, 2:-1], lm_labels[0, 3:]))
    assert torch.allclose(parts.rationale, ce(logits[1:, 2:-1].reshape(-1, vocab), lm_labels[1:, 3:].reshape(-1)))
    weights = torch.tensor(cfg.class_weight_list())
    assert torch.allclose(parts.safety, ce(safety_logits, labels, weight=weights))


def test_pet_without_hidden_states_is_an_error():
    out = SO8TOutput(torch.zeros(1, 4, 5), torch.zeros(1, 3), torch.zeros(1, 8), None)
    with pytest.raises(ValueError, match="output_hidden_states"):
        composite_loss(out, torch.zeros(1, 4, dtype=torch.long), torch.tensor([0]), torch.ones(1, 4), LossConfig(), 0.5)


def test_target_only_lm_head_gives_the_same_loss():
    torch.manual_seed(1)
    head = torch.nn.Linear(8, 11, bias=False)
    hidden = torch.randn(3, 6, 8)
    lm_labels = torch.randint(0, 11, (3, 6))
    lm_labels[:, :3] = -100
    labels = torch.tensor([ALLOW, REFUSE, ESCALATE])
    mask = torch.ones(3, 6)
    safety = torch.randn(3, 3)
    cfg = LossConfig(pet={"enabled": False})
    full = composite_loss(SO8TOutput(head(hidden), safety, hidden[:, -1], None), lm_labels, labels, mask, cfg, 0.5)
    lean = composite_loss(SO8TOutput(None, safety, hidden[:, -1], None, hidden), lm_labels, labels, mask, cfg, 0.5,
                          lm_head=head)
    assert torch.allclose(full.total, lean.total) and torch.allclose(full.task, lean.task)
    assert torch.allclose(full.rationale, lean.rationale)


def test_lm_positions_per_row_is_a_per_row_capped_mean_not_the_token_mean():
    """With at most N sampled target positions per row the LM loss is the mean over all kept positions: a row counts
    with min(N, its targets), so rows with N or more targets weigh the same however long they are, where the token
    mean weighs each by its length. Each row here has one CE at every position, so the sample does not matter."""
    import torch.nn.functional as F

    from so8t_lib.core.config import TrainingConfig

    vocab, per_row, width = 5, 2, 10
    targets, levels = (1, 3, 8), (0.0, 2.0, 4.0)  # row r: targets[r] target tokens, the gold logit at levels[r]
    logits, labels = torch.zeros(3, width, vocab), torch.full((3, width), -100)
    for row, (count, level) in enumerate(zip(targets, levels)):
        labels[row, 1:1 + count] = 2
        logits[row, :, 2] = level
    ce = [float(-F.log_softmax(logits[row, 0], -1)[2]) for row in range(3)]
    out = SO8TOutput(logits, torch.zeros(3, 3), torch.zeros(3, 8), None)
    allow, mask, cfg = torch.tensor([ALLOW] * 3), torch.ones(3, width), LossConfig(pet={"enabled": False})
    for seed in range(3):
        torch.manual_seed(seed)
        sampled = composite_loss(out, labels, allow, mask, cfg, 0.5, lm_positions_per_row=per_row).task
        kept = [min(per_row, n) for n in targets]
        assert float(sampled) == pytest.approx(sum(k * c for k, c in zip(kept, ce)) / sum(kept), rel=1e-6)
    token_mean = composite_loss(out, labels, allow, mask, cfg, 0.5).task
    assert float(token_mean) == pytest.approx(sum(n * c for n, c in zip(targets, ce)) / sum(targets), rel=1e-6)
    assert abs(float(sampled) - float(token_mean)) > 0.1  # not an estimate of the token mean
    description = TrainingConfig.model_fields["lm_positions_per_row"].description
    assert "unbiased" not in description and "weigh equally" in description
