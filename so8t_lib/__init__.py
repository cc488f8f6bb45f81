"""SO8T workbench: a dual-head, SO(8)-gated safety model on any Hugging Face causal LM.

Importable without a GPU and without llama-cpp-python; heavy pieces load lazily.
"""

from .config import LABELS, ConfigError, SO8TConfig, load_config

__version__ = "0.1.0"
__all__ = ["LABELS", "ConfigError", "SO8TConfig", "load_config", "__version__"]
