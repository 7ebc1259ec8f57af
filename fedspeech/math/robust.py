"""Defences against a dishonest or broken client, as pure functions over lists of arrays.

- :func:`cap_shares`: no client's coefficient above ``max_share``; what a capped client loses is
  shared among the others in proportion to their coefficients (water-filling)::

      c'_k = min(S, lambda * c_k),   lambda >= 1 chosen so that sum_k c'_k = 1

  which needs S >= 1/n (n clients); with S = 1/n every client gets exactly 1/n.
- :func:`change_norm` and :func:`clip_change`: a client's change from the global model,
  ``u_k - g``, over the floating-point arrays, and the clipped update
  ``g + (u_k - g) * min(1, C / |u_k - g|)``.
- :func:`robust_aggregate`: the robust rules Flower ships, in ``flwr.server.strategy.aggregate``
  (coordinate-wise median, trimmed mean, Krum, Multi-Krum, Bulyan), reused as they are, with
  each layer cast back to its dtype. They hold every update of the round at once (n x the
  model), where the plain mean adds one update at a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

NDArrays = list[np.ndarray]
AGGREGATIONS = ("mean", "median", "trimmed_mean", "krum", "multikrum", "bulyan")


def cap_shares(coefficients: Sequence[float], max_share: float) -> tuple[np.ndarray, list[int]]:
    """Coefficients (summing to 1) with none above ``max_share``; also the indices capped."""
    c = np.asarray(coefficients, dtype=np.float64)
    n = c.size
    if n == 0:
        raise ValueError("no coefficients to cap")
    if max_share * n < 1 - 1e-12:
        raise ValueError(f"a share cap of {max_share} cannot hold {n} clients (needs >= 1/{n})")
    c = c / c.sum()
    capped = np.zeros(n, dtype=bool)
    while True:
        free = ~capped
        budget = 1.0 - max_share * capped.sum()
        scaled = np.where(capped, max_share, c * budget / c[free].sum() if free.any() else 0)
        over = free & (scaled > max_share + 1e-15)
        if not over.any():
            return scaled, [int(i) for i in np.flatnonzero(capped)]
        capped |= over


def _is_float(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating)


def change_norm(update: NDArrays, reference: NDArrays) -> float:
    """L2 norm of ``update - reference`` over the floating-point arrays (the client's change)."""
    total = 0.0
    for u, r in zip(update, reference, strict=True):
        if _is_float(u):
            d = u.astype(np.float64) - r.astype(np.float64)
            total += float(np.dot(d.ravel(), d.ravel()))
    return math.sqrt(total)


def clip_change(update: NDArrays, reference: NDArrays, max_norm: float) -> tuple[NDArrays, float]:
    """The update whose change from ``reference`` has L2 norm at most ``max_norm``, and the
    change's norm before clipping. Integer arrays (counters) are left as the client sent them."""
    norm = change_norm(update, reference)
    if norm <= max_norm or norm == 0.0:
        return list(update), norm
    scale = max_norm / norm
    out = []
    for u, r in zip(update, reference, strict=True):
        if _is_float(u):
            d = (u.astype(np.float64) - r.astype(np.float64)) * scale
            out.append((r.astype(np.float64) + d).astype(u.dtype))
        else:
            out.append(u)
    return out, norm


def check_aggregation(method: str, n: int, num_malicious: int, trim_fraction: float) -> None:
    """Refuse a rule that cannot work for ``n`` updates (raises ValueError, one line)."""
    if method not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation '{method}' (use {', '.join(AGGREGATIONS)})")
    if method == "trimmed_mean" and not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"--trim_fraction must be within [0, 0.5), got {trim_fraction}")
    if method in ("krum", "multikrum") and n <= 2 * num_malicious + 2:
        raise ValueError(f"{method} with --num_malicious {num_malicious} needs more than "
                         f"{2 * num_malicious + 2} clients a round, got {n}")
    if method == "bulyan" and n < 4 * num_malicious + 3:
        raise ValueError(f"bulyan with --num_malicious {num_malicious} needs at least "
                         f"{4 * num_malicious + 3} clients a round, got {n}")


def robust_aggregate(updates: Sequence[NDArrays], coefficients: Sequence[float], method: str, *,
                     num_malicious: int = 0, trim_fraction: float = 0.2) -> NDArrays:
    """Flower's robust rule ``method`` over ``updates``; coefficients weight only the average
    Multi-Krum takes of the updates it keeps (median, trimmed mean, Krum and Bulyan ignore
    them, which is what makes them robust to a client's claims)."""
    from flwr.server.strategy import aggregate as flower

    check_aggregation(method, len(updates), num_malicious, trim_fraction)
    results = [(list(u), float(c)) for u, c in zip(updates, coefficients, strict=True)]
    if method == "median":
        out = flower.aggregate_median(results)
    elif method == "trimmed_mean":
        out = flower.aggregate_trimmed_avg(results, trim_fraction)
    elif method == "krum":
        out = flower.aggregate_krum(results, num_malicious, to_keep=0)
    elif method == "multikrum":
        out = flower.aggregate_krum(results, num_malicious, to_keep=len(updates) - num_malicious)
    elif method == "bulyan":
        out = flower.aggregate_bulyan(results, num_malicious, flower.aggregate_krum, to_keep=0)
    else:
        raise ValueError("the plain mean is WeightedSum's (it streams)")
    return [_as_dtype(np.asarray(layer), ref.dtype) for layer, ref in zip(out, updates[0],
                                                                           strict=True)]


def _as_dtype(layer: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        layer = np.rint(layer)
    return layer.astype(dtype)


def selected(updates: Sequence[NDArrays], result: NDArrays) -> list[int]:
    """Which updates a selecting rule (Krum) returned unchanged: their indices."""
    return [i for i, u in enumerate(updates)
            if all(np.array_equal(a, b) for a, b in zip(u, result, strict=True))]
