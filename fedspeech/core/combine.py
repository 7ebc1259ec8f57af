"""How a round's screened updates become one model: weights, claims, caps, clipping, the rule.

:class:`Combiner` is the part of :meth:`fedspeech.core.round.RoundCore.aggregate` that decides how
much each update counts. Without defences it streams: one decoded update at a time goes into one
float64 sum (the tutorial's FedAvg, and the weightings of arXiv 2104.14297 on the clients' own
numbers). A defence that needs to see the whole round (``clip_update_norm auto``, the server's
own measurement of every update, a robust rule) holds the round's decoded updates at once: n
times the model in memory.

What each client claimed and what the server measured, the change norms, what was clipped or
capped, goes into the round's :class:`~fedspeech.core.row.RoundRow`.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from fedspeech.base.checks import is_finite
from fedspeech.core import protocol
from fedspeech.core.defences import AUTO, SERVER_WEIGHTINGS, Defences
from fedspeech.core.row import RoundRow
from fedspeech.math.aggregate import (
    METRIC_FOR_STRATEGY,
    NDArrays,
    WeightedSum,
    aggregation_coefficients,
    weighted_average,
)
from fedspeech.math.robust import cap_shares, change_norm, clip_change, robust_aggregate, selected

logger = logging.getLogger("round")

# the server's measurement of one model on its scoring set: (loss, WER in %)
ScoreFn = Callable[[NDArrays], tuple[float, float]]
Decoded = tuple[str, Any, NDArrays]  # (client name, its Update, its arrays)


class Combiner:
    """Coefficients and the combined model of one round's updates, as the defences say."""

    def __init__(self, weight_strategy: str, defences: Defences, score: ScoreFn | None):
        if weight_strategy in SERVER_WEIGHTINGS and score is None:
            raise ValueError(f"weight strategy {weight_strategy} needs a scoring set")
        self.weight_strategy = weight_strategy
        self.base = weight_strategy.removeprefix("server_")  # the softmax of num | loss | wer
        self.defences = defences
        self.score = score

    @property
    def claimed_metric(self) -> str | None:
        """The metric a client's claim must carry for this weighting (None: its count)."""
        if self.weight_strategy in SERVER_WEIGHTINGS or self.weight_strategy == "num":
            return None
        return METRIC_FOR_STRATEGY[self.weight_strategy]

    @property
    def streams(self) -> bool:
        return self.defences.streams and self.score is None

    def combine(self, rnd: int, row: RoundRow, reference: NDArrays,
                candidates: Sequence[tuple[str, Any]],
                decode: Callable[[Any], tuple[str | None, NDArrays | None]],
                rejected: dict[str, str]) -> tuple[list[tuple[str, Any, float]], NDArrays | None]:
        """``(kept updates with their coefficients, the combined model)``; refusals go into
        ``rejected``. ``decode(update)`` gives ``(problem, arrays)``."""
        if not candidates:
            return [], None
        if self.streams:
            return self._stream(row, reference, candidates, decode, rejected)
        decoded: list[Decoded] = []
        for name, update in candidates:
            problem, arrays = decode(update)
            if problem is None:
                decoded.append((name, update, arrays))
            else:
                rejected[name] = problem
        if not decoded:
            return [], None
        decoded = self._clip_all(row, reference, decoded)
        measured = {}
        if self.score is not None:
            measured = self._measure(rnd, row, decoded)
            for name, (loss, wer) in measured.items():
                if not (is_finite(loss) and is_finite(wer)):  # e.g. NaN on every utterance
                    rejected[name] = "its model's loss on the server's scoring set is not finite"
            decoded = [d for d in decoded if d[0] not in rejected]
            if not decoded:
                return [], None
        values = [self._value(name, update, row, measured) for name, update, _ in decoded]
        names = [name for name, _, _ in decoded]
        coefficients = self._cap(row, names, aggregation_coefficients(values, self.base))
        arrays = [a for _, _, a in decoded]
        d = self.defences
        if d.aggregation == "mean":
            combined = weighted_average(arrays, coefficients)
        else:
            row.aggregation = d.aggregation
            combined = robust_aggregate(arrays, coefficients, d.aggregation,
                                        num_malicious=d.num_malicious,
                                        trim_fraction=d.trim_fraction)
            if d.aggregation in ("krum", "bulyan"):
                row.selected = [names[i] for i in selected(arrays, combined)]
        kept = [(name, update, float(c)) for (name, update, _), c
                in zip(decoded, coefficients, strict=True)]
        return kept, combined

    # ---- the streaming mean -------------------------------------------------------------------
    def _stream(self, row, reference, candidates, decode, rejected):
        values = [self._value(name, update, row, {}) for name, update in candidates]
        coefficients = self._cap(row, [name for name, _ in candidates],
                                 aggregation_coefficients(values, self.base))
        limit = self.defences.clip_update_norm
        total, kept = WeightedSum(), []
        for (name, update), c in zip(candidates, coefficients, strict=True):
            problem, arrays = decode(update)
            if problem is None:
                if limit is not None:
                    arrays = self._clip(row, name, arrays, reference, float(limit))
                total.add(arrays, c)
                kept.append((name, update, float(c)))
            else:
                rejected[name] = problem
            del arrays  # one decoded update at a time, a refused one too
        if not kept:
            return [], None
        return [(n, u, c / total.total) for n, u, c in kept], total.result()

    # ---- the defences -------------------------------------------------------------------------
    def _value(self, name: str, update: Any, row: RoundRow, measured: dict) -> float:
        """What the weighting reads: the server's measurement, or the client's (capped) claim."""
        if self.weight_strategy == "server_loss":
            return measured[name][0]
        if self.weight_strategy == "server_wer":
            return measured[name][1]
        if self.base == "num":
            n = update.num_examples
            cap = self.defences.max_examples
            if cap is not None and n > cap:
                row.capped = {**(row.capped or {}), name: f"examples {n} -> {cap}"}
                return float(cap)
            return float(n)
        return float(update.metrics[METRIC_FOR_STRATEGY[self.base]])

    def _cap(self, row: RoundRow, names: list[str], coefficients) -> list[float]:
        share = self.defences.max_client_share
        if share is None:
            return [float(c) for c in coefficients]
        if share * len(names) < 1:  # too few clients for the cap: the nearest is equal shares
            logger.warning("round %d: %d clients cannot keep --max_client_share %.3f; equal "
                           "shares", row.round, len(names), share)
            share = 1.0 / len(names)
        capped, which = cap_shares(coefficients, share)
        for i in which:
            row.capped = {**(row.capped or {}), names[i]: f"share {coefficients[i]:.4f} -> "
                                                         f"{capped[i]:.4f}"}
        return [float(c) for c in capped]

    def _clip(self, row, name, arrays, reference, limit: float) -> NDArrays:
        clipped, norm = clip_change(arrays, reference, limit)
        row.update_norms = {**(row.update_norms or {}), name: norm}
        row.clip_norm = limit
        if norm > limit:
            row.clipped = [*(row.clipped or []), name]
        return clipped

    def _clip_all(self, row: RoundRow, reference: NDArrays, decoded: list[Decoded]
                  ) -> list[Decoded]:
        limit = self.defences.clip_update_norm
        if limit is None:
            row.update_norms = {name: change_norm(a, reference) for name, _, a in decoded}
            return decoded
        if limit == AUTO:  # the round's median change: half the clients are not clipped
            limit = statistics.median(change_norm(a, reference) for _, _, a in decoded)
        return [(name, u, self._clip(row, name, a, reference, float(limit)))
                for name, u, a in decoded]

    def _measure(self, rnd: int, row: RoundRow, decoded: list[Decoded]
                 ) -> dict[str, tuple[float, float]]:
        """The server's loss and WER of every (clipped) update on its scoring set, beside what
        the client claimed; a claimed WER more than ``claim_margin`` points off is logged."""
        started = time.monotonic()
        measured, claims = {}, {}
        for name, update, arrays in decoded:
            loss, wer = self.score(arrays)
            measured[name] = (float(loss), float(wer))
            claimed = update.metrics.get(protocol.VALID_WER)
            claims[name] = {"claimed_wer": claimed if is_finite(claimed) else None,
                            "measured_wer": float(wer),
                            "measured_loss": float(loss) if is_finite(loss) else None,
                            "num_examples": update.num_examples}
            if is_finite(claimed) and abs(claimed - wer) > self.defences.claim_margin:
                logger.warning("round %d: client %s claims a validation WER of %.1f %%; the "
                               "server measures %.1f %% on its scoring set", rnd, name,
                               claimed, wer)
        row.claims = claims
        row.score_seconds = round(time.monotonic() - started, 3)
        return measured
