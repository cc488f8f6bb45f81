"""Writing one GGUF file that carries both heads.

Export merges LoRA, folds the SO(8) gates into ``o_proj`` (``SO8TModel.merge_for_export``) and
writes a llama.cpp ``qwen2`` model with the ``gguf`` package: the project's own HF → GGUF tensor
names, the byte-level BPE tokenizer (tokens, merges, token types, pre-tokenizer ``qwen2``, chat
template). SafetyHeadB travels as ``so8t.*`` metadata (llama.cpp ignores unknown keys): its
weights as float arrays with their shapes, the label order, the temperature, the default threshold,
the gate order, the system prompt, the model version and the training config hash.
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
from ..model.prompts import SYSTEM_PROMPT
from .gguf_meta import DEFAULT_THRESHOLD, SO8T_FORMAT, GGUFError

_TOKEN_NORMAL, _TOKEN_CONTROL, _TOKEN_USER_DEFINED, _TOKEN_UNUSED = 1, 3, 4, 5

# HF Qwen2 parameter names -> llama.cpp GGUF tensor names.
_GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_tensor_name(hf_name: str) -> str:
    """The llama.cpp name of one HF Qwen2 parameter (raises for anything it does not know)."""
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    parts = hf_name.split(".")
    if len(parts) > 3 and parts[0] == "model" and parts[1] == "layers" and parts[2].isdigit():
        rest = ".".join(parts[3:])
        if rest in _LAYER_NAMES:
            return f"blk.{parts[2]}.{_LAYER_NAMES[rest]}"
    raise GGUFError(f"no GGUF name for parameter {hf_name!r}: only the Qwen2 family is mapped")


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


def _config_hash(checkpoint: Path | None, model) -> str:
    """sha256 of the training run's resolved config when the checkpoint sits in a run folder,
    else of the model config."""
    if checkpoint is not None and (checkpoint.parent / RUN_CONFIG_FILE).is_file():
        return load_config(checkpoint.parent / RUN_CONFIG_FILE).fingerprint()
    canonical = json.dumps(model.config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def write_gguf(model, path: str | Path, dtype: str = "f16", checkpoint: Path | None = None,
               threshold: float = DEFAULT_THRESHOLD) -> Path:
    """Write ``model`` (an SO8TModel) as one GGUF at ``path`` (temporary file, then rename)."""
    import gguf

    if dtype not in ("f16", "f32"):
        raise ValueError(f"dtype must be 'f16' or 'f32', got {dtype!r}")
    merged, head_state = model.merge_for_export()
    cfg = merged.config
    if cfg.model_type != "qwen2":
        raise GGUFError(f"model type {cfg.model_type!r}: the GGUF export maps the Qwen2 family only")
    tokenizer = model.tokenizer
    tokens, token_types = _tokens(tokenizer, cfg.vocab_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), "qwen2")
    writer.add_name(model.config.name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
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
    writer.add_add_bos_token(False)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)

    writer.add_uint32("so8t.format", SO8T_FORMAT)
    writer.add_array("so8t.labels", list(LABELS))
    writer.add_float32("so8t.temperature", float(head_state["temperature"]))
    writer.add_float32("so8t.threshold", float(threshold))
    writer.add_string("so8t.gate_order", model.config.gates.order)
    writer.add_string("so8t.system_prompt", SYSTEM_PROMPT)
    writer.add_string("so8t.model_version", model.model_version)
    writer.add_string("so8t.config_sha256", _config_hash(checkpoint, model))
    head_keys = sorted(k for k in head_state if k.startswith("net."))
    writer.add_array("so8t.head.keys", head_keys)
    for key in head_keys:
        values = head_state[key].detach().float().cpu().numpy()
        writer.add_array(f"so8t.head.{key}.shape", [int(s) for s in values.shape])
        writer.add_array(f"so8t.head.{key}", values.reshape(-1).astype(np.float32).tolist())

    state = merged.state_dict()
    for name, tensor in state.items():
        if name == "lm_head.weight" and getattr(cfg, "tie_word_embeddings", False) \
                and torch.equal(tensor, state["model.embed_tokens.weight"]):
            continue  # tied: llama.cpp reuses token_embd
        array = tensor.detach().float().cpu().numpy()
        if dtype == "f16" and array.ndim == 2:
            array = array.astype(np.float16)
        writer.add_tensor(gguf_tensor_name(name), array)
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
