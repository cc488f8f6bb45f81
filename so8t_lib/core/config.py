"""YAML configs validated into typed objects.

Every section forbids unknown keys, so a typo (``lerning_rate``) is an error that
names the key instead of a silently ignored setting. ``load_config`` also takes
``key=value`` overrides (``model.gates.order=none``) as the command lines do.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from .config_files import (  # noqa: F401 - re-exported: callers import them from core.config
    ConfigError,
    NumbersNotFlags,
    apply_overrides,
    config_differences,
    deep_merge,
    parse_override,
    parse_size,
    read_config_mapping,
    read_yaml_mapping,
    section_default,
    shown_value,
)
from .schema import LABELS, POOLINGS

PRESETS: tuple[str, ...] = ("tiny", "gemma3-270m", "qwen2.5-0.5b", "qwen2.5-7b", "hf")
PRESET_HUB_IDS = {"qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B-Instruct", "qwen2.5-7b": "Qwen/Qwen2.5-7B-Instruct"}


class _Section(NumbersNotFlags):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # .inf lr, NaN weights

    @model_validator(mode="before")
    @classmethod
    def _sections_over_their_defaults(cls, data: Any) -> Any:
        """A section given in part starts from its field's default, as an override does: a file's
        ``safety_optimizer: {warmup_steps: 5}`` keeps that side's own lr (2e-3), not OptimizerConfig's 2e-4."""
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name in cls.model_fields:
            if isinstance(data.get(name), dict) and (default := section_default(cls, name)):
                merged[name] = deep_merge(default, data[name])
        return merged


class TinyArchConfig(_Section):
    """The tiny random model every unit test uses (built from config, random init): Qwen2-shaped by default,
    or Gemma3-shaped (sliding and full attention, q/k norms, four norms per layer) to test that family."""

    arch: Literal["qwen2", "gemma3"] = "qwen2"
    hidden_size: int = Field(256, gt=0, multiple_of=8)
    num_hidden_layers: int = Field(4, gt=0)
    num_attention_heads: int = Field(4, gt=0)
    num_key_value_heads: int = Field(2, gt=0)
    intermediate_size: int = Field(768, gt=0)
    max_position_embeddings: int = Field(2048, gt=0)
    rope_theta: float = Field(1_000_000.0, gt=0)
    vocab_size: int = Field(8192, ge=512, description="target size of the locally trained BPE tokenizer")
    initializer_range: float = Field(0.02, gt=0, description="std of the random initial weights")
    sliding_window: int = Field(16, gt=0, description="gemma3 only: window of its sliding-attention layers")

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyArchConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be divisible by num_key_value_heads")
        return self


class LoraConfig(_Section):
    """peft LoRA adapters on the attention and MLP projections; r = 0 disables LoRA."""

    r: int = Field(8, ge=0)
    layers: Literal["all"] | list[int] = Field(
        "all", description="'all' or decoder layer indices (negative ok) that get adapters (peft layers_to_transform)")
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="base modules trained in full beside the adapters (peft modules_to_save), e.g. "
        "[embed_tokens] for the random tiny base, whose frozen token embeddings carry no meaning",
    )

    @model_validator(mode="after")
    def _needs_peft(self) -> LoraConfig:
        if self.r == 0 and self.modules_to_save:
            raise ValueError("modules_to_save needs LoRA on (r > 0): peft manages the trained copies")
        return self


class GateConfig(_Section):
    """Where and in which order the SO(8) gate pair acts (see so8t_lib.model.gates)."""

    order: Literal["safe_first", "cmd_first", "commuting", "none"] = "safe_first"
    layers: Literal["all"] | list[int] = Field("all", description="'all' or decoder layer indices (negative ok)")
    target: str = Field("self_attn.o_proj", description="attribute path of the wrapped linear inside a layer")
    init_std: float = Field(
        0.0, ge=0, le=1,
        description="0: both gates start at the identity. They then get the same gradient, Adam keeps their "
                    "generators parallel and R_safe, R_cmd commute (the gate ablation measured this); > 0 draws "
                    "each generator from N(0, init_std^2) to break that symmetry")


class HeadConfig(_Section):
    """SafetyHeadB: linear (hidden_units = 0) or one hidden layer of at most 256 units."""

    hidden_units: int = Field(0, ge=0, le=256)
    dropout: float = Field(0.1, ge=0, lt=1)
    standardize: bool = Field(
        True, description="normalise the decision state with running statistics before the head "
        "(folded into the head at export); off gives the plain head of the design",
    )
    pooling: Literal[POOLINGS] = Field(
        "last", description="the decision state: the final-norm state of the prompt's last token, the mean over "
        "the prompt's tokens (llama.cpp computes both), or max: the head's hidden layer on every prompt token, its "
        "maximum over them (needs hidden_units; the GGUF backend reads the tokens from llama.cpp's graph)")
    read_layers: list[int] = Field(
        default_factory=list, description="hidden-state indices the head reads, each pooled, concatenated in this "
        "order (0 = embeddings, i = decoder layer i-1's output, the last = the final-norm state); empty: the "
        "final-norm state alone. benchmarks/head_layer_probe.py measures which depths carry the decision")

    @field_validator("read_layers")
    @classmethod
    def _read_layers_distinct(cls, value: list[int]) -> list[int]:
        if any(i < 1 for i in value) or len(set(value)) != len(value):
            raise ValueError(f"head.read_layers must be distinct layer outputs >= 1 (got {value}); "
                             "0, the embeddings, carries no context")
        return value

    @model_validator(mode="after")
    def _max_pools_a_hidden_layer(self) -> HeadConfig:
        if self.pooling == "max" and not self.hidden_units:
            raise ValueError("head.pooling max pools the head's hidden layer over the prompt's tokens: "
                             "set head.hidden_units (e.g. 256)")
        return self


class ModelConfig(_Section):
    name: str = Field("so8t-tiny", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    preset: Literal["tiny", "gemma3-270m", "qwen2.5-0.5b", "qwen2.5-7b", "hf"] = "tiny"
    base_model: str | None = Field(None, description="hub id or local folder; defaults to the preset's hub id")
    load_in_4bit: Literal["auto"] | bool = Field("auto", description="auto: nf4 when CUDA is present")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    seed: int = Field(0, ge=0, lt=2**32, description="numpy's and torch's range")
    system_prompt: str | None = Field(
        None, min_length=1, description="the system turn both heads read; None: the project's default "
        "(so8t_lib.model.prompts.SYSTEM_PROMPT). Travels in the checkpoint and the GGUF file")
    tiny: TinyArchConfig = Field(default_factory=TinyArchConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    gates: GateConfig = Field(default_factory=GateConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)

    @model_validator(mode="after")
    def _base_model_needed(self) -> ModelConfig:
        if self.preset == "hf" and not self.base_model:
            raise ValueError("preset 'hf' needs model.base_model (a hub id or a local folder)")
        return self

    def resolved_base_model(self) -> str | None:
        return self.base_model or PRESET_HUB_IDS.get(self.preset)


class PETConfig(_Section):
    """PET: mean squared second difference of hidden states along the sequence.

    gamma(p) = weight * multiplier of the first schedule stage whose ``until`` exceeds
    the training progress p in [0, 1]. Defaults: 0.01, 0.1, 1.0 x weight at p < 0.3, < 0.7, else.
    """

    enabled: bool = True
    weight: float = Field(0.1, ge=0)
    layers: list[int] = Field(default_factory=lambda: [-1], min_length=1,
                              description="indices into the decoder's hidden states")
    schedule: list[tuple[float, float]] = Field(default_factory=lambda: [(0.3, 0.01), (0.7, 0.1), (1.0, 1.0)])

    @field_validator("schedule")
    @classmethod
    def _increasing(cls, stages: list[tuple[float, float]]) -> list[tuple[float, float]]:
        if not stages:
            raise ValueError("schedule needs at least one [until, multiplier] stage")
        ends = [until for until, _ in stages]
        if ends != sorted(ends) or ends[-1] < 1.0:
            raise ValueError("stage ends must increase and the last must be >= 1.0")
        if any(m < 0 for _, m in stages):
            raise ValueError("multipliers must be >= 0")
        return stages


class LossConfig(_Section):
    """L = L_task + alpha L_safety + beta L_rationale + gamma(p) L_PET + delta L_dangerous (see so8t_lib.train.losses)."""

    alpha: float = Field(1.0, ge=0, description="weight of the class-weighted safety CE")
    beta: float = Field(0.5, ge=0, description="weight of the rationale CE (REFUSE/ESCALATE targets)")
    delta: float = Field(0.5, ge=0, description="weight of the dangerous-compliance term")
    class_weights: dict[str, float] = Field(default_factory=lambda: {"ALLOW": 1.0, "REFUSE": 2.0, "ESCALATE": 1.5})
    pet: PETConfig = Field(default_factory=PETConfig)

    @field_validator("class_weights")
    @classmethod
    def _all_labels(cls, weights: dict[str, float]) -> dict[str, float]:
        if set(weights) != set(LABELS):
            raise ValueError(f"needs exactly the keys {', '.join(LABELS)} (got {', '.join(sorted(weights))})")
        if any(w <= 0 for w in weights.values()):
            raise ValueError("class weights must be > 0")
        return weights

    def class_weight_list(self) -> list[float]:
        return [self.class_weights[label] for label in LABELS]


class OptimizerConfig(_Section):
    """One side of the dual policy: AdamW with warm-up, then a constant, linear or cosine schedule."""

    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)

    @field_validator("betas")
    @classmethod
    def _betas(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"each of AdamW's betas must be from 0 to below 1, got {list(betas)}")
        return betas
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="lr / peak lr that linear and cosine decay reach at "
                                "max_steps (the last step, max_steps - 1 from 0, runs one decay step above it)")


class EarlyStoppingConfig(_Section):
    metric: Literal["safety_score", "refuse_recall", "macro_f1"] = "safety_score"
    patience: int = Field(5, ge=1, description="evaluations without improvement before stopping")
    min_delta: float = Field(0.0, ge=0)


class TrainingConfig(_Section):
    """The training loop (so8t_lib.train). Paths are relative to the working directory."""

    data_dir: str = "data/so8t_safety"
    output_dir: str = "checkpoints/so8t-tiny"

    @field_validator("output_dir")
    @classmethod
    def _a_folder_of_its_own(cls, folder: str) -> str:
        """The run folder is written into and, by ``so8t demo --retrain``, deleted: never the working directory."""
        where, cwd = Path(folder or ".").resolve(), Path.cwd().resolve()
        if where == cwd or where in cwd.parents:
            raise ValueError(f"{folder!r} is the working directory or above it; name a folder of its own, e.g. "
                             "checkpoints/my-run")
        return folder
    max_steps: int = Field(300, gt=0)
    batch_size: int = Field(16, gt=0, description="per process, per micro-batch")
    grad_accum: int = Field(1, gt=0)
    max_length: int = Field(256, ge=8)
    task_optimizer: OptimizerConfig = Field(default_factory=lambda: OptimizerConfig(lr=3e-4))
    safety_optimizer: OptimizerConfig = Field(default_factory=lambda: OptimizerConfig(lr=2e-3))
    max_grad_norm: float = Field(1.0, gt=0)
    freeze_safety_at: float | None = Field(None, ge=0, le=1, description="progress after which the safety side stops updating")
    gradient_checkpointing: bool = False
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="no or bf16; fp16 is refused (see below)")

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _no_read_as_false(cls, value: Any) -> Any:
        """YAML 1.1 reads the documented ``mixed_precision: no`` as False; true names no precision at all."""
        if value is False:
            return "no"
        if value is True:
            raise ValueError("true is not a precision: write no or bf16")
        return value

    @field_validator("mixed_precision")
    @classmethod
    def _not_fp16(cls, value: str) -> str:
        """fp16 needs accelerate's GradScaler, one for both optimizers: its update after the task side's step forgets
        that the safety side's gradients were unscaled already, so they are divided by the scale again."""
        if value == "fp16":
            raise ValueError("fp16 is not supported: the task and safety optimizers share accelerate's one gradient "
                             "scaler, which unscales the safety side's gradients twice, so SafetyHeadB barely trains; "
                             "use bf16 (the same memory, no scaler needed) or no")
        return value
    eval_every: int = Field(50, gt=0)
    eval_batch_size: int = Field(32, gt=0)
    eval_max_rows: int | None = Field(
        None, gt=0, description="evaluate on a seeded sample of N val rows, stratified by label and language (None: all)")
    train_max_rows: int | None = Field(
        None, gt=0, description="train on a seeded sample of N rows, stratified by label and language (None: all): "
        "the CPU recipe of a pretrained base, which needs fewer rows than a random one")
    group_by_length: int = Field(
        0, ge=0, description="put rows of similar length in one batch: sort each window of N batches of the "
        "epoch's shuffled order by length, then shuffle the batches (0: off). On the Gemma recipe's rows 16 cuts "
        "the padded tokens from 1.87x the real ones to 1.05x (benchmarks/gemma_step.py)")
    freeze_below: int = Field(
        0, ge=0, description="decoder layers below this index are frozen (no LoRA, no gates there): the layers a "
        "pretrained base keeps as they are")
    cache_frozen_states: bool = Field(
        False, description="compute the frozen layers' output once per row and keep it under SO8T_CACHE; every step "
        "then runs only the layers from freeze_below up (exact: the frozen part never changes)")
    head_warm_start: bool = Field(
        False, description="before the first step, fit a logistic-regression probe on the training rows' decision "
        "states and start SafetyHeadB from it (linear heads; a max-pooling head is fitted by gradient steps on the "
        "token states instead; see so8t_lib.train.head_init)")
    head_warm_start_c: float = Field(0.3, gt=0, description="inverse L2 strength of that probe (scikit-learn's C)")
    head_warm_start_epochs: int = Field(
        10, ge=1, le=200, description="a max-pooling head's warm start: AdamW epochs over the training rows' token "
        "states (a convex probe cannot fit its hidden layer); benchmarks/token_pooling_probe.py picked 10 at layer 6")
    max_target_tokens: int | None = Field(
        None, gt=0, description="cut each answer or rationale target to its first N tokens (None: up to max_length)")
    lm_positions_per_row: int | None = Field(
        None, gt=0, description="compute the LM loss at a random sample of at most N target positions per row, "
        "averaged over all the kept positions: a row counts with min(N, its target tokens), so rows of N or more "
        "targets weigh equally however long they are. A per-row capped mean, not the token-mean CE (which weighs a "
        "row by its length) nor an estimate of it; far cheaper with a large vocabulary (None: every position)")
    log_every: int = Field(10, gt=0)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    autosave_minutes: float = Field(5.0, gt=0)
    save_every_steps: int = Field(0, ge=0, description="also save 'last' every N steps (0: time-based only)")
    calibrate_temperature: bool = Field(
        True, description="after training, fit SafetyHeadB's temperature on the val split and store it in best/"
    )
    seed: int = Field(0, ge=0, lt=2**32, description="numpy's and torch's range")
    sample_seed: int | None = Field(
        None, ge=0, description="seed of the train_max_rows / eval_max_rows samples (None: training.seed). Fix it "
        "in a sweep over seeds so every run sees the same rows and shares one frozen-state cache; the seed then "
        "varies only the initialisation and the order")

    @property
    def data_seed(self) -> int:
        """The seed the row samples are drawn with."""
        return self.seed if self.sample_seed is None else self.sample_seed


class SO8TConfig(_Section):
    """The whole config file: model, loss and training (runtime sections come with their modules)."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON form; recorded in checkpoints and GGUF metadata."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key (check the spelling; see so8t_lib/core/config.py for the allowed keys)"
    elif "input" in error and not isinstance(error["input"], dict):
        message += f" (got {shown_value(error['input'])})"
    return f"{key}: {message}"


def config_from_dict(data: dict[str, Any] | None, source: str = "<dict>") -> SO8TConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(data).__name__}")
    try:
        return SO8TConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid config\n  {validation_problems(exc)}") from None


def validation_problems(exc: ValidationError) -> str:
    """pydantic's errors as one line per key, in the project's wording."""
    return "\n  ".join(_describe(e) for e in exc.errors())


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SO8TConfig:
    """Read a YAML config (following ``extends``), apply ``key=value`` overrides, validate; errors name the
    file and key."""
    data = apply_overrides(read_config_mapping(path), overrides, SO8TConfig)
    return config_from_dict(data, source=str(path))
