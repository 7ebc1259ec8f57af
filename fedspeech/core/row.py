"""One round of a run, as a typed record: what ``history.json`` holds one object of per round.

:class:`RoundRow` is filled by :class:`~fedspeech.core.round.RoundCore` as the round goes and read
by attribute by the records, the plots and the benchmark. In JSON it is one flat object whose keys
are the field names, plus the per-test-set keys in :attr:`RoundRow.extra` (``test_<name>_wer``,
``final_test_wer``, ...); unset fields are left out, so older histories load as they are.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from fedspeech.base.checks import finite_or_none


@dataclass
class RoundRow:
    """A round's record; None means "did not happen in this round" (and is not written)."""

    round: int
    # the run (the same in every row: enough to tell two runs' numbers apart)
    seed: int | None = None
    config: str | None = None
    config_sha256: str | None = None
    tokenizer_sha256: str | None = None
    weight_strategy: str | None = None
    local_epochs: int | None = None
    overrides: list[str] | None = None
    versions: dict[str, str] | None = None
    transport: str | None = None
    # training and aggregation
    failures: int | None = None
    failed_clients: list[str] | None = None
    accepted: bool | None = None
    rejected: dict[str, str] | None = None
    clients: list[str] | None = None
    coefficients: dict[str, float] | None = None
    examples: int | None = None
    # what the server did not take on the clients' word (fedspeech/core/defences.py)
    aggregation: str | None = None  # a robust rule instead of the mean
    selected: list[str] | None = None  # the updates Krum / Bulyan kept
    capped: dict[str, str] | None = None  # client -> which claim or share was capped, from what
    update_norms: dict[str, float] | None = None  # client -> L2 norm of its change
    clip_norm: float | None = None
    clipped: list[str] | None = None
    claims: dict[str, dict[str, Any]] | None = None  # client -> claimed and measured WER, loss
    score_seconds: float | None = None
    # differential privacy (fedspeech/core/private.py): spent so far, and this round's mechanism
    dp_epsilon: float | None = None
    dp_delta: float | None = None
    dp_sampling: str | None = None  # the accountant's sampling assumption, "... of N"
    dp_sampled: int | None = None  # m: the clients the round sampled (the noise's divisor)
    dp_noise_multiplier: float | None = None  # effective sigma of the averaged change
    dp_noise_std: float | None = None  # sigma * C / m
    dp_unclipped_fraction: float | None = None  # adaptive clipping's noisy count / m
    dp_next_clip_norm: float | None = None
    train_loss: float | None = None
    valid_wer: float | None = None
    server_train_delta: float | None = None
    # server-side evaluation on the test sets (extra sets: ``extra``)
    test_loss: float | None = None
    test_wer: float | None = None
    test_cer: float | None = None
    # federated evaluation on the clients' dev sets
    client_eval_loss: float | None = None
    client_eval_wer: float | None = None
    client_eval_clients: int | None = None
    best: bool | None = None
    # costs (the benchmark's columns)
    seconds: float | None = None
    initial_eval_seconds: float | None = None
    fit_wait_seconds: float | None = None
    aggregate_seconds: float | None = None
    server_train_seconds: float | None = None
    server_eval_seconds: float | None = None
    client_fit_seconds_max: float | None = None
    client_fit_seconds_mean: float | None = None
    client_train_seconds_max: float | None = None
    client_train_seconds_mean: float | None = None
    client_valid_seconds_max: float | None = None
    client_valid_seconds_mean: float | None = None
    client_eval_seconds_max: float | None = None
    client_eval_seconds_mean: float | None = None
    bytes_sent_per_client: int | None = None
    bytes_received: dict[str, int] | None = None
    client_peak_rss_mb: dict[str, float] | None = None
    server_peak_rss_mb: float | None = None
    final_test_seconds: float | None = None
    final_test_loss: float | None = None
    # the round's model on disk
    model_checkpoint: str | None = None
    model_sha256: str | None = None
    # keys named by the run's own test sets: test_<name>_wer/cer, final_test_<metric>
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name != "extra" and getattr(self, f.name) is not None}
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundRow:
        known = {f.name for f in fields(cls)} - {"extra"}
        row = cls(**{k: v for k, v in data.items() if k in known})
        row.extra = {k: v for k, v in data.items() if k not in known}
        return row

    def set(self, key: str, value: Any) -> None:
        """Set a field, or an ``extra`` key when no field has that name."""
        if key != "extra" and key in _FIELDS:
            setattr(self, key, value)
        else:
            self.extra[key] = value

    def number(self, key: str) -> float | None:
        """A field or extra key as a finite float, else None (for tables and plots)."""
        return finite_or_none(self.get(key))

    # read access by key, as the JSON has it (tests and old scripts compare rows with dicts)
    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())


_FIELDS = {f.name for f in fields(RoundRow)}


def extra_test_keys(history: Sequence[RoundRow]) -> list[str]:
    """``test_<name>_wer`` of the extra test sets (``--extra_test``), sorted."""
    return sorted({k for row in history for k in row.extra
                   if k.startswith("test_") and k.endswith("_wer")})
