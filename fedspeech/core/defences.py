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

from fedspeech.math.robust import AGGREGATIONS

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

    @property
    def any(self) -> bool:
        return self != Defences(claim_margin=self.claim_margin)
