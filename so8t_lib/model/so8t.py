"""SO8TModel: a dual-head, SO(8)-gated wrapper around any Hugging Face causal LM.

- TaskHeadA is the base model's own LM head: it writes answers and rationales.
- SafetyHeadB reads the final-norm hidden state at the decision position (the last
  prompt token; by default the last non-pad token) and gives logits over
  ALLOW / REFUSE / ESCALATE.
- LoRA adapters come from peft; the SO(8) gate pairs wrap each configured layer's
  ``o_proj``. The HF model itself is never copied or edited in its code.

A checkpoint folder holds ``so8t_model.yaml`` (model config), ``adapter.safetensors``
(LoRA + gates + head), ``tokenizer/`` and, for the tiny preset whose random base
cannot be downloaded again, ``base/`` (a plain HF model folder).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from ..core.batching import batches_by_length
from ..core.config import ConfigError, ModelConfig
from ..core.schema import (
    LABELS,
    SAFETY_HEAD_PREFIX,
    is_adapter_key,
)
from .answers import HFAnswer
from .base import (
    base_location,
    build_tiny_base,
    is_4bit,
    load_pretrained_base,
    quantize_tiny_base,
    want_4bit,
)
from .checks import check_lora_targets, check_read_layers, gate_slot, no_peft_match
from .gates import GatedLinear, GatePair, fold_rotation_into_linear
from .heads import SafetyHeadB, pool_states, prompt_mask
from .persistence import CheckpointMixin
from .pretrained import base_record
from .prompts import SYSTEM_PROMPT, check_prompt_lengths, format_prompt, prompt_lengths
from .split import DecoderSplit

# peft asks transformers whether gradient checkpointing is on through a name transformers now
# deprecates; the warning is printed on every model build and there is nothing for a user to do.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


@dataclass
class SO8TOutput:
    logits: torch.Tensor | None  # (B, T, V) from TaskHeadA, None when not requested
    safety_logits: torch.Tensor  # (B, 3) from SafetyHeadB, before temperature
    pooled: torch.Tensor  # (B, safety_head.state_width) the decision state: the prompt's last token or mean over it
    # (D * len(read_layers)), or a max head's pooled first layer (hidden_units)
    hidden_states: tuple[torch.Tensor, ...] | None  # decoder states (embeddings, layers..., final norm)
    last_hidden: torch.Tensor | None = None  # (B, T, D) final-norm states, for target-only LM loss
    hidden_offset: int = 0  # hidden_states[i] is the whole decoder's state i + offset (a pass from layer k)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-pad token of each row; works for left and right padding."""
    if (attention_mask.sum(-1) == 0).any():
        raise ValueError("a row of the batch has no tokens (attention_mask all zero)")
    positions = torch.arange(1, attention_mask.shape[-1] + 1, device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(-1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left padding does not shift RoPE."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def resolve_layers(spec, n_layers: int, key: str = "model.gates.layers") -> list[int]:
    """'all' or a list of layer indices (negative count from the top) -> sorted, distinct, non-negative."""
    if spec == "all":
        return list(range(n_layers))
    resolved = []
    for index in spec:
        if not -n_layers <= index < n_layers:
            raise ConfigError(f"{key}: layer {index} does not exist (the model has {n_layers})")
        resolved.append(index % n_layers)
    return sorted(set(resolved))


def _split_attr(root: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    *parents, leaf = dotted.split(".")
    for name in parents:
        root = getattr(root, name)
    return root, leaf


class SO8TModel(CheckpointMixin, nn.Module):
    """Base LM + LoRA + SO(8) gates + SafetyHeadB. Build with ``from_config`` or ``load``."""

    def __init__(self, lm: PreTrainedModel, tokenizer, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.model_version = config.name  # load() adds the adapter's hash (checkpoint_version)
        self.base_fingerprint: str | None = None  # sha256 of a pretrained base's manifest (see pretrained.py)
        self.base_identity: str | None = None  # the same base's hash without version stamps (base_identity)
        for param in lm.parameters():
            param.requires_grad_(False)
        torch.manual_seed(config.seed)
        n_layers = len(lm.get_decoder().layers)
        if config.lora.r > 0:
            from peft import LoraConfig as PeftLoraConfig
            from peft import get_peft_model

            lora_layers = None if config.lora.layers == "all" else resolve_layers(config.lora.layers, n_layers,
                                                                                     "model.lora.layers")
            check_lora_targets(lm, list(config.lora.target_modules))  # peft < 0.21 has no error class of its own
            try:
                lm = get_peft_model(lm, PeftLoraConfig(
                    r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                    target_modules=list(config.lora.target_modules),
                    modules_to_save=list(config.lora.modules_to_save) or None,
                    layers_to_transform=lora_layers, bias="none", task_type="CAUSAL_LM"))
            except no_peft_match() as exc:  # names that match only outside lora.layers or in modules_to_save
                raise ConfigError(f"model.lora: {exc}") from None
        self.lm = lm
        hidden = self.causal_lm.config.hidden_size
        self.gated_layers: list[int] = []
        if config.gates.order != "none":
            layers = self.decoder_layers
            self.gated_layers = resolve_layers(config.gates.layers, len(layers))
            for index in self.gated_layers:
                parent, leaf = gate_slot(layers[index], config.gates.target, hidden)
                gate = GatePair(hidden, config.gates.order, config.gates.init_std)
                setattr(parent, leaf, GatedLinear(getattr(parent, leaf), gate))
        n_outputs = len(self.decoder_layers)  # hidden-state indices 0..n: embeddings, then each layer's output
        self.read_layers: list[int] = list(config.head.read_layers) or [n_outputs]
        check_read_layers(self.read_layers, n_outputs)
        self.safety_head = SafetyHeadB(hidden * len(self.read_layers), config.head.hidden_units, config.head.dropout,
                                       standardize=config.head.standardize, pooling=config.head.pooling)
        device = next(self.causal_lm.parameters()).device
        self.safety_head.to(device)
        for gate in self.gate_pairs().values():
            gate.to(device)

    # ----- construction -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: ModelConfig, tokenizer=None) -> SO8TModel:
        """Build from a model config: the tiny preset from scratch (with ``tokenizer`` if given,
        else the project's cached one), other presets via from_pretrained."""
        if config.preset == "tiny":
            lm, tokenizer = build_tiny_base(config, tokenizer)
            if want_4bit(config):
                lm = quantize_tiny_base(lm, config)
            return cls(lm, tokenizer, config)
        location = base_location(config)
        lm, tokenizer = load_pretrained_base(location, config)
        model = cls(lm, tokenizer, config)
        model.set_base_record(base_record(location))
        return model

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each decoder layer's activations in the backward pass (non-reentrant)."""
        lm = self.causal_lm
        if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5 name
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # ----- structure ----------------------------------------------------------------------------
    @property
    def causal_lm(self) -> PreTrainedModel:
        """The HF causal LM (with LoRA layers injected when LoRA is on)."""
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.causal_lm.get_decoder().layers

    @property
    def context_length(self) -> int | None:
        """The base's position limit: a longer prompt is refused, never decided on positions the model never had."""
        limit = getattr(self.causal_lm.config.get_text_config(), "max_position_embeddings", None)  # multimodal: text
        return int(limit) if limit else None

    @property
    def system_prompt(self) -> str:
        return self.config.system_prompt or SYSTEM_PROMPT

    def format_prompt(self, request: str, context: str | None = None) -> str:
        return format_prompt(self.tokenizer, request, context, self.system_prompt)

    def split(self, k: int) -> DecoderSplit:
        """The decoder as two views, below and from layer k (for training with frozen, cached lower layers)."""
        return DecoderSplit(self.causal_lm.get_decoder(), k)

    def gate_slots(self) -> Iterator[tuple[int, nn.Module, str]]:
        """(layer index, parent module, attribute) of each gated projection: where a tool swaps a gate in or out."""
        for index in self.gated_layers:
            yield index, *_split_attr(self.decoder_layers[index], self.config.gates.target)

    def gate_pairs(self) -> dict[int, GatePair]:
        return {index: getattr(parent, leaf).gate for index, parent, leaf in self.gate_slots()}

    def named_parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """The dual policy: task side (LoRA, R_cmd) and safety side (R_safe, SafetyHeadB)."""
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {"task": [], "safety": []}
        for name, param in self.named_parameters():
            if "lora_" in name or ".r_cmd." in name or ".modules_to_save." in name:
                groups["task"].append((name, param))
            elif ".r_safe." in name or name.startswith(SAFETY_HEAD_PREFIX):
                groups["safety"].append((name, param))
        return groups

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything SO8T adds to the base model: LoRA, gates, the head (with its temperature)."""
        return {
            name: tensor.detach().contiguous()
            for name, tensor in self.state_dict().items()
            if is_adapter_key(name)
        }

    # ----- forward ------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decision_positions: torch.Tensor | None = None,
        return_lm_logits: bool = True,
        output_hidden_states: bool = False,
        states: torch.Tensor | None = None,
        split: DecoderSplit | None = None,
    ) -> SO8TOutput:
        """Both heads from one pass. ``decision_positions`` (B,) marks the end of the prompt (by default the
        last non-pad token): SafetyHeadB reads the state there, or the mean over the prompt up to it, so in
        training the head never sees the target answer or rationale. Given ``split`` and ``states`` (the
        state entering its layer k, e.g. from the frozen-layer cache), only layers k.. run: the same result."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out, offset = self._run_decoder(input_ids, attention_mask, output_hidden_states, states, split)
        hidden = out.last_hidden_state  # after the final norm
        if decision_positions is None:
            decision_positions = last_token_index(attention_mask)
        pooled = self._decision_state(out, offset, attention_mask, decision_positions)
        logits = self.causal_lm.get_output_embeddings()(hidden) if return_lm_logits else None
        return SO8TOutput(logits, self.safety_head(pooled), pooled,
                          out.hidden_states if output_hidden_states else None, hidden, offset)

    def _run_decoder(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, output_hidden_states: bool,
                     states: torch.Tensor | None, split: DecoderSplit | None):
        """The decoder's output and the hidden-state index its ``hidden_states`` start at (0, or the split's k)."""
        position_ids = position_ids_from_mask(attention_mask)
        every_layer = output_hidden_states or self.read_layers != [len(self.decoder_layers)]
        if states is None:
            return self.causal_lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                                position_ids=position_ids, use_cache=False,
                                                output_hidden_states=every_layer), 0
        if split is None:
            raise ValueError("states given without the split they enter")
        return split.above(states.to(self.causal_lm.dtype), attention_mask, position_ids, every_layer), split.k

    def prompt_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, decision_positions: torch.Tensor,
                      states: torch.Tensor | None = None, split: DecoderSplit | None = None) -> tuple:
        """The states a token-pooling head reads, unpooled: (B, T, D * len(read_layers)) and the (B, T) prompt
        mask (what a max head's warm start fits on)."""
        if states is not None and split is not None and self.read_layers == [split.k]:
            # the head reads the very state the cache holds (cast as the layers above would see it): nothing runs
            return states.to(self.causal_lm.dtype), prompt_mask(attention_mask, decision_positions)
        out, offset = self._run_decoder(input_ids, attention_mask, False, states, split)
        return self._read_states(out, offset), prompt_mask(attention_mask, decision_positions)

    def _read_states(self, out, offset: int) -> torch.Tensor:
        """Each of ``read_layers``' (B, T, D) states, concatenated along the features."""
        parts = [self._layer_output(out, offset, index) for index in self.read_layers]
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)

    def _layer_output(self, out, offset: int, index: int) -> torch.Tensor:
        if index == len(self.decoder_layers):
            return out.last_hidden_state
        if index < offset:
            raise ValueError(f"head.read_layers has {index}, below layer {offset} where this pass starts: "
                             f"set training.freeze_below <= {min(self.read_layers)}")
        return out.hidden_states[index - offset]

    def _decision_state(self, out, offset: int, attention_mask: torch.Tensor,
                        decision_positions: torch.Tensor) -> torch.Tensor:
        """SafetyHeadB's input: each of ``read_layers`` pooled, concatenated (or, for a token-pooling head, its
        pooled first layer). ``out.hidden_states`` starts at hidden-state index ``offset`` (the split point when
        the lower layers' output came from the cache)."""
        if self.safety_head.pools_tokens:
            return self.safety_head.token_features(self._read_states(out, offset),
                                                   prompt_mask(attention_mask, decision_positions))
        parts = [pool_states(self._layer_output(out, offset, index), attention_mask, decision_positions,
                             self.config.head.pooling) for index in self.read_layers]
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)

    @torch.no_grad()
    def decide(
        self,
        requests: list[str],
        contexts: list[str | None] | None = None,
        batch_size: int = 32,
        progress: bool = False,
        return_logits: bool = False,
    ) -> torch.Tensor:
        """Probabilities (N, 3) over ALLOW, REFUSE, ESCALATE for raw requests: one prefill per batch,
        no generation. Temperature-scaled when a temperature has been fitted; ``return_logits``
        gives the head's raw logits instead (for fitting the temperature)."""
        result = torch.empty(len(requests), len(LABELS))
        for rows, out in self._prefill(requests, contexts, batch_size, progress):
            result[rows] = (out.safety_logits.float().cpu() if return_logits
                            else self.safety_head.probabilities(out.safety_logits).float().cpu())
        return result

    @torch.no_grad()
    def decision_states(self, requests: list[str], contexts: list[str | None] | None = None,
                        batch_size: int = 32, progress: bool = False) -> torch.Tensor:
        """SafetyHeadB's input (N, hidden) for raw requests, computed as ``decide`` computes it: what a readout
        fitted outside the model (a probe, a quantization study) must see."""
        result = torch.empty(len(requests), self.safety_head.state_width)
        for rows, out in self._prefill(requests, contexts, batch_size, progress):
            result[rows] = out.pooled.float().cpu()
        return result

    def _prefill(self, requests: list[str], contexts: list[str | None] | None, batch_size: int,
                 progress: bool) -> Iterator[tuple[list[int], SO8TOutput]]:
        """One forward pass (no LM logits) per batch of formatted prompts, in eval mode, with the indices of the
        requests it holds. Prompts of similar token length share a batch: unsorted, a batch of 32 pads every row
        to its longest, close to twice the tokens on the corpus."""
        contexts = [None] * len(requests) if contexts is None else contexts  # [] is a mismatch
        if len(contexts) != len(requests):
            raise ValueError(f"{len(requests)} requests but {len(contexts)} contexts")
        device = next(self.parameters()).device
        prompts = [self.format_prompt(r, c) for r, c in zip(requests, contexts)]
        lengths = prompt_lengths(self.tokenizer, prompts)
        check_prompt_lengths(lengths, self.context_length)  # before eval(): a refusal leaves the mode as it was
        was_training = self.training
        self.eval()
        batches = batches_by_length(lengths, batch_size)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="deciding", unit="batch", leave=False)
        depth = max(self.read_layers)  # the head reads nothing above hidden state `depth`: the layers there need not run
        lower = self.split(depth) if depth < len(self.decoder_layers) else None
        try:
            for rows in batches:
                batch = self.tokenizer([prompts[i] for i in rows], return_tensors="pt", padding=True,
                                       add_special_tokens=False).to(device)
                ids, mask = batch["input_ids"], batch["attention_mask"]
                yield rows, (self(ids, mask, return_lm_logits=False) if lower is None else self._decide_below(lower, ids, mask))
        finally:
            self.train(was_training)

    def _decide_below(self, lower: DecoderSplit, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SO8TOutput:
        """SafetyHeadB from the layers below the split alone (the same decision as the whole pass, in that share of its time)."""
        out = lower.below_outputs(input_ids, attention_mask, position_ids_from_mask(attention_mask), True)
        pooled = self._decision_state(out, 0, attention_mask, last_token_index(attention_mask))
        return SO8TOutput(None, self.safety_head(pooled), pooled, None)

    def start_answer(self, request: str, context: str | None = None, max_tokens: int = 128,
                     temperature: float = 0.0) -> HFAnswer:
        """An answer written in chunks (``HFAnswer.advance``): the runtime lets decisions run between them."""
        return HFAnswer(self, self.format_prompt(request, context), max_tokens, temperature)

    def generate(self, request: str, context: str | None = None, max_tokens: int = 128,
                 temperature: float = 0.0) -> str:
        """TaskHeadA's continuation of the prompt: the answer (ALLOW) or the rationale, in one pass."""
        answer = self.start_answer(request, context, max_tokens, temperature)
        answer.advance(max_tokens)
        return answer.text

    # ----- export -------------------------------------------------------------------------------
    @torch.no_grad()
    def merge_for_export(self) -> tuple[PreTrainedModel, dict[str, torch.Tensor]]:
        """A plain HF model computing the same function (LoRA merged, gates folded into o_proj),
        plus SafetyHeadB's weights. The live model is left untouched."""
        if is_4bit(self.causal_lm):
            raise RuntimeError(
                "cannot merge into 4-bit weights exactly: reload the checkpoint with "
                "model.load_in_4bit=false (fp16/bf16/fp32 base) and export from that"
            )
        clone = copy.deepcopy(self.lm)
        merged = clone.merge_and_unload() if hasattr(clone, "merge_and_unload") else clone
        layers = merged.get_decoder().layers
        for index in self.gated_layers:
            parent, leaf = _split_attr(layers[index], self.config.gates.target)
            wrapper = getattr(parent, leaf)
            setattr(parent, leaf, fold_rotation_into_linear(wrapper.wrapped, wrapper.gate.matrix()))
        head_state = self.safety_head.folded_state_dict()
        return merged.eval(), head_state


__all__ = ["SO8TModel", "SO8TOutput", "last_token_index", "position_ids_from_mask"]
