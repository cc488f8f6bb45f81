"""SO(8) block rotations and the R_safe / R_cmd gate pair.

The hidden size D is cut into D/8 blocks of 8 dimensions. Each block gets a
rotation R = exp(A) with A skew-symmetric (28 free parameters), so R is in SO(8)
by construction (orthogonal, det = +1) and equals the identity when A = 0. ``block_exp``
computes exp for the whole batch of blocks at once (see there why not torch's matrix_exp).

A layer's gate is a pair (R_safe, R_cmd) multiplied onto the attention output
(row vectors, y -> y @ R):

- ``safe_first``: y · R_safe · R_cmd (the SO8T default: the safety rotation acts first)
- ``cmd_first``:  y · R_cmd · R_safe
- ``commuting``:  both restricted to one maximal torus of SO(8) (rotations in the four
  fixed planes (0,1), (2,3), (4,5), (6,7) of each block), so R_safe · R_cmd = R_cmd · R_safe.
  This is the control for the claim that non-commutativity matters.
- ``none``:       no gate at all.

Both gates start at the identity by default. Then dL/dA_safe = dL/dA_cmd at the first step (for
either order), and Adam moves the two generators in parallel, scaled by their learning rates; two
rotations with parallel generators commute, so the order stops mattering. ``init_std > 0`` starts
each generator at a random point instead; ``generator_geometry`` measures how far a trained pair is from
commuting.

The gate sits on the output of ``o_proj``; ``y = a Wᵀ + b`` followed by ``y R`` is the
same linear map as ``a (Rᵀ W)ᵀ + b R``, so it folds exactly into the weights for export.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

BLOCK = 8
GateOrder = Literal["safe_first", "cmd_first", "commuting", "none"]
GATE_ORDERS: tuple[str, ...] = ("safe_first", "cmd_first", "commuting", "none")

_ROWS, _COLS = torch.triu_indices(BLOCK, BLOCK, offset=1)  # the 28 upper-triangle entries
_TORUS_ROWS = torch.tensor([0, 2, 4, 6])  # the four fixed 2-planes of the maximal torus
_TORUS_COLS = _TORUS_ROWS + 1
N_FULL_PARAMS = _ROWS.numel()  # 28 = dim so(8)
N_TORUS_PARAMS = _TORUS_ROWS.numel()  # 4 = rank of SO(8)
MAX_GENERATOR_NORM = 2.0**60  # beyond it the squarings would overflow the scale: treated as a damaged gate
MAX_TAYLOR_DEGREE = 18  # block_exp's polynomial on generators scaled to 1-norm <= 1 (1/19! ~ 8e-18)


def skew_symmetric(theta: torch.Tensor, torus: bool = False) -> torch.Tensor:
    """Map parameters (..., 28) or, on the torus, (..., 4) to skew-symmetric (..., 8, 8) generators."""
    rows, cols = (_TORUS_ROWS, _TORUS_COLS) if torus else (_ROWS, _COLS)
    expected = rows.numel()
    if theta.shape[-1] != expected:
        raise ValueError(f"expected {expected} generator parameters per block, got {theta.shape[-1]}")
    a = theta.new_zeros(*theta.shape[:-1], BLOCK, BLOCK)
    a[..., rows, cols] = theta
    return a - a.transpose(-1, -2)


def block_exp(generator: torch.Tensor) -> torch.Tensor:
    """exp(A) for a batch of small matrices (..., n, n): scaling and squaring with a Taylor polynomial.

    Why not ``torch.linalg.matrix_exp``: for a batch it squares each matrix in a host-side loop, one kernel per
    block, so on a GPU every gate call cost hundreds of launches (forward, checkpoint recompute and backward; the
    gates as a whole took 40% of a 7B QLoRA step, benchmarks/gpu_train.py). Here the whole batch shares one scaling 2^-s and one degree, both
    read once from the largest 1-norm: a call is a few batched matmuls, and autograd runs through them. The degree
    is the smallest whose next Taylor term, at the scaled norm (at most 1), is below the dtype's epsilon.
    """
    if generator.dim() < 2 or generator.shape[-1] != generator.shape[-2]:
        raise ValueError(f"block_exp needs square matrices (..., n, n), got shape {tuple(generator.shape)}")
    norm = float(generator.detach().abs().sum(-2).amax()) if generator.numel() else 0.0
    if not math.isfinite(norm) or norm > MAX_GENERATOR_NORM:
        # a diverged or damaged gate: no rotation, NaN everywhere, for the callers' non-finite checks to catch
        return torch.full_like(generator, float("nan"))
    squarings = max(0, math.ceil(math.log2(norm))) if norm > 1 else 0
    scaled_norm, eps = norm / 2.0**squarings, torch.finfo(generator.dtype).eps
    degree, next_term = 1, scaled_norm**2 / 2
    while next_term > eps and degree < MAX_TAYLOR_DEGREE:
        degree += 1
        next_term *= scaled_norm / (degree + 1)
    scaled = generator / 2.0**squarings
    eye = torch.eye(generator.shape[-1], dtype=generator.dtype, device=generator.device)
    result = eye + scaled / degree
    for k in range(degree - 1, 0, -1):  # Horner: I + A/1 (I + A/2 (... (I + A/degree)))
        result = eye + (scaled @ result) / k
    for _ in range(squarings):
        result = result @ result
    return result


def apply_block_rotation(y: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Return y · blockdiag(rotation) for y (..., D) and rotation (D/8, 8, 8), computed in float32."""
    n_blocks = rotation.shape[0]
    if y.shape[-1] != n_blocks * BLOCK:
        raise ValueError(f"hidden size {y.shape[-1]} does not match {n_blocks} blocks of {BLOCK}")
    blocks = y.float().reshape(*y.shape[:-1], n_blocks, BLOCK)
    out = torch.einsum("...bi,bij->...bj", blocks, rotation.float())
    return out.reshape(y.shape).to(y.dtype)


class SO8Rotation(nn.Module):
    """One rotation per 8-dim block, R = exp(A); the identity at initialisation."""

    def __init__(self, hidden_size: int, torus: bool = False, init_std: float = 0.0) -> None:
        super().__init__()
        if hidden_size % BLOCK:
            raise ValueError(f"hidden size {hidden_size} is not a multiple of {BLOCK}; SO(8) gates need D = 8k")
        self.hidden_size = hidden_size
        self.torus = torus
        n_params = N_TORUS_PARAMS if torus else N_FULL_PARAMS
        self.theta = nn.Parameter(torch.zeros(hidden_size // BLOCK, n_params))
        if init_std > 0:
            nn.init.normal_(self.theta, std=init_std)

    def generator(self) -> torch.Tensor:
        return skew_symmetric(self.theta.float(), torus=self.torus)

    def matrix(self) -> torch.Tensor:
        """The block rotations, shape (D/8, 8, 8)."""
        return block_exp(self.generator())

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, blocks={self.hidden_size // BLOCK}, torus={self.torus}"


class GatePair(nn.Module):
    """R_safe and R_cmd of one layer, combined in the configured order."""

    def __init__(self, hidden_size: int, order: GateOrder = "safe_first", init_std: float = 0.0) -> None:
        super().__init__()
        if order not in GATE_ORDERS or order == "none":
            raise ValueError(f"gate order must be one of safe_first, cmd_first, commuting (got {order!r})")
        self.order = order
        torus = order == "commuting"
        self.r_safe = SO8Rotation(hidden_size, torus=torus, init_std=init_std)
        self.r_cmd = SO8Rotation(hidden_size, torus=torus, init_std=init_std)

    def matrix(self) -> torch.Tensor:
        """The combined block rotation M, so that the gated output is y · M."""
        safe, cmd = self.r_safe.matrix(), self.r_cmd.matrix()
        return cmd @ safe if self.order == "cmd_first" else safe @ cmd

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        # in float32 even under bf16 autocast: a bf16 exponential or product leaves the rotation ~1e-3 off
        # orthogonal, and the export folds the float32 one
        with torch.autocast(device_type=y.device.type, enabled=False):
            return apply_block_rotation(y, self.matrix())

    def extra_repr(self) -> str:
        return f"order={self.order}"


@torch.no_grad()
def generator_geometry(theta_safe: torch.Tensor, theta_cmd: torch.Tensor, torus: bool = False) -> dict[str, float]:
    """How far a gate pair, given by its parameters (blocks, 28) or (blocks, 4), is from commuting.

    Averaged over blocks. ``cosine``: of the two parameter vectors (1: parallel generators, so the
    rotations commute); ``commutator``: ||R_safe R_cmd - R_cmd R_safe||_F relative to
    ||R_safe - I||_F ||R_cmd - I||_F (0: they commute; the ratio is bounded, so pairs of different
    sizes compare); ``safe_angle``, ``cmd_angle``: ||R - I||_F, how far each gate moved from the identity.
    """
    theta_safe, theta_cmd = theta_safe.float(), theta_cmd.float()
    safe = block_exp(skew_symmetric(theta_safe, torus))
    cmd = block_exp(skew_symmetric(theta_cmd, torus))
    eye = torch.eye(BLOCK, dtype=safe.dtype, device=safe.device)
    safe_move, cmd_move = (safe - eye).flatten(1).norm(dim=1), (cmd - eye).flatten(1).norm(dim=1)
    commutator = (safe @ cmd - cmd @ safe).flatten(1).norm(dim=1)
    relative = commutator / (safe_move * cmd_move).clamp_min(1e-12)
    cosine = torch.nn.functional.cosine_similarity(theta_safe, theta_cmd, dim=-1, eps=1e-12)
    return {"cosine": float(cosine.mean()), "commutator": float(relative.mean()),
            "safe_angle": float(safe_move.mean()), "cmd_angle": float(cmd_move.mean())}


class GatedLinear(nn.Module):
    """Wraps a layer's ``o_proj`` (plain, LoRA or 4-bit) and rotates its output by the gate pair.

    The wrapped module is kept whole as ``wrapped``, so the HF model is wrapped, not forked.
    (Deliberately not named ``base_layer``: peft treats any module with that attribute as
    one of its own layers and would unwrap the gate away when merging.)
    """

    def __init__(self, wrapped: nn.Module, gate: GatePair) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.gate = gate

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.gate(self.wrapped(x, *args, **kwargs))


@torch.no_grad()
def fold_rotation_into_linear(linear: nn.Linear, rotation: torch.Tensor) -> nn.Linear:
    """Return a new nn.Linear computing ``linear(x) · blockdiag(rotation)`` exactly.

    With y = x Wᵀ + b, y R = x (Rᵀ W)ᵀ + b R: each block of 8 output rows of W is
    replaced by Rᵀ times that block.
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(
            f"can only fold into a plain nn.Linear, got {type(linear).__name__}; "
            "merge LoRA and load the base model unquantized before exporting"
        )
    n_blocks = rotation.shape[0]
    weight = linear.weight.float()
    out_features, in_features = weight.shape
    if out_features != n_blocks * BLOCK:
        raise ValueError(f"o_proj has {out_features} outputs but the gate has {n_blocks} blocks of {BLOCK}")
    rot = rotation.float().to(weight.device)
    folded_w = torch.einsum("bji,bjk->bik", rot, weight.reshape(n_blocks, BLOCK, in_features))
    folded = nn.Linear(in_features, out_features, bias=linear.bias is not None,
                       device=weight.device, dtype=linear.weight.dtype)
    folded.weight.copy_(folded_w.reshape(out_features, in_features).to(linear.weight.dtype))
    if linear.bias is not None:
        folded.bias.copy_(apply_block_rotation(linear.bias.float(), rot).to(linear.bias.dtype))
    return folded
