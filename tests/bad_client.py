"""A real client process whose fit replies are corrupted on purpose (for tests/test_faults.py).

    python tests/bad_client.py --fault nan <every client.py flag>

It is ``client.py`` itself: the same parser, argument checks, model and dataset building
(``client.run``: ``init_model``, pre-trained loading) and the same connect/retry loop. The only
difference is the client class handed to ``client.main``, a subclass of ``SpeechBrainClient``
whose ``fit`` trains normally and then damages its reply according to ``--fault``:

- ``nan`` / ``inf``: the first element of the first floating-point array becomes NaN / +Inf
- ``count``: the last array is dropped
- ``shape``: the first floating-point array with at least one dimension loses its last row
- ``dtype``: the first float32 array is sent as float64
- ``metric_missing``: ``train_loss`` and ``valid_wer`` are left out of the metrics
- ``metric_nan``: ``train_loss`` is NaN
- ``tokenizer``: the metrics claim another tokenizer (``tokenizer-sha256``)
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import client  # noqa: E402  (the repository's client.py, after the path is set)

FAULTS = ("nan", "inf", "count", "shape", "dtype", "metric_missing", "metric_nan", "tokenizer")


def _first(arrays: list[np.ndarray], test) -> int:
    return next(i for i, a in enumerate(arrays) if test(a))


def corrupt(fault: str, arrays: list[np.ndarray], metrics: dict) -> tuple[list, dict]:
    """The damaged (arrays, metrics) for ``fault``; the inputs are not modified."""
    arrays = [np.array(a, copy=True) for a in arrays]
    metrics = dict(metrics)
    is_float = lambda a: np.issubdtype(a.dtype, np.floating)  # noqa: E731
    if fault in ("nan", "inf"):
        i = _first(arrays, lambda a: is_float(a) and a.size > 0)
        arrays[i].reshape(-1)[0] = np.nan if fault == "nan" else np.inf
    elif fault == "count":
        arrays = arrays[:-1]
    elif fault == "shape":
        i = _first(arrays, lambda a: is_float(a) and a.ndim >= 1 and a.shape[0] > 1)
        arrays[i] = arrays[i][:-1]
    elif fault == "dtype":
        i = _first(arrays, lambda a: a.dtype == np.float32)
        arrays[i] = arrays[i].astype(np.float64)
    elif fault == "metric_missing":
        metrics.pop("train_loss", None)
        metrics.pop("valid_wer", None)
    elif fault == "metric_nan":
        metrics["train_loss"] = math.nan
    elif fault == "tokenizer":
        metrics["tokenizer-sha256"] = "0" * 64
    else:
        raise ValueError(f"unknown fault {fault}")
    return arrays, metrics


def make_bad_client_class(fault: str) -> type:
    class BadClient(client.SpeechBrainClient):
        def fit(self, parameters, config):
            arrays, samples, metrics = super().fit(parameters, config)
            arrays, metrics = corrupt(fault, arrays, metrics)
            client.logger.warning("client %s: sending a corrupted reply (--fault %s)",
                                  self.trainer.cid, fault)
            return arrays, samples, metrics

    return BadClient


def main() -> None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--fault", choices=FAULTS, required=True)
    known, rest = pre.parse_known_args()
    client.main(rest, make_client=make_bad_client_class(known.fault))


if __name__ == "__main__":
    main()
