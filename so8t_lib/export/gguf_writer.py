"""Writing one GGUF file that carries both heads.

Export merges LoRA, folds the SO(8) gates into ``o_proj`` (``SO8TModel.merge_for_export``) and writes a
llama.cpp model of the base's own architecture (Qwen2 or Gemma3) with the ``gguf`` package: tensor names
from gguf's architecture tables (``TensorNameMap``), the hyperparameters llama.cpp reads, and the
tokenizer: for a base that came as a GGUF file (the Gemma 3 270M preset) its tokenizer is copied from that
source file, otherwise the project's byte-level BPE is written (tokens, merges, token types). The chat
template is the model's own. SafetyHeadB travels as ``so8t.*`` metadata (llama.cpp ignores unknown keys):
its weights as float arrays with their shapes, the label order, the pooling, the temperature, the default
threshold, the gate order, the system prompt, the model version and the training config hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..core.config import load_config
from ..core.schema import LABELS, RUN_CONFIG_FILE
from .gguf_meta import DEFAULT_THRESHOLD, NORMALIZER_KEY, SO8T_FORMAT, GGUFError
from .tokenizer_spec import adds_bos, check_byte_level_bpe, unicode_normalizer

_TOKEN_NORMAL, _TOKEN_CONTROL, _TOKEN_USER_DEFINED, _TOKEN_UNUSED = 1, 3, 4, 5
# HF model_type -> the gguf package's architecture; llama.cpp knows both.
ARCHITECTURES = {"qwen2": "QWEN2", "gemma3_text": "GEMMA3"}
GEMMA3_FULL_ATTENTION_EVERY = 6  # llama.cpp's fixed Gemma3 pattern: five sliding layers, then one full
GEMMA3_SLIDING_ROPE_THETA = 10_000.0  # llama.cpp's fixed RoPE base for Gemma3's sliding-attention layers
# Gemma's RMSNorm scales by (1 + w); llama.cpp's by w, so its converter stores w + 1 (and reading subtracts it).
GEMMA_NORM_SUFFIXES = ("norm.weight",)


def _architecture(config):
    import gguf

    name = ARCHITECTURES.get(config.model_type)
    if name is None:
        raise GGUFError(f"model type {config.model_type!r}: the GGUF export knows {', '.join(ARCHITECTURES)}")
    return getattr(gguf.MODEL_ARCH, name)


def gguf_tensor_names(state_names: list[str], arch, n_layers: int) -> dict[str, str]:
    """HF parameter name -> llama.cpp tensor name, from the gguf package's tables (raises for an unknown one)."""
    import gguf

    table = gguf.get_tensor_name_map(arch, n_layers)
    names = {}
    for hf_name in state_names:
        gguf_name = table.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise GGUFError(f"no GGUF name for parameter {hf_name!r} in gguf's {arch.name} table")
        names[hf_name] = gguf_name
    return names


def _rope_settings(cfg) -> list[tuple[str, dict]]:
    """Every RoPE setting of an HF config, named: ``rope_parameters`` (flat, or one per layer type as Gemma3's)
    and the older ``rope_scaling``."""
    found = []
    for name in ("rope_parameters", "rope_scaling"):
        value = getattr(cfg, name, None)
        if not isinstance(value, dict) or not value:
            continue
        if all(isinstance(v, dict) for v in value.values()):
            found += [(f"{name}[{key!r}]", v) for key, v in value.items()]
        else:
            found.append((name, value))
    return found


def _check_rope(cfg, arch) -> None:
    """The file carries a plain RoPE base only: a scaled RoPE (linear, yarn, ...) exported as it is would make the
    f32 file compute another model (state cosine about -0.2 for linear x4), so it is refused, as is a Gemma3
    sliding-attention base other than the 10000 llama.cpp fixes for those layers."""
    import gguf

    for where, params in _rope_settings(cfg):
        kind = params.get("rope_type", params.get("type")) or "default"
        if kind != "default":
            raise GGUFError(f"{where} has rope_type {kind!r} (factor {params.get('factor')}): the GGUF export writes "
                            "an unscaled RoPE only, and llama.cpp would compute another model from this file; export "
                            "a model whose base uses rope_type 'default'")
    if arch == gguf.MODEL_ARCH.GEMMA3:
        rope = getattr(cfg, "rope_parameters", None) or {}
        local = rope.get("sliding_attention", {}).get("rope_theta", getattr(cfg, "rope_local_base_freq", None))
        if local is not None and float(local) != GEMMA3_SLIDING_ROPE_THETA:
            raise GGUFError(f"the sliding-attention layers' rope_theta is {local}, but llama.cpp runs Gemma3's "
                            f"sliding layers with {GEMMA3_SLIDING_ROPE_THETA:g}; this model cannot be exported")


def _hyperparameters(writer, cfg, arch) -> None:
    import gguf

    _check_rope(cfg, arch)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    rope = getattr(cfg, "rope_parameters", None) or {}
    if arch == gguf.MODEL_ARCH.GEMMA3:
        expected = ["full_attention" if (i + 1) % GEMMA3_FULL_ATTENTION_EVERY == 0 else "sliding_attention"
                    for i in range(cfg.num_hidden_layers)]
        if list(cfg.layer_types) != expected:
            raise GGUFError("llama.cpp runs Gemma3 with one full-attention layer after every five sliding ones; "
                            f"this model's layer_types differ ({cfg.layer_types})")
        if cfg.query_pre_attn_scalar != cfg.head_dim:
            raise GGUFError("llama.cpp scales Gemma3 attention by 1/sqrt(head_dim); this model's "
                            f"query_pre_attn_scalar is {cfg.query_pre_attn_scalar}")
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
        writer.add_sliding_window(cfg.sliding_window)
        writer.add_rope_freq_base(float(rope.get("full_attention", {}).get("rope_theta", 1_000_000.0)))
    else:
        writer.add_rope_freq_base(float(getattr(cfg, "rope_theta", None) or rope["rope_theta"]))


def _merges(tokenizer) -> list[str]:
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE":
        raise GGUFError(f"tokenizer model {model.get('type')!r}: GGUF export needs a byte-level BPE tokenizer")
    return [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]


def _tokens(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings and types by id, padded with unused ``[PAD{i}]`` entries up to the embedding's
    row count (Qwen2.5 pads its embedding matrix past the tokenizer)."""
    n = len(tokenizer)
    if n > vocab_size:
        raise GGUFError(f"the tokenizer has {n} tokens but the embedding only {vocab_size} rows")
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    if any(t is None for t in tokens):
        raise GGUFError("the tokenizer's ids are not contiguous; cannot write a GGUF token list")
    added = tokenizer.added_tokens_decoder
    special = set(tokenizer.all_special_ids) | {i for i, tok in added.items() if getattr(tok, "special", False)}
    types = [_TOKEN_CONTROL if i in special else _TOKEN_USER_DEFINED if i in added else _TOKEN_NORMAL
             for i in range(n)]
    # added tokens that are not special (e.g. Qwen2.5's <tool_call>) must stay whole: USER_DEFINED
    tokens += [f"[PAD{i}]" for i in range(n, vocab_size)]
    types += [_TOKEN_UNUSED] * (vocab_size - n)
    return tokens, types


def _bpe_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """A byte-level BPE with Qwen2's split pattern (``tokenizer_spec.check_byte_level_bpe`` refused any other):
    tokens, merges, token types, and whether a BOS goes first as the HF tokenizer says."""
    tokens, token_types = _tokens(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(_merges(tokenizer))
    writer.add_eos_token_id(tokenizer.eos_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_add_bos_token(adds_bos(tokenizer))


def copy_tokenizer(writer, source: Path, vocab_size: int) -> None:
    """Every ``tokenizer.*`` key of a base's source GGUF, as llama.cpp's own converter wrote it (the chat
    template excepted: the model's own is written after)."""
    import gguf

    from .gguf_file import open_gguf

    for key, field in open_gguf(source, want=lambda key: key.startswith("tokenizer.")).fields.items():
        if not key.startswith("tokenizer.") or key == "tokenizer.chat_template":
            continue
        value_type = field.types[0]
        if value_type == gguf.GGUFValueType.ARRAY:
            values = field.contents()
            if key == "tokenizer.ggml.tokens" and len(values) != vocab_size:
                raise GGUFError(f"{source} has {len(values)} tokens but the model's embedding {vocab_size} rows")
            writer.add_key_value(key, values, value_type, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, field.contents(), value_type)


def _config_hash(checkpoint: Path | None, model) -> str:
    """sha256 of the training run's resolved config when the checkpoint sits in a run folder,
    else of the model config."""
    if checkpoint is not None and (checkpoint.parent / RUN_CONFIG_FILE).is_file():
        return load_config(checkpoint.parent / RUN_CONFIG_FILE).fingerprint()
    canonical = json.dumps(model.config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


HEAD_KEY_PREFIX = "so8t.head."  # SafetyHeadB's folded linears: so8t.head.keys, then per key its values and shape


def add_head_keys(writer, head_state: dict[str, torch.Tensor]) -> None:
    """SafetyHeadB's linear layers (``net.*`` of a folded state dict) as float arrays with their shapes."""
    head_keys = sorted(k for k in head_state if k.startswith("net."))
    writer.add_array(f"{HEAD_KEY_PREFIX}keys", head_keys)
    for key in head_keys:
        values = torch.as_tensor(head_state[key]).detach().float().cpu().numpy()
        writer.add_array(f"{HEAD_KEY_PREFIX}{key}.shape", [int(s) for s in values.shape])
        writer.add_array(f"{HEAD_KEY_PREFIX}{key}", values.reshape(-1).astype(np.float32).tolist())


def write_gguf(model, path: str | Path, dtype: str = "f16", checkpoint: Path | None = None,
               threshold: float = DEFAULT_THRESHOLD) -> Path:
    """Write ``model`` (an SO8TModel) as one GGUF at ``path`` (temporary file, then rename)."""
    import gguf

    from ..model.pretrained import GGUF_BASES, source_gguf

    if dtype not in ("f16", "f32"):
        raise ValueError(f"dtype must be 'f16' or 'f32', got {dtype!r}")
    tokenizer = model.tokenizer
    from_source = model.config.preset in GGUF_BASES  # its tokenizer is copied from the source GGUF file
    if not from_source:
        check_byte_level_bpe(tokenizer)  # refused before anything is merged or written
    merged, head_state = model.merge_for_export()
    cfg = merged.config
    arch = _architecture(cfg)
    state = merged.state_dict()
    tied = getattr(cfg, "tie_word_embeddings", False) and "lm_head.weight" in state \
        and torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])
    if tied:
        del state["lm_head.weight"]  # llama.cpp reuses token_embd
    names = gguf_tensor_names(list(state), arch, cfg.num_hidden_layers)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(model.config.name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    _hyperparameters(writer, cfg, arch)
    if from_source:
        copy_tokenizer(writer, source_gguf(GGUF_BASES[model.config.preset]), cfg.vocab_size)
    else:
        _bpe_tokenizer(writer, tokenizer, cfg.vocab_size)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)

    writer.add_uint32("so8t.format", SO8T_FORMAT)
    writer.add_array("so8t.labels", list(LABELS))
    writer.add_string("so8t.pooling", model.config.head.pooling)
    writer.add_array("so8t.read_layers", [int(i) for i in model.read_layers])
    writer.add_float32("so8t.temperature", float(head_state["temperature"]))
    writer.add_float32("so8t.threshold", float(threshold))
    writer.add_string("so8t.gate_order", model.config.gates.order)
    writer.add_string("so8t.system_prompt", model.system_prompt)
    writer.add_string(NORMALIZER_KEY, unicode_normalizer(tokenizer))
    writer.add_string("so8t.model_version", model.model_version)
    writer.add_string("so8t.config_sha256", _config_hash(checkpoint, model))
    add_head_keys(writer, head_state)

    gemma = arch == gguf.MODEL_ARCH.GEMMA3
    for name, tensor in state.items():
        array = tensor.detach().float().cpu().numpy()
        if gemma and name.endswith(GEMMA_NORM_SUFFIXES):
            array = array + 1.0
        if dtype == "f16" and array.ndim == 2:
            array = array.astype(np.float16)
        writer.add_tensor(names[name], array)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    return path
