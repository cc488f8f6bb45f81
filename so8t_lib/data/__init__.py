"""Safety data: validated tables (``tables``), the public benchmark registry (``benchmarks``, evaluation
only) and the project corpus (``corpus``). Knows nothing of models."""

from .benchmarks import BENCHMARKS, load_any
from .tables import DataError, load_split, load_table

__all__ = ["BENCHMARKS", "DataError", "load_any", "load_split", "load_table"]
