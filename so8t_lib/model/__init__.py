"""The SO8T model: SO(8) gates (``gates``), SafetyHeadB (``heads``), the base LM (``base``), the wrapper
that joins them (``so8t``), the tokenizer and the one prompt format (``prompts``)."""

from .heads import RunningStandardizer, SafetyHeadB
from .so8t import SO8TModel, SO8TOutput

__all__ = ["RunningStandardizer", "SO8TModel", "SO8TOutput", "SafetyHeadB"]
