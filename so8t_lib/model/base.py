"""The base causal LM under SO8T: the tiny random preset, a pretrained model, nf4 4-bit loading.

Whatever is loaded here is a plain Hugging Face model; ``so8t.SO8TModel`` wraps it and never edits it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub import errors as hub_errors
from safetensors import SafetensorError
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from ..core.checkpoint import CheckpointError
from ..core.config import ConfigError, ModelConfig
from .checks import check_loading_info
from .pretrained import GGUF_BASES, converted_base, verify_base
from .tokenizer import load_tokenizer, tiny_tokenizer

# transformers checks a config.json through huggingface_hub's strict dataclasses (an Exception, not a ValueError)
CONFIG_REJECTED = getattr(hub_errors, "StrictDataclassError", ValueError)
ROTARY_BUFFER = "inv_freq"  # in the names of the rotary embeddings' frequency buffers (inv_freq, original_inv_freq)


def want_4bit(cfg: ModelConfig) -> bool:
    return cfg.load_in_4bit is True or (cfg.load_in_4bit == "auto" and torch.cuda.is_available())


def torch_dtype(cfg: ModelConfig) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]


def _tiny_gemma3_config(cfg: ModelConfig, tokenizer) -> Gemma3TextConfig:
    """Gemma3 at toy size: five sliding-attention layers then a full one (the pattern llama.cpp runs), q/k norms,
    tied embeddings."""
    arch = cfg.tiny
    n = arch.num_hidden_layers
    return Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=arch.hidden_size, num_hidden_layers=n,
        num_attention_heads=arch.num_attention_heads, num_key_value_heads=arch.num_key_value_heads,
        head_dim=arch.hidden_size // arch.num_attention_heads, intermediate_size=arch.intermediate_size,
        max_position_embeddings=arch.max_position_embeddings, sliding_window=arch.sliding_window,
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)],
        query_pre_attn_scalar=arch.hidden_size // arch.num_attention_heads,
        initializer_range=arch.initializer_range, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)


def build_tiny_base(cfg: ModelConfig, tokenizer=None):
    """The tiny random model (Qwen2- or Gemma3-shaped) and the project's tokenizer, in one call."""
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer(cfg.tiny.vocab_size)
    arch = cfg.tiny
    if arch.arch == "gemma3":
        hf_config = _tiny_gemma3_config(cfg, tokenizer)
        hf_config._attn_implementation = cfg.attn_implementation
        torch.manual_seed(cfg.seed)
        return _cast(Gemma3ForCausalLM(hf_config), cfg), tokenizer
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
    return _cast(Qwen2ForCausalLM(hf_config), cfg), tokenizer


def _cast(lm: PreTrainedModel, cfg: ModelConfig) -> PreTrainedModel:
    """``lm`` in the config's dtype as ``from_pretrained(dtype=...)`` loads it: the rotary frequency tables
    stay float32 (cast to bf16, the trained model's positions would differ from its checkpoint's)."""
    rotary = {name: buffer for name, buffer in lm.named_buffers() if ROTARY_BUFFER in name}
    lm.to(torch_dtype(cfg))
    for name, buffer in rotary.items():
        owner, _, leaf = name.rpartition(".")
        setattr(lm.get_submodule(owner), leaf, buffer)
    return lm


def _quantization_kwargs(cfg: ModelConfig) -> dict:
    """from_pretrained arguments for nf4 4-bit base weights (bitsandbytes), or none."""
    if not want_4bit(cfg):
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


def base_location(cfg: ModelConfig) -> str:
    """Where a non-tiny preset's base comes from: ``model.base_model`` when given, else the preset's converted
    GGUF base (cached, offline) or its hub id."""
    if cfg.base_model:
        return cfg.base_model
    if cfg.preset in GGUF_BASES:
        return str(converted_base(GGUF_BASES[cfg.preset]))
    location = cfg.resolved_base_model()
    if location is None:
        raise ConfigError(f"model.preset {cfg.preset!r} needs model.base_model (a local folder)")
    return location


def load_pretrained_base(path_or_id: str, cfg: ModelConfig):
    """from_pretrained by hub id or local folder (checked against its manifest); nf4 4-bit via bitsandbytes when
    CUDA is present (or on CPU when ``load_in_4bit: true``)."""
    local = Path(path_or_id)
    if local.is_dir() and (cfg.base_model or cfg.preset not in GGUF_BASES):  # converted_base() checked the preset's
        verify_base(local)
    kwargs: dict = {"dtype": torch_dtype(cfg), "attn_implementation": cfg.attn_implementation,
                    **_quantization_kwargs(cfg)}
    if not local.is_dir():
        try:
            lm, info = AutoModelForCausalLM.from_pretrained(path_or_id, output_loading_info=True, **kwargs)
        except OSError as exc:
            raise CheckpointError(
                f"cannot load base model {path_or_id!r}: {exc}. There is no model hub on this machine: "
                "point model.base_model at a local folder, or use the 'tiny' preset."
            ) from exc
        check_loading_info(info, path_or_id)
    else:
        lm = _load_folder(local, kwargs)
    if want_4bit(cfg):
        _disable_avx512bf16(lm)
    if local.is_dir():
        if not (local / "tokenizer.json").is_file():
            raise CheckpointError(f"{local}: no tokenizer.json beside the weights; copy the model's tokenizer files there")
        return lm, load_tokenizer(local)
    return lm, _hub_tokenizer(path_or_id)


def load_saved_base(folder: Path, cfg: ModelConfig) -> PreTrainedModel:
    """The tiny preset's base weights as saved in a checkpoint (full precision on disk;
    quantized to nf4 on loading when the config asks for 4-bit)."""
    lm = _load_folder(folder, {"dtype": torch_dtype(cfg), "attn_implementation": cfg.attn_implementation,
                               **_quantization_kwargs(cfg)})
    if want_4bit(cfg):
        _disable_avx512bf16(lm)
    return lm


def _load_folder(folder: Path, kwargs: dict) -> PreTrainedModel:
    """A local base folder's model, or CheckpointError naming the folder when its files are missing, truncated or
    describe another model (transformers raises OSError, ValueError, RuntimeError or safetensors' own error), or
    when weights would be filled at random, dropped or skipped (``check_loading_info``)."""
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: no config.json, so the base model is missing; restore the folder (copy or "
                              "convert the base again)")
    try:
        lm, info = AutoModelForCausalLM.from_pretrained(str(folder), output_loading_info=True, **kwargs)
    except torch.OutOfMemoryError:
        raise  # the device is full, the files are fine: not a reason to restore the base
    except (OSError, ValueError, RuntimeError, SafetensorError, CONFIG_REJECTED) as exc:
        raise CheckpointError(f"{folder}: base model weights are missing or damaged ({type(exc).__name__}: "
                              f"{str(exc)[:300]})") from None
    check_loading_info(info, folder)
    return lm


def quantize_tiny_base(lm: PreTrainedModel, cfg: ModelConfig) -> PreTrainedModel:
    """The freshly built tiny base in nf4: bitsandbytes quantizes while loading, so go through disk."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="so8t-tiny-base-") as tmp:
        lm.save_pretrained(tmp)
        return load_saved_base(Path(tmp), cfg)


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
