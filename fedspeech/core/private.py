"""A differentially private round: DP-FedAvg with the server's clipping and noise, accounted.

:class:`PrivateRound` replaces the weighting of :mod:`fedspeech.core.combine` when
``--dp_noise_multiplier`` is set: every sampled client counts the same, each change is clipped to
C (fixed, or adapted towards the median change norm), the sum is divided by the number of clients
the round *sampled* and Gaussian noise of standard deviation sigma * C / m is added
(:mod:`fedspeech.math.privacy`). The guarantee is user-level: neighbouring federations differ in
one client's whole data. It holds against everyone who sees only the global models (other
clients, whoever gets the checkpoints); the server itself sees each update in the clear.
Server-side training and evaluation come after the noise and use only the server's own data.

Every recorded round carries the (epsilon, delta) spent so far; a round that would pass
``--dp_max_epsilon`` is not started (:meth:`PrivateRound.allows`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedspeech.base.errors import UsageError
from fedspeech.core.row import RoundRow
from fedspeech.math.aggregate import NDArrays, WeightedSum
from fedspeech.math.privacy import (
    Accountant,
    adapt_clip,
    add_noise,
    effective_noise_multiplier,
    noise_std,
)
from fedspeech.math.robust import clip_change

logger = logging.getLogger("round")
ADAPTIVE = "adaptive"
# Andrew et al.'s defaults (and Flower's adaptive wrappers'): the median, eta 0.2, count noise m/20
TARGET_QUANTILE, CLIP_LEARNING_RATE, COUNT_NOISE_SHARE = 0.5, 0.2, 1 / 20


@dataclass(frozen=True)
class Privacy:
    noise_multiplier: float
    clip_norm: float | str  # C, or "adaptive" (starting at initial_clip_norm)
    population: int  # N: the clients a round's cohort is drawn from
    delta: float | None = None  # None: 1/N
    max_epsilon: float | None = None
    initial_clip_norm: float = 1.0
    sampled_all: bool = True  # every client trains every round (no amplification by sampling)
    seed: int = 0

    @property
    def adaptive(self) -> bool:
        return self.clip_norm == ADAPTIVE


class PrivateRound:
    """The DP mechanism and its accountant across the rounds of one federation."""

    def __init__(self, privacy: Privacy, history: Sequence[RoundRow] = ()):
        p = self.privacy = privacy
        self.delta = p.delta or 1.0 / p.population
        self.clip = p.initial_clip_norm if p.adaptive else float(p.clip_norm)
        self.rng = np.random.default_rng(p.seed)
        self.accountant = Accountant(population=p.population, delta=self.delta,
                                     max_epsilon=p.max_epsilon, sampled_all=p.sampled_all)
        for row in history:  # a resumed run spends what its rounds spent
            if row.dp_noise_multiplier is not None:
                self.accountant.spend(row.dp_noise_multiplier, row.dp_sampled)
            if row.dp_next_clip_norm is not None:
                self.clip = row.dp_next_clip_norm
            self.rng = np.random.default_rng([p.seed, row.round])

    def _multiplier(self, sampled: int) -> float:
        count = COUNT_NOISE_SHARE * sampled if self.privacy.adaptive else None
        # the count's noise multiplier: its std over its sensitivity (one client, one count)
        return effective_noise_multiplier(self.privacy.noise_multiplier, count)

    def allows(self, rnd: int, sampled: int) -> bool:
        """Whether round ``rnd`` with ``sampled`` clients stays within ``--dp_max_epsilon``."""
        if not self.accountant.would_exceed(self._multiplier(sampled), sampled):
            return True
        logger.warning("round %d not started: it would take epsilon past --dp_max_epsilon %g "
                       "(%.3f spent so far, delta %.2e)", rnd, self.privacy.max_epsilon,
                       self.accountant.epsilon, self.delta)
        return False

    def combine(self, rnd: int, row: RoundRow, reference: NDArrays,
                candidates: Sequence[tuple[str, Any]],
                decode: Callable[[Any], tuple[str | None, NDArrays | None]],
                rejected: dict[str, str], sampled: int
                ) -> tuple[list[tuple[str, Any, float]], NDArrays | None]:
        """The noisy average change over the ``sampled`` clients (kept ones weigh 1/m each)."""
        sampled = max(sampled, len(candidates), 1)
        self.rng = np.random.default_rng([self.privacy.seed, rnd])  # resumable noise
        total, kept, norms, unclipped = WeightedSum(), [], {}, 0
        for name, update in candidates:
            problem, arrays = decode(update)
            if problem is not None:
                rejected[name] = problem
                continue
            clipped, norms[name] = clip_change(arrays, reference, self.clip)
            unclipped += norms[name] <= self.clip
            total.add([c - r if np.issubdtype(c.dtype, np.floating) else c
                       for c, r in zip(clipped, reference, strict=True)], 1.0)
            kept.append((name, update, 1.0 / sampled))
            del arrays, clipped
        if not kept:
            return [], None
        mean = total.result()  # the mean change of the kept clients (integer arrays: theirs)
        scale = len(kept) / sampled  # ... over all sampled ones: the dropped add zero
        std = noise_std(self.privacy.noise_multiplier, self.clip, sampled)
        change = [m * scale if np.issubdtype(m.dtype, np.floating) else m for m in mean]
        noisy = add_noise(change, std, self.rng)
        combined = [(r + d).astype(r.dtype) if np.issubdtype(d.dtype, np.floating) else d
                    for r, d in zip(reference, noisy, strict=True)]
        multiplier = self._multiplier(sampled)
        row.update_norms = norms
        row.clip_norm = self.clip
        row.clipped = [n for n, v in norms.items() if v > self.clip]
        row.dp_noise_std = std
        row.dp_noise_multiplier = multiplier
        row.dp_sampled = sampled
        row.dp_epsilon = self.accountant.spend(multiplier, sampled)
        row.dp_delta = self.delta
        row.dp_sampling = f"{self.accountant.sampling} of {self.privacy.population}"
        if self.privacy.adaptive:
            self.clip, row.dp_unclipped_fraction = adapt_clip(
                self.clip, unclipped, sampled, target=TARGET_QUANTILE,
                learning_rate=CLIP_LEARNING_RATE, count_std=COUNT_NOISE_SHARE * sampled,
                rng=self.rng)
        row.dp_next_clip_norm = self.clip
        return kept, combined


def check_privacy(s: Any) -> None:
    """The DP settings (a :class:`~fedspeech.core.settings.ServerSettings`), and the
    combinations without a sound accounting here, refused in one line each."""
    dp = {k: getattr(s, k) for k in ("dp_clip_norm", "dp_delta", "dp_max_epsilon",
                                     "dp_population")}
    if s.dp_noise_multiplier is None:
        given = [f"--{k}" for k, v in dp.items() if v is not None]
        if given:
            raise UsageError(f"{given[0]} needs --dp_noise_multiplier")
        return
    if not s.dp_noise_multiplier > 0:
        raise UsageError(f"--dp_noise_multiplier must be positive, got {s.dp_noise_multiplier}")
    clip = s.dp_clip_norm
    if clip is None:
        raise UsageError("--dp_noise_multiplier needs --dp_clip_norm C|adaptive")
    if clip != ADAPTIVE:
        try:
            ok = float(clip) > 0
        except ValueError:
            ok = False
        if not ok:
            raise UsageError(f"--dp_clip_norm '{clip}': expected a positive number or adaptive")
    clients = max(s.clients_per_round, s.min_fit_clients)
    if clip == ADAPTIVE and clients * 2 * COUNT_NOISE_SHARE <= s.dp_noise_multiplier:
        raise UsageError(f"--dp_clip_norm adaptive with --dp_noise_multiplier "
                         f"{s.dp_noise_multiplier} needs more than "
                         f"{s.dp_noise_multiplier / (2 * COUNT_NOISE_SHARE):.0f} clients a "
                         f"round (the clip's count is released with noise too)")
    if s.dp_delta is not None and not 0 < s.dp_delta < 1:
        raise UsageError(f"--dp_delta must be within (0, 1), got {s.dp_delta}")
    if s.dp_max_epsilon is not None and not s.dp_max_epsilon > 0:
        raise UsageError(f"--dp_max_epsilon must be positive, got {s.dp_max_epsilon}")
    population = s.dp_population or s.min_available_clients
    if population < clients:
        raise UsageError(f"--dp_population {population} is smaller than the {clients} clients "
                         "a round samples")
    # each of these weighs, screens or combines updates in a way the accounting does not cover
    unsound = [(s.weight_strategy != "num", f"--weight_strategy {s.weight_strategy}"),
               (s.aggregation != "mean", f"--aggregation {s.aggregation}"),
               (s.robust, "--robust"), (s.clip_update_norm is not None, "--clip_update_norm"),
               (s.max_client_share is not None, "--max_client_share"),
               (s.max_examples is not None, "--max_examples"),
               (s.score_path is not None, "--score_path")]
    for bad, flag in unsound:
        if bad:
            raise UsageError(f"{flag} cannot be combined with --dp_noise_multiplier: DP-FedAvg "
                             "weighs every sampled client equally, and the accounting covers "
                             "nothing else")
