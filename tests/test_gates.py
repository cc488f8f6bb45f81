"""SO(8) gate mathematics: group membership, (non-)commutativity, order, exact folding."""

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from so8t_lib.model.gates import (
    BLOCK,
    GatedLinear,
    GatePair,
    SO8Rotation,
    apply_block_rotation,
    block_exp,
    fold_rotation_into_linear,
    skew_symmetric,
)

HIDDEN = 64


def _randomize(module: nn.Module, scale: float, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)


@pytest.mark.parametrize("torus", [False, True])
@pytest.mark.parametrize("scale", [0.01, 0.5, 3.0])
def test_rotation_is_in_so8(torus, scale):
    rot = SO8Rotation(HIDDEN, torus=torus)
    _randomize(rot, scale, seed=int(scale * 100))
    r = rot.matrix().double()
    eye = torch.eye(BLOCK, dtype=torch.float64).expand_as(r)
    assert torch.allclose(r @ r.transpose(-1, -2), eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(r), torch.ones(r.shape[0], dtype=torch.float64), atol=1e-5)
    a = rot.generator()
    assert torch.equal(a, -a.transpose(-1, -2))


def test_identity_at_initialisation():
    for order in ("safe_first", "cmd_first", "commuting"):
        pair = GatePair(HIDDEN, order)
        assert torch.equal(pair.matrix(), torch.eye(BLOCK).expand(HIDDEN // BLOCK, BLOCK, BLOCK))
        y = torch.randn(2, 5, HIDDEN)
        assert torch.equal(pair(y), y)


def test_full_gates_do_not_commute_but_torus_gates_do():
    full = GatePair(HIDDEN, "safe_first")
    _randomize(full, 0.7, seed=3)
    s, c = full.r_safe.matrix(), full.r_cmd.matrix()
    assert (s @ c - c @ s).abs().max() > 1e-2

    torus = GatePair(HIDDEN, "commuting")
    _randomize(torus, 0.7, seed=4)
    s, c = torus.r_safe.matrix(), torus.r_cmd.matrix()
    assert torch.allclose(s @ c, c @ s, atol=1e-6)


def test_safe_first_and_cmd_first_differ_for_the_same_parameters():
    safe_first, cmd_first = GatePair(HIDDEN, "safe_first"), GatePair(HIDDEN, "cmd_first")
    _randomize(safe_first, 0.7, seed=5)
    cmd_first.load_state_dict(safe_first.state_dict())
    y = torch.randn(3, HIDDEN)
    assert (safe_first(y) - cmd_first(y)).abs().max() > 1e-3
    # and each is the product in its documented order (row vectors: y R_safe R_cmd)
    s, c = safe_first.r_safe.matrix(), safe_first.r_cmd.matrix()
    assert torch.allclose(safe_first(y), apply_block_rotation(apply_block_rotation(y, s), c), atol=1e-6)
    assert torch.allclose(cmd_first(y), apply_block_rotation(apply_block_rotation(y, c), s), atol=1e-6)


def test_rotation_preserves_norm_per_block():
    pair = GatePair(HIDDEN)
    _randomize(pair, 1.0, seed=6)
    y = torch.randn(4, HIDDEN)
    out = pair(y)
    assert torch.allclose(out.view(4, -1, BLOCK).norm(dim=-1), y.view(4, -1, BLOCK).norm(dim=-1), atol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_fold_into_linear_is_exact(bias):
    torch.manual_seed(0)
    linear = nn.Linear(32, HIDDEN, bias=bias)
    pair = GatePair(HIDDEN)
    _randomize(pair, 0.8, seed=7)
    gated = GatedLinear(linear, pair)
    folded = fold_rotation_into_linear(linear, pair.matrix())
    x = torch.randn(6, 32)
    assert torch.allclose(folded(x), gated(x), atol=1e-5)


def test_bad_shapes_are_reported():
    with pytest.raises(ValueError, match="multiple of 8"):
        SO8Rotation(60)
    with pytest.raises(ValueError, match="28 generator parameters"):
        skew_symmetric(torch.zeros(2, 27))
    with pytest.raises(ValueError, match="gate order"):
        GatePair(HIDDEN, "none")
    with pytest.raises(TypeError, match="plain nn.Linear"):
        fold_rotation_into_linear(nn.Identity(), torch.eye(8).expand(8, 8, 8))


def test_gates_at_the_identity_get_equal_gradients_so_they_stay_parallel_and_commute():
    """The mechanism behind the gate ablation's answer: from the identity, R_safe and R_cmd receive
    the same gradient (either order), so Adam moves their generators in parallel and they commute."""
    from so8t_lib.model.gates import GatePair, generator_geometry

    torch.manual_seed(0)
    y, target = torch.randn(5, 16), torch.randn(5, 16)
    for order in ("safe_first", "cmd_first"):
        pair = GatePair(16, order)
        ((pair(y) - target) ** 2).sum().backward()
        assert torch.equal(pair.r_safe.theta.grad, pair.r_cmd.theta.grad)
        safe_opt = torch.optim.Adam([pair.r_safe.theta], lr=3e-3)  # the two optimizers' learning rates
        cmd_opt = torch.optim.Adam([pair.r_cmd.theta], lr=1e-3)
        for _ in range(20):
            safe_opt.zero_grad(), cmd_opt.zero_grad()
            ((pair(y) - target) ** 2).sum().backward()
            safe_opt.step(), cmd_opt.step()
        geometry = generator_geometry(pair.r_safe.theta, pair.r_cmd.theta)
        # they moved far (angles ~0.4 and ~0.15 here; the tiny runs moved less and kept cosine 0.9997)
        assert geometry["safe_angle"] > 0.3 and geometry["cmd_angle"] > 0.1
        assert geometry["cosine"] > 0.95 and geometry["commutator"] < 0.1
    random_start = GatePair(16, "safe_first", init_std=0.1)  # the symmetry broken: far from commuting
    geometry = generator_geometry(random_start.r_safe.theta, random_start.r_cmd.theta)
    assert abs(geometry["cosine"]) < 0.5 and geometry["commutator"] > 0.3


def test_geometry_of_commuting_and_parallel_pairs_by_hand():
    from so8t_lib.model.gates import generator_geometry

    theta = torch.randn(3, 28) * 0.2
    parallel = generator_geometry(theta, 3 * theta)
    assert parallel["cosine"] == pytest.approx(1.0) and parallel["commutator"] < 1e-5
    torus = generator_geometry(torch.randn(3, 4), torch.randn(3, 4), torus=True)
    assert torus["commutator"] < 1e-5  # the maximal torus is abelian
    identity = generator_geometry(torch.zeros(2, 28), torch.zeros(2, 28))
    assert identity == {"cosine": 0.0, "commutator": 0.0, "safe_angle": 0.0, "cmd_angle": 0.0}


@settings(max_examples=40, deadline=None)
@given(scale=st.floats(0.0, 60.0), blocks=st.integers(1, 12), seed=st.integers(0, 2**16))
@example(scale=0.005, blocks=1, seed=0)  # where torch.linalg.matrix_exp, the reference before, was 8e-12 off
def test_block_exp_equals_scipys_expm_at_any_generator_size(scale, blocks, seed):
    """The scaling-and-squaring Taylor exponential agrees with SciPy's expm to float64 rounding, for generators
    from zero to far beyond what training produces (scale 60: several squarings). Not torch.linalg.matrix_exp:
    at scale 0.005 it is 8e-12 off a 40-digit mpmath reference (its degree for small norms), where both ours
    and SciPy's are within 1e-16."""
    import scipy.linalg

    gen = torch.Generator().manual_seed(seed)
    a = skew_symmetric(torch.randn(blocks, 28, generator=gen, dtype=torch.float64) * scale)
    reference = torch.from_numpy(scipy.linalg.expm(a.numpy()))
    assert torch.allclose(block_exp(a), reference, rtol=0, atol=1e-12 * max(1.0, scale))
    assert torch.allclose(block_exp(a.float()).double(), reference, rtol=0, atol=2e-6 * max(1.0, scale))


def test_block_exp_gradient_is_the_exponentials_and_empty_batches_pass():
    theta = (torch.randn(4, 28, dtype=torch.float64) * 0.7).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: block_exp(skew_symmetric(t)), (theta,))
    weight = torch.randn(4, 8, 8, dtype=torch.float64)
    ours = torch.autograd.grad((block_exp(skew_symmetric(theta)) * weight).sum(), theta)[0]
    torchs = torch.autograd.grad((torch.linalg.matrix_exp(skew_symmetric(theta)) * weight).sum(), theta)[0]
    assert torch.allclose(ours, torchs, atol=1e-10)
    assert block_exp(torch.zeros(0, 8, 8)).shape == (0, 8, 8)
    assert torch.equal(block_exp(torch.zeros(3, 8, 8)), torch.eye(8).expand(3, 8, 8))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e30])
def test_block_exp_of_a_non_finite_or_absurd_generator_is_nan_everywhere_not_a_crash_or_a_half_rotation(bad):
    a = skew_symmetric(torch.randn(3, 28) * 0.1)
    a[1, 0, 1] = bad
    out = block_exp(a)
    assert out.shape == a.shape and torch.isnan(out).all()


def test_block_exp_refuses_what_is_not_a_batch_of_square_matrices():
    for shape in [(1, 8), (8,), (3, 8, 7)]:
        with pytest.raises(ValueError, match="square"):
            block_exp(torch.zeros(shape))


def test_the_gate_rotates_in_float32_under_bf16_autocast():
    """Training runs under bf16 autocast on a GPU; the rotation must stay the float32 one the export folds."""
    pair = GatePair(HIDDEN, "safe_first", init_std=0.3)
    y = torch.randn(4, 5, HIDDEN)
    reference = apply_block_rotation(y, pair.matrix())
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = pair(y)
    assert out.dtype == torch.float32 and torch.allclose(out, reference, atol=1e-6)
