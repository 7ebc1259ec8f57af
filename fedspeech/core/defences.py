"""What the server does not take on a client's word: the defences of a round, as one value.

A client's update, sample count, loss and WER are claims. :class:`Defences` says which checks and
bounds the round core applies to them (``docs/trust.md`` has the measurements):

- ``score``: the server measures each update on a scoring set of its own (``--score_path``), for
  the ``server_wer`` / ``server_loss`` weightings and to compare with what the client claims
  (a gap above ``claim_margin`` WER points is logged with the client's name);
- ``max_examples``: a claimed sample count above it counts as ``max_examples`` (``num``);
- ``max_client_share``: no client's coefficient above it (:func:`fedspeech.math.robust.cap_shares`);
- ``clip_update_norm``: each client's change from the global model clipped to this L2 norm, or to
  the round's median change (``auto``);
- ``aggregation``: the plain weighted mean, or one of Flower's robust rules (median, trimmed
  mean, Krum, Multi-Krum, Bulyan) with ``trim_fraction`` / ``num_malicious``.

The default is none of them: the tutorial's FedAvg.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedspeech.base.checks import check_at_least, check_file
from fedspeech.base.errors import UsageError
from fedspeech.math.robust import AGGREGATIONS, check_aggregation

SERVER_WEIGHTINGS = ("server_wer", "server_loss")  # measured by the server, not claimed
AUTO = "auto"


@dataclass(frozen=True)
class Defences:
    aggregation: str = "mean"
    trim_fraction: float = 0.2
    num_malicious: int = 0
    clip_update_norm: float | str | None = None  # a norm, "auto", or None (off)
    max_client_share: float | None = None
    max_examples: int | None = None
    claim_margin: float = 15.0  # WER points between a claim and the server's measurement

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation '{self.aggregation}'")

    @property
    def streams(self) -> bool:
        """Whether updates can be added one at a time (else the round holds all of them)."""
        return self.aggregation == "mean" and self.clip_update_norm != AUTO


def check_trust(s: Any) -> None:
    """The defences' settings (a :class:`~fedspeech.core.settings.ServerSettings`), and the
    combinations that cannot work, in one line each."""
    if s.weight_strategy in SERVER_WEIGHTINGS and not s.score_path:
        raise UsageError(f"--weight_strategy {s.weight_strategy} needs --score_path (the "
                         "server's own scoring set)" + (" (--robust uses it)" if s.robust else ""))
    check_file(s.score_path, "--score_path")
    if s.score_path and Path(s.score_path).resolve() == Path(s.test_path).resolve():
        raise UsageError("--score_path must not be the test set (--test_path)")
    if s.score_utts is not None:
        check_at_least(s.score_utts, 1, "--score_utts")
    if s.max_client_share is not None and not 0 < s.max_client_share <= 1:
        raise UsageError(f"--max_client_share must be within (0, 1], got {s.max_client_share}")
    if s.max_client_share is not None and s.max_client_share * s.min_fit_clients < 1:
        raise UsageError(f"--max_client_share {s.max_client_share} cannot hold "
                         f"--min_fit_clients {s.min_fit_clients} (needs at least "
                         f"1/{s.min_fit_clients})")
    if s.max_examples is not None:
        check_at_least(s.max_examples, 1, "--max_examples")
    clip = s.clip_update_norm
    if clip is not None and clip != AUTO:
        try:
            value = float(clip)
        except ValueError:
            raise UsageError(f"--clip_update_norm '{clip}': expected a number or auto") from None
        if not value > 0:
            raise UsageError(f"--clip_update_norm must be positive, got {clip}")
    check_at_least(s.num_malicious, 0, "--num_malicious")
    try:
        check_aggregation(s.aggregation, s.min_fit_clients, s.num_malicious, s.trim_fraction)
    except ValueError as err:
        raise UsageError(f"--aggregation {err} (--min_fit_clients)" if "clients" in str(err)
                         else f"--aggregation: {err}") from None
