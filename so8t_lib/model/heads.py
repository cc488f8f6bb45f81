"""SafetyHeadB: the small classifier that decides ALLOW / REFUSE / ESCALATE from the prompt's hidden states.

It is small (linear, or one hidden layer of at most 256 units) because it travels inside the GGUF
file's metadata; a running standardiser in front of it folds exactly into its first layer at export.
TaskHeadA needs no code here: it is the base model's own LM head.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.schema import LABELS, POOLINGS

STANDARDIZER_EPS = 1e-5  # added to the variance: a constant feature scales to zero, not to infinity


class RunningStandardizer(nn.Module):
    """(x - mean) / std with mean and variance tracked over training batches (no gradient).

    The decision states of a causal LM share a large common component (after the final norm
    every state has the same length, and most of it points the same way), which a linear head
    trained with Adam has to learn to see past. Unlike BatchNorm this always normalises with the running
    estimates, so it works at batch size 1 (QLoRA) and in eval alike, and it folds exactly into
    the head's first linear layer for export.
    """

    def __init__(self, width: int, momentum: float = 0.1, eps: float = STANDARDIZER_EPS) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        # float64: sq_mean - mean² cancels catastrophically in float32 for a large-mean, small-spread feature
        self.register_buffer("mean", torch.zeros(width, dtype=torch.float64))
        self.register_buffer("sq_mean", torch.ones(width, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def scale(self) -> torch.Tensor:
        return torch.rsqrt((self.sq_mean - self.mean.square()).clamp_min(0) + self.eps)

    @torch.no_grad()
    def observe(self, rows: torch.Tensor) -> None:
        """Fold a batch of (N, width) rows into the running statistics."""
        # cumulative average at first, then an exponential one that follows the drift
        weight = max(1.0 / float(self.count + 1), self.momentum)
        x64 = rows.double()
        self.mean.lerp_(x64.mean(0), weight)
        self.sq_mean.lerp_(x64.square().mean(0), weight)
        self.count += 1

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(..., width) scaled by the running statistics, whatever the leading shape (rows, or rows x tokens)."""
        return ((x.double() - self.mean) * self.scale()).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.observe(x)
        return self.normalize(x)


class SafetyHeadB(nn.Module):
    """Small classifier over the decision state; small enough to travel in GGUF metadata.

    With ``pooling="max"`` the decision state is not a pooled hidden state: the first layer (Linear + GELU) runs on
    every prompt token and its maximum over the tokens is the state the last layer reads, so a few tokens that make
    a request harmful are not averaged away among the many that do not (benchmarks/token_pooling_probe.py). The
    weights are the same two linear layers as a ``hidden_units`` head; only where the pooling happens moves.
    """

    def __init__(self, hidden_size: int, hidden_units: int = 0, dropout: float = 0.1,
                 n_labels: int = len(LABELS), standardize: bool = True, pooling: str = "mean"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if pooling == "max" and not hidden_units:
            raise ValueError("max pooling needs a hidden layer to pool (model.head.hidden_units > 0)")
        self.pooling = pooling
        self.standardizer = RunningStandardizer(hidden_size) if standardize else None
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        width = hidden_size
        if hidden_units:
            layers += [nn.Linear(hidden_size, hidden_units), nn.GELU(approximate="tanh")]
            width = hidden_units
        layers.append(nn.Linear(width, n_labels))
        self.net = nn.Sequential(*layers)
        # Calibration temperature (fitted after training); logits are divided by it for probabilities.
        self.register_buffer("temperature", torch.ones(()))

    @property
    def pools_tokens(self) -> bool:
        """True when the head pools the prompt's tokens itself (``token_features``) instead of reading one state."""
        return self.pooling == "max"

    def token_features(self, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The decision state of a token-pooling head: (B, T, width) states and a (B, T) mask of the prompt's
        tokens -> (B, hidden_units), the maximum over the kept tokens of the first layer's output."""
        x = tokens.float()
        keep = keep.bool()
        if not bool(keep.any(1).all()):
            raise ValueError("every row needs at least one prompt token to pool")
        if self.standardizer is not None:
            if self.standardizer.training:  # its own mode: a warm start fixes the statistics while the head trains
                self.standardizer.observe(x[keep])
            x = self.standardizer.normalize(x)
        hidden = self.net[2](self.net[1](self.net[0](x)))
        return hidden.masked_fill(~keep.unsqueeze(-1), float("-inf")).amax(1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits from the decision state (for ``pools_tokens``, the output of ``token_features``)."""
        if self.pools_tokens:
            return self.net[3](pooled.float())
        x = pooled.float()
        if self.standardizer is not None:
            x = self.standardizer(x)
        return self.net(x)

    @property
    def input_width(self) -> int:
        """How many features per token or state it reads: the hidden size times the number of states it reads."""
        return next(m for m in self.net if isinstance(m, nn.Linear)).in_features

    @property
    def state_width(self) -> int:
        """The width of the decision state ``forward`` reads: ``input_width``, or the hidden units when it pools tokens."""
        return self.net[1].out_features if self.pools_tokens else self.input_width

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits / self.temperature, dim=-1)

    @torch.no_grad()
    def folded_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights of the same function with the standardiser folded into the first linear layer
        (W' = W·diag(s), b' = b − W·(μ·s)): plain linears and the temperature, for export."""
        state = {k: v.detach().clone() for k, v in self.state_dict().items() if not k.startswith("standardizer.")}
        if self.standardizer is not None:
            first = next(i for i, m in enumerate(self.net) if isinstance(m, nn.Linear))
            scale = self.standardizer.scale()
            weight, bias = state[f"net.{first}.weight"].double(), state[f"net.{first}.bias"].double()
            state[f"net.{first}.bias"] = (bias - weight @ (self.standardizer.mean * scale)).float()
            state[f"net.{first}.weight"] = (weight * scale).float()
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], pooling: str = "mean") -> SafetyHeadB:
        """Rebuild a head from exported (folded) weights: ``merge_for_export`` or GGUF metadata."""
        linear_keys = sorted(k for k in state if k.startswith("net.") and k.endswith(".weight"))
        first = state[linear_keys[0]]
        hidden_units = first.shape[0] if len(linear_keys) == 2 else 0
        head = cls(first.shape[1], hidden_units=hidden_units, dropout=0.0,
                   n_labels=state[linear_keys[-1]].shape[0], standardize=False, pooling=pooling)
        head.load_state_dict(state, strict=True)
        return head.eval()


def prompt_mask(attention_mask: torch.Tensor, decision_positions: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: each row's real tokens up to and including its decision position (the prompt)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return attention_mask.bool() & (positions[None, :] <= decision_positions[:, None])


def pool_states(hidden: torch.Tensor, attention_mask: torch.Tensor, decision_positions: torch.Tensor,
                mode: str = "last") -> torch.Tensor:
    """The decision state of each row: the state at its decision position (``last``), or the mean over its
    real tokens up to and including that position (``mean``, what llama.cpp's MEAN pooling gives for a prompt)."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if mode == "last":
        return hidden[rows, decision_positions]
    if mode != "mean":
        raise ValueError(f"pool_states pools 'last' or 'mean', got {mode!r} (a 'max' head pools inside itself)")
    weights = prompt_mask(attention_mask, decision_positions).to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1)
