"""Training: batches (``collate``), the SO8T loss with PET (``losses``), the dual policy's optimizers
(``optim``) and the loop (``trainer``). Does not import evaluation: calibration after training is
passed in by the pipeline."""

from .trainer import Trainer, run_config, train

__all__ = ["Trainer", "run_config", "train"]
