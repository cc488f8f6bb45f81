"""The project's vocabulary, declared once: decisions, categories, languages, splits, file names.

Every layer imports these names from here, so a label or a file name cannot drift between the
corpus, the trainer, the evaluation, the GGUF file and the runtime.
"""

from __future__ import annotations

# How SafetyHeadB reads the prompt: its last token, the mean over it, or its hidden layer's maximum over the tokens.
POOLINGS = ("last", "mean", "max")
# The three decisions of SAFETY_POLICY.md, in the order of SafetyHeadB's logits.
LABELS: tuple[str, ...] = ("ALLOW", "REFUSE", "ESCALATE")
ALLOW, REFUSE, ESCALATE = range(len(LABELS))
# Benchmark gold for "anything but ALLOW" (XSTest's unsafe contrasts): evaluation only, never trained on.
NOT_ALLOW = "NOT_ALLOW"
GOLD_LABELS: tuple[str, ...] = (*LABELS, NOT_ALLOW)
# What a person reviewing an escalation may decide (ESCALATE again is not a decision).
HUMAN_DECISIONS: tuple[str, ...] = ("ALLOW", "REFUSE")

# Where REFUSE and ESCALATE cases are routed (the policy's table), and the data's category column,
# which also allows "none" for ALLOW rows that are close to no topic.
ROUTE_CATEGORIES: tuple[str, ...] = ("medical", "legal", "hr", "security", "finance", "general")
CATEGORIES: tuple[str, ...] = (*ROUTE_CATEGORIES, "none")
FALLBACK_CATEGORY = "general"  # the direct manager

LANGS: tuple[str, ...] = ("ja", "en")
SPLITS: tuple[str, ...] = ("train", "val", "test")

# Files of a checkpoint folder.
MODEL_CONFIG_FILE = "so8t_model.yaml"
ADAPTER_FILE = "adapter.safetensors"
TOKENIZER_DIR = "tokenizer"
BASE_DIR = "base"  # the tiny preset's random base weights (it cannot be downloaded again)
MANIFEST_FILE = "manifest.json"
CHECKPOINT_FORMAT = 1

# Files of a training run folder.
RUN_CONFIG_FILE = "config.yaml"
RUN_METRICS_FILE = "metrics.jsonl"
TRAINER_STATE_FILE = "trainer_state.pt"
BEST_DIR, LAST_DIR = "best", "last"
TEST_METRICS_FILE = "test_metrics.json"
ROUTER_FILE = "router.json"  # the escalation router fitted on the run's training split (so8t demo)
DEMO_TIMINGS_FILE = "demo_timings.json"  # where so8t demo spent its time, stage by stage

# Markers in a parameter name that make it part of what SO8T adds to a base model: LoRA, the two
# gates, peft's trained copies (modules_to_save) and SafetyHeadB.
ADAPTER_NAME_MARKERS: tuple[str, ...] = ("lora_", ".r_safe.", ".r_cmd.", ".modules_to_save.")
SAFETY_HEAD_PREFIX = "safety_head."


def is_adapter_key(name: str) -> bool:
    """True for the parameters SO8T trains and saves in ``adapter.safetensors``; the rest is the frozen base."""
    return name.startswith(SAFETY_HEAD_PREFIX) or any(marker in name for marker in ADAPTER_NAME_MARKERS)
