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
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM

from .checkpoint import (
    CheckpointError,
    atomic_folder,
    checkpoint_version,
    recover_interrupted_swap,
    verify_manifest,
)
from .config import LABELS, ConfigError, ModelConfig
from .gates import GatedLinear, GatePair, fold_rotation_into_linear
from .prompts import format_prompt
from .tokenizer import load_tokenizer, tiny_tokenizer

# peft asks transformers whether gradient checkpointing is on through a name transformers now
# deprecates; the warning is printed on every model build and there is nothing for a user to do.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

CHECKPOINT_FORMAT = 1
MODEL_CONFIG_FILE = "so8t_model.yaml"
ADAPTER_FILE = "adapter.safetensors"


@dataclass
class SO8TOutput:
    logits: torch.Tensor | None  # (B, T, V) from TaskHeadA, None when not requested
    safety_logits: torch.Tensor  # (B, 3) from SafetyHeadB, before temperature
    pooled: torch.Tensor  # (B, D) final-norm state at the decision position
    hidden_states: tuple[torch.Tensor, ...] | None  # decoder states (embeddings, layers..., final norm)
    last_hidden: torch.Tensor | None = None  # (B, T, D) final-norm states, for target-only LM loss


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-pad token of each row; works for left and right padding."""
    if (attention_mask.sum(-1) == 0).any():
        raise ValueError("a row of the batch has no tokens (attention_mask all zero)")
    positions = torch.arange(1, attention_mask.shape[-1] + 1, device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(-1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left padding does not shift RoPE."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class RunningStandardizer(nn.Module):
    """(x - mean) / std with mean and variance tracked over training batches (no gradient).

    The decision states of a causal LM share a large common component (after the final norm
    every state has the same length, and most of it points the same way), which a linear head
    trained with Adam has to learn to see past. Unlike BatchNorm this always normalises with the running
    estimates, so it works at batch size 1 (QLoRA) and in eval alike, and it folds exactly into
    the head's first linear layer for export.
    """

    def __init__(self, width: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        # float64: sq_mean - mean² cancels catastrophically in float32 for a large-mean, small-spread feature
        self.register_buffer("mean", torch.zeros(width, dtype=torch.float64))
        self.register_buffer("sq_mean", torch.ones(width, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def scale(self) -> torch.Tensor:
        return torch.rsqrt((self.sq_mean - self.mean.square()).clamp_min(0) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                # cumulative average at first, then an exponential one that follows the drift
                weight = max(1.0 / float(self.count + 1), self.momentum)
                x64 = x.double()
                self.mean.lerp_(x64.mean(0), weight)
                self.sq_mean.lerp_(x64.square().mean(0), weight)
                self.count += 1
        return ((x.double() - self.mean) * self.scale()).to(x.dtype)


class SafetyHeadB(nn.Module):
    """Small classifier over the decision state; small enough to travel in GGUF metadata."""

    def __init__(self, hidden_size: int, hidden_units: int = 0, dropout: float = 0.1,
                 n_labels: int = len(LABELS), standardize: bool = True):
        super().__init__()
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

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = pooled.float()
        if self.standardizer is not None:
            x = self.standardizer(x)
        return self.net(x)

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
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> SafetyHeadB:
        """Rebuild a head from exported (folded) weights: ``merge_for_export`` or GGUF metadata."""
        linear_keys = sorted(k for k in state if k.startswith("net.") and k.endswith(".weight"))
        first = state[linear_keys[0]]
        hidden_units = first.shape[0] if len(linear_keys) == 2 else 0
        head = cls(first.shape[1], hidden_units=hidden_units, dropout=0.0,
                   n_labels=state[linear_keys[-1]].shape[0], standardize=False)
        head.load_state_dict(state, strict=True)
        return head.eval()


def _want_4bit(cfg: ModelConfig) -> bool:
    return cfg.load_in_4bit is True or (cfg.load_in_4bit == "auto" and torch.cuda.is_available())


def _torch_dtype(cfg: ModelConfig) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]


def build_tiny_base(cfg: ModelConfig, tokenizer=None):
    """The tiny Qwen2-shaped model (random weights) and the project's tokenizer, in one call."""
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer(cfg.tiny.vocab_size)
    arch = cfg.tiny
    hf_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads,
        intermediate_size=arch.intermediate_size,
        max_position_embeddings=arch.max_position_embeddings,
        rope_theta=arch.rope_theta,
        initializer_range=arch.initializer_range,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    hf_config._attn_implementation = cfg.attn_implementation
    torch.manual_seed(cfg.seed)
    return Qwen2ForCausalLM(hf_config).to(_torch_dtype(cfg)), tokenizer


def _quantization_kwargs(cfg: ModelConfig) -> dict:
    """from_pretrained arguments for nf4 4-bit base weights (bitsandbytes), or none."""
    if not _want_4bit(cfg):
        return {}
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(
            "model.load_in_4bit needs bitsandbytes: pip install -e '.[quant]' (or set load_in_4bit: false)"
        ) from None
    from transformers import BitsAndBytesConfig

    kwargs: dict = {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32,
    )}
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": 0}
    return kwargs


def load_pretrained_base(path_or_id: str, cfg: ModelConfig):
    """from_pretrained by hub id or local folder; nf4 4-bit via bitsandbytes when CUDA is present
    (or on CPU when ``load_in_4bit: true``)."""
    kwargs: dict = {"dtype": _torch_dtype(cfg), "attn_implementation": cfg.attn_implementation,
                    **_quantization_kwargs(cfg)}
    try:
        lm = AutoModelForCausalLM.from_pretrained(path_or_id, **kwargs)
    except OSError as exc:
        raise CheckpointError(
            f"cannot load base model {path_or_id!r}: {exc}. There is no model hub on this machine: "
            "point model.base_model at a local folder, or use the 'tiny' preset."
        ) from exc
    if _want_4bit(cfg):
        _disable_avx512bf16(lm)
    local = Path(path_or_id)
    if local.is_dir():
        if not (local / "tokenizer.json").is_file():
            raise CheckpointError(f"{local}: no tokenizer.json beside the weights; copy the model's tokenizer files there")
        return lm, load_tokenizer(local)
    return lm, _hub_tokenizer(path_or_id)


def _load_saved_base(folder: Path, cfg: ModelConfig) -> PreTrainedModel:
    """The tiny preset's base weights as saved in a checkpoint (full precision on disk;
    quantized to nf4 on loading when the config asks for 4-bit)."""
    try:
        lm = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=_torch_dtype(cfg), attn_implementation=cfg.attn_implementation,
            **_quantization_kwargs(cfg),
        )
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}: base model weights are missing or damaged ({exc})") from None
    if _want_4bit(cfg):
        _disable_avx512bf16(lm)
    return lm


def _quantize_tiny_base(lm: PreTrainedModel, cfg: ModelConfig) -> PreTrainedModel:
    """The freshly built tiny base in nf4: bitsandbytes quantizes while loading, so go through disk."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="so8t-tiny-base-") as tmp:
        lm.save_pretrained(tmp)
        return _load_saved_base(Path(tmp), cfg)


def is_4bit(module: nn.Module) -> bool:
    return any(type(m).__name__ == "Linear4bit" for m in module.modules())


def dequantized_state_dict(lm: nn.Module) -> dict[str, torch.Tensor]:
    """Plain full-precision weights of a model whose linears may be bitsandbytes 4-bit: each
    Linear4bit's weight is dequantized (the exact values the 4-bit model computes with) and
    its quantization-state entries are dropped."""
    quantized = {name: m for name, m in lm.named_modules() if type(m).__name__ == "Linear4bit"}
    if not quantized:
        return dict(lm.state_dict())
    import bitsandbytes.functional as bnbf

    state = {}
    for key, tensor in lm.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if any(key.startswith(f"{name}.weight.") for name in quantized):
            continue  # absmax, quant_map, nested stats: described by the dequantized weight
        if owner in quantized and leaf == "weight":
            weight = quantized[owner].weight
            state[key] = bnbf.dequantize_4bit(weight.data, weight.quant_state).to(torch.float32)
        else:
            state[key] = tensor
    return state


def _hub_tokenizer(path_or_id: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path_or_id)


def _disable_avx512bf16(lm: nn.Module) -> None:
    """bitsandbytes 0.50 on CPU: training after an eval forward fails on AVX512-BF16 CPUs otherwise."""
    for module in lm.modules():
        if type(module).__name__ == "Linear4bit":
            module.support_avx512bf16_for_cpu = False


def _resolve_layers(spec, n_layers: int) -> list[int]:
    if spec == "all":
        return list(range(n_layers))
    resolved = []
    for index in spec:
        if not -n_layers <= index < n_layers:
            raise ConfigError(f"model.gates.layers: layer {index} does not exist (the model has {n_layers})")
        resolved.append(index % n_layers)
    return sorted(set(resolved))


def _split_attr(root: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    *parents, leaf = dotted.split(".")
    for name in parents:
        root = getattr(root, name)
    return root, leaf


class SO8TModel(nn.Module):
    """Base LM + LoRA + SO(8) gates + SafetyHeadB. Build with ``from_config`` or ``load``."""

    def __init__(self, lm: PreTrainedModel, tokenizer, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.model_version = config.name  # load() adds the adapter's hash (checkpoint_version)
        for param in lm.parameters():
            param.requires_grad_(False)
        torch.manual_seed(config.seed)
        if config.lora.r > 0:
            from peft import LoraConfig as PeftLoraConfig
            from peft import get_peft_model

            lm = get_peft_model(
                lm,
                PeftLoraConfig(
                    r=config.lora.r,
                    lora_alpha=config.lora.alpha,
                    lora_dropout=config.lora.dropout,
                    target_modules=list(config.lora.target_modules),
                    modules_to_save=list(config.lora.modules_to_save) or None,
                    bias="none",
                    task_type="CAUSAL_LM",
                ),
            )
        self.lm = lm
        hidden = self.causal_lm.config.hidden_size
        self.gated_layers: list[int] = []
        if config.gates.order != "none":
            layers = self.decoder_layers
            self.gated_layers = _resolve_layers(config.gates.layers, len(layers))
            for index in self.gated_layers:
                parent, leaf = _split_attr(layers[index], config.gates.target)
                gate = GatePair(hidden, config.gates.order, config.gates.init_std)
                setattr(parent, leaf, GatedLinear(getattr(parent, leaf), gate))
        self.safety_head = SafetyHeadB(hidden, config.head.hidden_units, config.head.dropout,
                                       standardize=config.head.standardize)
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
            if _want_4bit(config):
                lm = _quantize_tiny_base(lm, config)
        else:
            lm, tokenizer = load_pretrained_base(config.resolved_base_model(), config)
        return cls(lm, tokenizer, config)

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

    def gate_pairs(self) -> dict[int, GatePair]:
        pairs = {}
        for index in self.gated_layers:
            parent, leaf = _split_attr(self.decoder_layers[index], self.config.gates.target)
            pairs[index] = getattr(parent, leaf).gate
        return pairs

    def named_parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """The dual policy: task side (LoRA, R_cmd) and safety side (R_safe, SafetyHeadB)."""
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {"task": [], "safety": []}
        for name, param in self.named_parameters():
            if "lora_" in name or ".r_cmd." in name or ".modules_to_save." in name:
                groups["task"].append((name, param))
            elif ".r_safe." in name or name.startswith("safety_head."):
                groups["safety"].append((name, param))
        return groups

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything SO8T adds to the base model: LoRA, gates, the head (with its temperature)."""
        return {
            name: tensor.detach().contiguous()
            for name, tensor in self.state_dict().items()
            if _is_adapter_key(name)
        }

    # ----- forward ------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decision_positions: torch.Tensor | None = None,
        return_lm_logits: bool = True,
        output_hidden_states: bool = False,
    ) -> SO8TOutput:
        """Both heads from one pass. ``decision_positions`` (B,) picks the state SafetyHeadB reads;
        by default the last non-pad token. Training passes the end of the prompt, so the head
        never sees the target answer or rationale."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        lm = self.causal_lm
        out = lm.get_decoder()(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
            output_hidden_states=output_hidden_states,
        )
        hidden = out.last_hidden_state  # after the final norm
        if decision_positions is None:
            decision_positions = last_token_index(attention_mask)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), decision_positions]
        logits = lm.get_output_embeddings()(hidden) if return_lm_logits else None
        return SO8TOutput(logits, self.safety_head(pooled), pooled,
                          out.hidden_states if output_hidden_states else None, hidden)

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
        contexts = contexts or [None] * len(requests)
        if len(contexts) != len(requests):
            raise ValueError(f"{len(requests)} requests but {len(contexts)} contexts")
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        chunks = []
        starts = range(0, len(requests), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="deciding", unit="batch", leave=False)
        try:
            for start in starts:
                prompts = [format_prompt(self.tokenizer, r, c) for r, c in
                           zip(requests[start:start + batch_size], contexts[start:start + batch_size])]
                batch = self.tokenizer(prompts, return_tensors="pt", padding=True).to(device)
                out = self(batch["input_ids"], batch["attention_mask"], return_lm_logits=False)
                chunks.append(out.safety_logits.float().cpu() if return_logits
                              else self.safety_head.probabilities(out.safety_logits).cpu())
        finally:
            self.train(was_training)
        return torch.cat(chunks) if chunks else torch.empty(0, len(LABELS))

    @torch.no_grad()
    def generate(self, request: str, context: str | None = None, max_tokens: int = 128,
                 temperature: float = 0.0) -> str:
        """TaskHeadA's continuation of the prompt: the answer (ALLOW) or the rationale."""
        device = next(self.parameters()).device
        batch = self.tokenizer(format_prompt(self.tokenizer, request, context), return_tensors="pt").to(device)
        was_training = self.training
        self.eval()
        try:
            out = self.causal_lm.generate(
                **batch, max_new_tokens=max_tokens, do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None, top_p=None, top_k=None,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
            )
        finally:
            self.train(was_training)
        return self.tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)

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

    # ----- persistence --------------------------------------------------------------------------
    def _base_state_for_saving(self) -> dict[str, torch.Tensor]:
        """Base weights under their plain HF names (wrapper segments removed), dequantized when
        the base is 4-bit, so ``base/`` always loads as a plain HF model."""
        state = {}
        for name, tensor in dequantized_state_dict(self.causal_lm).items():
            if _is_adapter_key(name):
                continue
            plain = name.replace(".wrapped", "").replace(".base_layer", "").replace(".original_module", "")
            state[plain] = tensor
        return state

    def write_files(self, folder: Path) -> None:
        """Write the checkpoint files into an existing folder (``save`` makes it atomic)."""
        meta = {"format": CHECKPOINT_FORMAT, "model": self.config.model_dump(mode="json")}
        (folder / MODEL_CONFIG_FILE).write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")
        save_file(self.adapter_state_dict(), str(folder / ADAPTER_FILE), metadata={"format": str(CHECKPOINT_FORMAT)})
        self.tokenizer.save_pretrained(str(folder / "tokenizer"))
        if self.config.preset == "tiny":
            lm = self.causal_lm
            plain_config = copy.deepcopy(lm.config)
            for attr in ("quantization_config", "_pre_quantization_dtype"):
                if hasattr(plain_config, attr):  # base/ holds full-precision weights
                    delattr(plain_config, attr)
            with torch.random.fork_rng(devices=[]):  # the throwaway init must not shift training's RNG
                plain = type(lm)(plain_config)
            plain.load_state_dict(self._base_state_for_saving(), strict=True)
            plain.save_pretrained(str(folder / "base"))

    def save(self, path: str | Path) -> Path:
        """Write the checkpoint atomically: a temporary folder with a manifest, then one rename."""
        with atomic_folder(path) as tmp:
            self.write_files(tmp)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, **model_overrides) -> SO8TModel:
        """Load a checkpoint written by ``save``; ``model_overrides`` change ModelConfig fields
        (e.g. ``load_in_4bit=False`` to export a QLoRA run)."""
        path = resolve_checkpoint(path)
        verify_manifest(path)
        config_file = path / MODEL_CONFIG_FILE
        if not config_file.is_file():
            raise CheckpointError(f"{config_file}: missing; {path} is not an SO8T checkpoint folder")
        try:
            meta = yaml.safe_load(config_file.read_text(encoding="utf-8"))
            config = ModelConfig.model_validate({**meta["model"], **model_overrides})
        except Exception as exc:  # noqa: BLE001 - any parse failure means the same thing to the user
            raise CheckpointError(f"{config_file}: unreadable or invalid ({exc})") from None
        tokenizer = load_tokenizer(path / "tokenizer")
        if (path / "base").is_dir():
            lm = _load_saved_base(path / "base", config)
        else:
            lm, _ = load_pretrained_base(config.resolved_base_model(), config)
        model = cls(lm, tokenizer, config)
        model.load_adapter(path / ADAPTER_FILE)
        model.model_version = checkpoint_version(path, config.name)
        return model.eval()

    def load_adapter(self, file: str | Path) -> None:
        file = Path(file)
        try:
            state = load_file(str(file))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{file}: damaged or truncated checkpoint file ({exc})") from None
        expected = self.adapter_state_dict()
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or extra:
            raise CheckpointError(
                f"{file}: does not match this model config (missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''})"
            )
        for name, tensor in state.items():
            if tensor.shape != expected[name].shape:
                raise CheckpointError(f"{file}: {name} has shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)}")
        self.load_state_dict(state, strict=False)


def _is_adapter_key(name: str) -> bool:
    """What SO8T trains and saves in adapter.safetensors (everything else is the frozen base)."""
    return ("lora_" in name or ".r_safe." in name or ".r_cmd." in name or ".modules_to_save." in name
            or name.startswith("safety_head."))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a training run folder (its ``best/``, else its ``last/``)."""
    path = Path(path)
    recover_interrupted_swap(path)
    if (path / MODEL_CONFIG_FILE).is_file():
        return path
    for child in ("best", "last"):
        recover_interrupted_swap(path / child)
        if (path / child / MODEL_CONFIG_FILE).is_file():
            return path / child
    return path


def describe_probabilities(probs: torch.Tensor) -> list[dict[str, float]]:
    return [{label: round(float(p), 4) for label, p in zip(LABELS, row)} for row in probs]


__all__ = ["SO8TModel", "SO8TOutput", "SafetyHeadB", "CheckpointError", "LABELS", "resolve_checkpoint"]
