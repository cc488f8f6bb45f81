"""SO8T workbench: a dual-head, SO(8)-gated safety model on any Hugging Face causal LM.

Layers, lowest first (``tests/test_architecture.py`` enforces who may import whom):

    core/       schema, paths, atomic io, checkpoints, config, metric definitions
    data/       tables, the benchmark registry, the corpus
    model/      gates, heads, base loading, SO8TModel, tokenizer, prompts
    train/      collate, losses, optimizers, the trainer
    export/     GGUF format, writer, quantization
    serve/      backends (the one decision path), policy, runtime, audit, escalation
    eval/       report, evaluation, calibration, latency
    workbench/  pipeline, sweeps, ablation statistics, plots, model card, stakeholder app
    cli/        the ``so8t`` command

Importable without a GPU and without llama-cpp-python; heavy pieces load lazily.
"""

from .core.config import ConfigError, SO8TConfig, load_config
from .core.schema import LABELS

__version__ = "0.1.0"
__all__ = ["LABELS", "ConfigError", "SO8TConfig", "load_config", "__version__"]
