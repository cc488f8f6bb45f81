"""The one rule for SafetyHeadB's temperature, wherever it is fitted, saved, loaded or exported.

The head divides its logits by the temperature in float32: a negative one ranks the labels upside down (a harmful
request would get ALLOW), zero, NaN or infinity make the probabilities NaN, and a value below float32's smallest
normal number (1e-40) or above its largest is zero or infinity there. Calibration, the checkpoint loader and the
GGUF reader all refuse the same values.
"""

from __future__ import annotations

import numpy as np

SMALLEST = float(np.finfo(np.float32).tiny)  # about 1.2e-38
LARGEST = float(np.finfo(np.float32).max)  # about 3.4e38


def usable_temperature(value: float) -> bool:
    """True when the head can divide by ``value`` and keep the labels' order (NaN is False)."""
    return SMALLEST <= value <= LARGEST
