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


def weighted_average(updates: Sequence[NDArrays], coefficients: Sequence[float]) -> NDArrays:
    """Per-layer sum of c_k * w_k, accumulated in float64 and cast back to each layer's dtype.

    Integer layers (e.g. BatchNorm's ``num_batches_tracked``) are rounded to the nearest integer.
    """
    if len(updates) != len(coefficients) or not updates:
        raise ValueError("need one coefficient per update and at least one update")
    out: NDArrays = []
    for layers in zip(*updates, strict=True):
        dtype = layers[0].dtype
        acc = np.zeros(layers[0].shape, dtype=np.float64)
        for c, layer in zip(coefficients, layers, strict=True):
            acc += float(c) * layer.astype(np.float64)
        if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
            acc = np.rint(acc)
        out.append(acc.astype(dtype))
    return out


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
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if not math.isfinite(value):
                continue
            sums[key] = sums.get(key, 0.0) + n * float(value)
            counts[key] = counts.get(key, 0) + n
    return {k: sums[k] / counts[k] for k in sums if counts[k] > 0}
