"""User-level differential privacy of the averaged update (DP-FedAvg), as pure functions, and
Flower's own accountant for the (epsilon, delta) it spends.

The mechanism, per round, over the m clients the round *sampled* (a client that drops out or is
refused contributes a zero change; the noise does not shrink with it)::

    Delta_k = clip(u_k - g, C)                      each change to L2 norm C at most
    g'      = g + (sum_k Delta_k) / m + N(0, (sigma * C / m)^2 I)

Adaptive clipping (Andrew et al. 2021, "Differentially private learning with adaptive
clipping", the rule Flower's adaptive-clipping wrappers use) moves C towards the ``target``
quantile of the change norms: with b the noisy fraction of changes not clipped,
``C <- C * exp(-eta * (b - target))``. Releasing b costs privacy too; with its noise multiplier
sigma_b the averaged update keeps an effective multiplier (their Theorem 1)
``sigma_eff = (sigma^-2 - (2 sigma_b)^-2)^(-1/2)``.

Accounting: ``flwr.supercore.privacy_accounting`` (``RdpAccountant``, from ``flwr[dp]``, over
Google's dp-accounting), composed once per round with the sampled Gaussian event.
"""

from __future__ import annotations

import math

import numpy as np

NDArrays = list[np.ndarray]


def noise_std(noise_multiplier: float, clip_norm: float, sampled: int) -> float:
    """Standard deviation of the Gaussian noise added to the averaged change: sigma * C / m."""
    if sampled < 1:
        raise ValueError("a private round needs at least one sampled client")
    return noise_multiplier * clip_norm / sampled


def add_noise(arrays: NDArrays, std: float, rng: np.random.Generator) -> NDArrays:
    """``arrays`` plus N(0, std^2) on every floating-point element (counters are left alone)."""
    out = []
    for a in arrays:
        if np.issubdtype(a.dtype, np.floating) and std > 0:
            out.append((a.astype(np.float64) + rng.normal(0.0, std, a.shape)).astype(a.dtype))
        else:
            out.append(a)
    return out


def adapt_clip(clip_norm: float, unclipped: int, sampled: int, *, target: float,
               learning_rate: float, count_std: float, rng: np.random.Generator
               ) -> tuple[float, float]:
    """The next round's clip norm and the noisy unclipped fraction it was moved by."""
    fraction = (unclipped + rng.normal(0.0, count_std)) / sampled
    return clip_norm * math.exp(-learning_rate * (fraction - target)), fraction


def effective_noise_multiplier(noise_multiplier: float, count_noise_multiplier: float | None
                               ) -> float:
    """The averaged update's noise multiplier once the clip's count is released as well."""
    if not count_noise_multiplier:
        return noise_multiplier
    inner = noise_multiplier ** -2 - (2 * count_noise_multiplier) ** -2
    if inner <= 0:
        raise ValueError(f"the count's noise multiplier {count_noise_multiplier} must exceed "
                         f"half the update's ({noise_multiplier})")
    return inner ** -0.5


class Accountant:
    """Flower's RDP accountant for one federation: composes a round, says what it would cost."""

    def __init__(self, *, population: int, delta: float, max_epsilon: float | None,
                 sampled_all: bool, state: dict | None = None):
        from flwr.supercore.privacy_accounting import (
            NeighboringRelation,
            PrivacyConfig,
            SamplingMethod,
        )
        from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

        # Every connected client trains: no amplification by sampling. A cohort drawn from the
        # population without replacement (Flower's sampling): the replace-one relation.
        method, relation = (
            (SamplingMethod.NO_AMPLIFICATION, NeighboringRelation.ADD_OR_REMOVE_ONE) if sampled_all
            else (SamplingMethod.WITHOUT_REPLACEMENT, NeighboringRelation.REPLACE_ONE))
        self.sampling = method.value
        self.relation = relation.value
        self.population = population
        self.delta = delta
        self.max_epsilon = max_epsilon
        self._accountant = RdpAccountant(PrivacyConfig(
            target_delta=delta, population_size=population, neighboring_relation=relation,
            sampling_method=method, max_epsilon=max_epsilon))
        if state:
            self._accountant.load_state_dict(state)

    def _event(self, noise_multiplier: float, sampled: int):
        from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

        return GaussianPrivacyEvent(noise_multiplier=noise_multiplier,
                                    sample_size=min(sampled, self.population),
                                    population_size=self.population)

    def would_exceed(self, noise_multiplier: float, sampled: int) -> bool:
        if self.max_epsilon is None:
            return False
        return self._accountant.would_exceed(self._event(noise_multiplier, sampled),
                                             self.max_epsilon)

    def spend(self, noise_multiplier: float, sampled: int) -> float:
        """Compose one round; the epsilon spent so far at ``delta``."""
        self._accountant.compose(self._event(noise_multiplier, sampled))
        return self.epsilon

    @property
    def epsilon(self) -> float:
        if self._accountant.num_releases == 0:
            return 0.0
        return float(self._accountant.get_epsilon(self.delta))

    def state_dict(self) -> dict:
        return self._accountant.state_dict()
