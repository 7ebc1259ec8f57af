"""Secure aggregation's settings: what SecAgg+ needs, and what it rules out.

With SecAgg+ the server learns only the clients' example-weighted mean change, never one
client's update, so everything that looks at a single update is impossible and refused in one
line: per-client screening by measurement, the robust rules, clipping and caps, any weighting but
``num`` (SecAgg+ weighs by the sample count inside the protocol), and central DP (its clipping
is per client, on the server).
"""

from __future__ import annotations

from typing import Any

from fedspeech.base.errors import UsageError


def check_secure(s: Any) -> None:
    """The SecAgg+ settings of a :class:`~fedspeech.core.settings.ServerSettings`."""
    if not s.secure_aggregation:
        return
    for key, value in (("secagg-clipping-range", s.secagg_clipping_range),
                       ("secagg-max-weight", s.secagg_max_weight)):
        if not value > 0:
            raise UsageError(f"{key} must be positive, got {value}")
    for key, value in (("secagg-num-shares", s.secagg_num_shares),
                       ("secagg-reconstruction-threshold", s.secagg_reconstruction_threshold)):
        if not value > 0:
            raise UsageError(f"{key} must be positive (a count, or a fraction <= 1), got {value}")
    if s.secagg_num_shares > 1 and s.secagg_reconstruction_threshold > s.secagg_num_shares:
        raise UsageError(f"secagg-reconstruction-threshold {s.secagg_reconstruction_threshold} "
                         f"exceeds secagg-num-shares {s.secagg_num_shares}")
    per_round = s.clients_per_round or max(s.min_fit_clients,
                                           int(s.fraction_fit * s.min_available_clients))
    if per_round < 2:
        raise UsageError("secure-aggregation needs at least 2 clients a round (clients-per-round, "
                         "min-fit-clients, or fraction-fit of min-available-clients): one "
                         "client's sum is its update")
    ruled_out = [(s.weight_strategy != "num", f"weight-strategy {s.weight_strategy}"),
                 (s.aggregation != "mean", f"aggregation {s.aggregation}"),
                 (s.robust, "robust"), (s.clip_update_norm is not None, "clip-update-norm"),
                 (s.max_client_share is not None, "max-client-share"),
                 (s.max_examples is not None, "max-examples"),
                 (s.score_path is not None, "score-path"),
                 (s.dp_noise_multiplier is not None, "dp-noise-multiplier")]
    for bad, key in ruled_out:
        if bad:
            raise UsageError(f"{key} cannot be combined with secure-aggregation: the server "
                             "sees only the sum of the updates, never one client's")
