"""Silence SpeechBrain's import-time "torchvision is not available" warning.

SpeechBrain looks for torchvision (to save figures, which nothing here does) when its train
logger module is imported, and warns on every program start. Import this module before SpeechBrain.
"""

from __future__ import annotations

import logging


class _NoTorchvisionWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "torchvision is not available" not in record.getMessage()


logging.getLogger("speechbrain.utils.train_logger").addFilter(_NoTorchvisionWarning())
