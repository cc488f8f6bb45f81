"""Running a decoder in two parts: the layers below k, and the layers from k up.

Training a pretrained base on a CPU is mostly the cost of its forward pass. When the lower layers are
frozen (no LoRA, no gates there), their output for a training row never changes, so it can be computed
once and kept; each step then runs only the layers from k up. Both parts are views of the one HF decoder:
shallow copies that share its layer modules (LoRA and gates included) with a config that names only their
layers, so the HF code builds the same masks and rotary embeddings and the split is exact.
"""

from __future__ import annotations

import copy
import inspect

import torch
from torch import nn


def _own_output_hooks(decoder: nn.Module) -> None:
    """Install transformers' output-capturing hooks on the decoder itself before any view is copied from it. They
    live on the layers, which the views share; a view copied from an unhooked decoder would hook the layers again
    on its first pass, and every later pass would then record each layer's output twice (hidden_states shifted)."""
    try:
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:  # a transformers that records hidden states without hooks
        return
    maybe_install_capturing_hooks(decoder)


def _view(decoder: nn.Module, layers: slice, final_norm: bool) -> nn.Module:
    """A decoder that runs ``decoder.layers[layers]`` on the given input embeddings (same modules, no copies
    of weights), ending with the final norm or without it."""
    _own_output_hooks(decoder)  # the copy below inherits the decoder's "hooks installed" mark
    view = copy.copy(decoder)
    view._modules = dict(decoder._modules)  # noqa: SLF001 - a new module table, the same module objects
    view.layers = nn.ModuleList(list(decoder.layers)[layers])
    if not final_norm:
        view.norm = nn.Identity()
    config = copy.copy(decoder.config)
    config.num_hidden_layers = len(view.layers)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = list(decoder.config.layer_types)[layers]
    view.config = config
    return view


def cache_argument(decoder: nn.Module) -> str:
    """The keyword a decoder takes its key/value cache by: ``cache`` in newer transformers, ``past_key_values``
    before."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


class DecoderSplit:
    """``below(input_ids, mask)`` -> the hidden state entering layer k (no final norm);
    ``above(states, mask)`` -> the decoder output of layers k.. given that state (final norm applied)."""

    def __init__(self, decoder: nn.Module, k: int) -> None:
        n = len(decoder.layers)
        if not 0 < k < n:
            raise ValueError(f"the split point must lie inside the decoder (1..{n - 1}), got {k}")
        self.k, self.n_layers = k, n
        self._below = _view(decoder, slice(0, k), final_norm=False)
        self._above = _view(decoder, slice(k, n), final_norm=True)

    def below(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.below_outputs(input_ids, attention_mask, position_ids).last_hidden_state

    def below_outputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                      output_hidden_states: bool = False):
        """The lower layers' HF output; its ``hidden_states`` (when asked) are the whole decoder's indices 0..k,
        the last one un-normed (this view's norm is the identity)."""
        return self._below(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           use_cache=False, output_hidden_states=output_hidden_states)

    def above(self, states: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
              output_hidden_states: bool = False):
        """The decoder output from layer k up. Its ``hidden_states`` (when asked) start with ``states``: index
        i here is index i + k of the whole decoder's tuple, and negative indices mean the same in both."""
        return self._above(inputs_embeds=states, attention_mask=attention_mask, position_ids=position_ids,
                           use_cache=False, output_hidden_states=output_hidden_states)

    def below_prefix(self, prefix_ids: torch.Tensor) -> tuple[torch.Tensor, object]:
        """A prefix every row shares, (1, P) token ids, through the lower layers once: its (1, P, hidden) state
        entering layer k and the lower layers' key/value cache of it, for ``below_after``."""
        ones = torch.ones_like(prefix_ids)
        out = self._below(input_ids=prefix_ids, attention_mask=ones, position_ids=ones.cumsum(-1) - 1, use_cache=True)
        return out.last_hidden_state, out.cache if hasattr(out, "cache") else out.past_key_values

    def below_after(self, prefix_cache, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The state entering layer k of right-padded tokens that follow the shared prefix, attending to it
        through its cache: what ``below`` gives for those positions of the whole rows (causal attention), with
        the prefix's share of the work done once instead of once per row."""
        rows, prefix = input_ids.shape[0], prefix_cache.get_seq_length()
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(rows)
        mask = torch.cat([attention_mask.new_ones(rows, prefix), attention_mask], 1)
        positions = prefix + (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return self._below(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                           **{cache_argument(self._below): cache}).last_hidden_state
