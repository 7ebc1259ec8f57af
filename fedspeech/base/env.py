"""What every process of this project sets before torch and SpeechBrain load.

- Passive OpenMP waiting (``OMP_WAIT_POLICY=PASSIVE``, unless the environment says otherwise):
  torch's idle OpenMP threads otherwise spin, and federation processes sharing a machine take
  each other's cores. Measured with ``scripts/bench.py`` (3 clients + server on 2 cores, torch's
  default threads): a client's round-1 fit took 578 s spinning against 34 s passive.
- SpeechBrain's import-time "torchvision is not available" warning is silenced: SpeechBrain looks
  for torchvision to save figures, which nothing here does.

Import this module before torch; it only sets an environment default and a logging filter.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class _NoTorchvisionWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "torchvision is not available" not in record.getMessage()


logging.getLogger("speechbrain.utils.train_logger").addFilter(_NoTorchvisionWarning())
