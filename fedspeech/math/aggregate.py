"""Aggregation math: pure functions over lists of ndarrays, in float64 with a stable softmax.

Weightings (arXiv 2104.14297), over the clients kept in a round:

- ``num``:  c_k = n_k / sum_j n_j                      (standard FedAvg)
- ``loss``: c_k = softmax(-L_k)                        (L_k: client's training loss)
- ``wer``:  c_k = softmax(-min(W_k, 100))              (W_k: client's validation WER, in %)

These equal the reference's exp(-loss) and exp(100 - WER) weights after normalisation, without
their overflow. This module imports neither Flower's server nor SpeechBrain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedspeech.base.checks import is_finite

WEIGHT_STRATEGIES = ("num", "loss", "wer")
METRIC_FOR_STRATEGY = {"num": "num_examples", "loss": "train_loss", "wer": "valid_wer"}

NDArrays = list[np.ndarray]
Scalar = bool | bytes | float | int | str


def softmax(scores: Sequence[float]) -> np.ndarray:
    """Numerically stable softmax in float64."""
    s = np.asarray(scores, dtype=np.float64)
    e = np.exp(s - s.max())
    return e / e.sum()


def aggregation_coefficients(values: Sequence[float], weight_strategy: str) -> np.ndarray:
    """Coefficients (summing to 1) from each client's sample count, loss or WER (%)."""
    if weight_strategy not in WEIGHT_STRATEGIES:
        raise ValueError(f"unknown weight strategy '{weight_strategy}' (use num, loss or wer)")
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no clients to aggregate")
    if not np.all(np.isfinite(v)):
        raise ValueError("aggregation metrics must be finite")
    if weight_strategy == "num":
        if np.any(v < 0) or v.sum() <= 0:
            raise ValueError("sample counts must be non-negative with a positive sum")
        return v / v.sum()
    if weight_strategy == "loss":
        return softmax(-v)
    return softmax(-np.minimum(v, 100.0))


_CHUNK = 1 << 18  # elements of a layer weighted and added at a time (2 MB in float64)


class WeightedSum:
    """Running sum of c_k * w_k in float64, one update at a time.

    The server holds one accumulator however many clients report: each update is decoded, added
    and dropped. :meth:`result` divides by the coefficients actually added, so an update refused
    half-way renormalises the others.
    """

    def __init__(self) -> None:
        self._acc: list[np.ndarray] | None = None
        self._dtypes: list[np.dtype] = []
        self.total = 0.0

    def add(self, update: NDArrays, coefficient: float) -> None:
        c = float(coefficient)
        if self._acc is None:
            self._dtypes = [layer.dtype for layer in update]
            self._acc = [np.zeros(layer.shape, dtype=np.float64) for layer in update]
        shapes = [layer.shape for layer in update]
        if shapes != [acc.shape for acc in self._acc]:  # checked before anything is added
            raise ValueError(f"layers of shapes {shapes} added to a sum of other shapes")
        for acc, layer in zip(self._acc, update, strict=True):
            # c * w in float64 a slice at a time: the temporaries stay a few MB however large the
            # layer (a whole-layer ``c * w.astype(float64)`` held two float64 copies of it)
            flat_acc, flat = acc.reshape(-1), np.ravel(layer)
            for start in range(0, flat.size, _CHUNK):
                part = flat[start:start + _CHUNK].astype(np.float64)
                part *= c
                flat_acc[start:start + _CHUNK] += part
        self.total += c

    def result(self) -> NDArrays:
        """The weighted average, each layer cast back to its dtype (integer layers rounded).

        The accumulator is released layer by layer, so the peak stays near one accumulator.
        """
        if self._acc is None or self.total <= 0:
            raise ValueError("nothing was added to the weighted sum")
        out: NDArrays = []
        acc, self._acc = self._acc, None
        for dtype in self._dtypes:
            layer = acc.pop(0)
            layer /= self.total
            if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
                np.rint(layer, out=layer)
            out.append(layer.astype(dtype))
            del layer
        return out


def weighted_average(updates: Sequence[NDArrays], coefficients: Sequence[float]) -> NDArrays:
    """Per-layer sum of c_k * w_k / sum(c), accumulated in float64, cast back to each dtype.

    Integer layers (e.g. BatchNorm's ``num_batches_tracked``) are rounded to the nearest integer.
    """
    if len(updates) != len(coefficients) or not updates:
        raise ValueError("need one coefficient per update and at least one update")
    total = WeightedSum()
    for update, c in zip(updates, coefficients, strict=True):
        total.add(update, c)
    return total.result()


def update_problem(update: NDArrays, reference: NDArrays | None) -> str | None:
    """Why an update cannot be aggregated (count, shape, dtype, NaN/Inf), or None if it can."""
    if reference is not None:
        if len(update) != len(reference):
            return f"{len(update)} arrays instead of {len(reference)}"
        for i, (u, r) in enumerate(zip(update, reference, strict=True)):
            if u.shape != r.shape:
                return f"array {i} has shape {u.shape} instead of {r.shape}"
            if u.dtype != r.dtype:
                return f"array {i} has dtype {u.dtype} instead of {r.dtype}"
    for i, u in enumerate(update):
        if np.issubdtype(u.dtype, np.floating) and not np.all(np.isfinite(u)):
            return f"array {i} contains NaN or Inf"
    return None


def l2_distance(a: NDArrays, b: NDArrays) -> float:
    """Euclidean distance between two models' floating-point arrays (how far training moved)."""
    total = 0.0
    for x, y in zip(a, b, strict=True):
        if np.issubdtype(x.dtype, np.floating):
            total += float(np.sum((x.astype(np.float64) - y.astype(np.float64)) ** 2))
    return math.sqrt(total)


def weighted_metrics(results: Sequence[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
    """Example-weighted mean of every finite numeric metric the clients reported."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for n, metrics in results:
        for key, value in metrics.items():
            if not is_finite(value):
                continue
            sums[key] = sums.get(key, 0.0) + n * float(value)
            counts[key] = counts.get(key, 0) + n
    return {k: sums[k] / counts[k] for k in sums if counts[k] > 0}
