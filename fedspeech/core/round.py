"""What one federated round does, written once for every transport.

Screen the updates, weight them (``num`` | ``loss`` | ``wer``), average them one at a time, train
on the server's held-out set, evaluate, record the round and keep the models. The legacy gRPC
strategy (``strategy.py``) and the Message-API strategy (:mod:`fedspeech.transports.app_strategy`)
are thin adapters that turn Flower's types into :class:`Update` objects and make the same calls;
this module imports neither Flower nor SpeechBrain: training, evaluation and saving arrive as
callables.

The lifecycle of round ``r`` (``r = core.round_number(transport_round)``)::

    begin(r) --> aggregate(r, updates) --+--> evaluate(r) ----------------+--> recorded
                                         |                                |   (sink.save_round,
                                         +--> record_client_evaluation(r) +    once per round)

``evaluate`` (the server's test sets) and ``record_client_evaluation`` (the clients' dev sets)
come in either order: the legacy server evaluates first, the App's strategy last. The round is
recorded (its checkpoint and ``history.json``) once both have happened, or once ``evaluate`` has
when the run has no federated evaluation (``client_evaluation=False``). ``evaluate`` of the
transport's round 0 is the initial model (skipped when resuming). Rounds are numbered globally: a
resumed run continues the count of the run it resumes.
"""

from __future__ import annotations

import logging
import math
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedspeech.base.checks import is_finite
from fedspeech.core import protocol
from fedspeech.core.combine import Combiner, ScoreFn
from fedspeech.core.defences import SERVER_WEIGHTINGS, Defences
from fedspeech.core.private import Privacy, PrivateRound
from fedspeech.core.row import RoundRow
from fedspeech.math.aggregate import (
    WEIGHT_STRATEGIES,
    NDArrays,
    l2_distance,
    update_problem,
    weighted_metrics,
)

logger = logging.getLogger("round")

ServerTrainFn = Callable[[NDArrays, int], NDArrays]
EvaluateFn = Callable[[NDArrays, int], tuple[float, dict[str, float]]]


class RoundSink:
    """Where finished rounds go (a :class:`history.RunStore` in the programs); default: nowhere."""

    def save_round(self, rnd: int, weights: NDArrays | None, history: list[RoundRow]) -> None:
        """Persist round ``rnd``: the model (when it changed) and the whole history."""

    def save_best(self, rnd: int, weights: NDArrays) -> None:
        """Keep ``weights`` as the best model so far (by federated validation WER)."""


@dataclass
class Update:
    """One client's answer to a training round, with its arrays decoded only on demand."""

    client: str  # the client's own id (``--cid`` / partition), its name in the history
    node: str  # the transport's id for it: tells apart two clients claiming one name
    num_examples: int
    metrics: Mapping[str, Any]
    decode: Callable[[], NDArrays]
    tokenizer_sha256: str | None = None
    payload_bytes: int = 0  # the update's size as it arrived (for the benchmark)


@dataclass
class Evaluation:
    """One client's evaluation of the global model on its own dev set."""

    client: str
    num_examples: int
    loss: float
    metrics: Mapping[str, Any]


class RoundCore:
    """The state of a federation across rounds: global weights, history, best model."""

    def __init__(
        self,
        *,
        initial_weights: NDArrays,
        weight_strategy: str = "num",
        server_train: ServerTrainFn | None = None,
        evaluate: EvaluateFn | None = None,
        sink: RoundSink | None = None,
        tokenizer_sha256: str | None = None,
        history: Sequence[RoundRow | Mapping[str, Any]] = (),
        row_defaults: Mapping[str, Any] | None = None,
        min_updates: int = 1,
        accept_failures: bool = True,
        client_evaluation: bool = False,
        defences: Defences | None = None,
        score: ScoreFn | None = None,
        privacy: Privacy | None = None,
    ):
        if weight_strategy not in WEIGHT_STRATEGIES + SERVER_WEIGHTINGS:
            raise ValueError(f"unknown weight strategy '{weight_strategy}'")
        self.weights = list(initial_weights)
        self.weight_strategy = weight_strategy
        self.combiner = Combiner(weight_strategy, defences or Defences(), score)
        self.server_train = server_train
        self.evaluate_fn = evaluate
        self.sink = sink or RoundSink()
        self.tokenizer_sha256 = tokenizer_sha256
        self.history: list[RoundRow] = [
            r if isinstance(r, RoundRow) else RoundRow.from_dict(r) for r in history]
        self.row_defaults = dict(row_defaults or {})
        self.min_updates = min_updates
        self.accept_failures = accept_failures
        self.client_evaluation = client_evaluation  # does every round have one?
        self.start_round = self.history[-1].round if self.history else 0
        self.best_wer = min(
            (r.client_eval_wer for r in self.history if is_finite(r.client_eval_wer)),
            default=math.inf,
        )
        self.private = PrivateRound(privacy, self.history) if privacy else None
        self.stopped = False  # the privacy budget ended the run before its last round
        self._started: dict[int, float] = {}
        self._pending: dict[int, set[str]] = {}  # what round r still waits for before recording
        self._initial_eval_seconds: float | None = None  # goes into the first row made
        # example-weighted metrics of the updates kept by the last :meth:`aggregate` ({} if none)
        self.fit_metrics: dict[str, Any] = {}

    def round_number(self, server_round: int) -> int:
        """The global number of the transport's ``server_round`` (1-based)."""
        return server_round + self.start_round

    def _row(self, rnd: int) -> RoundRow:
        for row in self.history:
            if row.round == rnd:
                return row
        row = RoundRow(rnd)
        for key, value in self.row_defaults.items():
            row.set(key, value)
        if not self.history and self._initial_eval_seconds is not None:
            row.initial_eval_seconds = self._initial_eval_seconds  # round 0 has no row
        self.history.append(row)
        self._pending[rnd] = {"evaluate", "client_evaluation"} if self.client_evaluation \
            else {"evaluate"}
        return row

    def begin(self, rnd: int, sent_bytes: int = 0) -> None:
        """Round ``rnd`` starts: the global model (``sent_bytes`` each) goes to its clients."""
        self._started.setdefault(rnd, time.monotonic())
        row = self._row(rnd)
        if sent_bytes:
            row.bytes_sent_per_client = sent_bytes

    def allows(self, rnd: int, sampled: int) -> bool:
        """Whether round ``rnd`` may train ``sampled`` clients: False once it would take the
        privacy budget past ``--dp_max_epsilon`` (the run then stops, its rounds recorded)."""
        if not self.stopped and self.private is not None:
            self.stopped = not self.private.allows(rnd, sampled)
        return not self.stopped

    # ---- training ----------------------------------------------------------------------------
    def aggregate(
        self, rnd: int, updates: Sequence[Update], failed: Sequence[str] = (), failures: int = 0,
        sampled: int | None = None,
    ) -> NDArrays | None:
        """Screen, weight and average ``updates``, then train on the server; None keeps the model.

        Updates are summed in a fixed order (by client name), so equal seeds give equal numbers
        whatever order the answers arrived in.
        """
        self.fit_metrics = {}
        if self.stopped:
            return None
        row = self._row(rnd)
        started = time.monotonic()
        if rnd in self._started:  # clients' training, serialisation and transfer
            row.fit_wait_seconds = round(started - self._started[rnd], 3)
        row.failures = failures
        row.failed_clients = sorted(failed)
        if failed:
            logger.warning("round %d: no update from client(s) %s", rnd, ", ".join(sorted(failed)))
        if failures and not self.accept_failures:
            logger.warning("round %d: failures not accepted (--no-accept_failures), global "
                           "model kept", rnd)
            row.accepted = False
            return None
        if len(updates) < self.min_updates:
            logger.warning("round %d: only %d of --min_fit_clients %d answered, global model "
                           "kept", rnd, len(updates), self.min_updates)
            row.accepted = False
            return None

        rejected: dict[str, str] = {}
        candidates: list[tuple[str, Update]] = []
        for name, update in _named(updates):
            problem = self._metric_problem(update)
            if problem is None:
                candidates.append((name, update))
            else:
                rejected[name] = problem
        if self.private is not None:  # equal weights over the sampled clients, clipped, noisy
            kept, aggregated = self.private.combine(
                rnd, row, self.weights, candidates, self._decode, rejected,
                sampled=sampled if sampled is not None else len(updates) + len(failed))
        else:
            kept, aggregated = self.combiner.combine(rnd, row, self.weights, candidates,
                                                     self._decode, rejected)
        for name, problem in rejected.items():
            logger.warning("round %d: rejected client %s: %s", rnd, name, problem)
        row.rejected = rejected
        row.clients = [name for name, _, _ in kept]
        if aggregated is None:
            logger.warning("round %d: no usable update, global model kept unchanged", rnd)
            row.accepted = False
            return None
        row.coefficients = {name: c for name, _, c in kept}
        row.aggregate_seconds = round(time.monotonic() - started, 3)
        _client_costs(row, [(name, u) for name, u, _ in kept])
        metrics = weighted_metrics([(u.num_examples, dict(u.metrics)) for _, u, _ in kept])
        self.fit_metrics = metrics
        row.train_loss = metrics.get(protocol.TRAIN_LOSS)
        row.valid_wer = metrics.get(protocol.VALID_WER)
        row.accepted = True
        if self.server_train is not None:
            aggregated = self._train_on_server(rnd, aggregated, row)
        self.weights = aggregated
        return aggregated

    def _metric_problem(self, update: Update) -> str | None:
        """Why an update is refused before its arrays are even decoded, or None."""
        if self.tokenizer_sha256 is not None and update.tokenizer_sha256 != self.tokenizer_sha256:
            return (f"tokenizer mismatch (client {str(update.tokenizer_sha256)[:12]}, server "
                    f"{self.tokenizer_sha256[:12]}): give every process the same --tokenizer_path")
        n = update.num_examples
        if n < 0 or (self.weight_strategy == "num" and n == 0):
            return f"num_examples must be positive, got {n}"
        metric = self.combiner.claimed_metric
        if metric is not None and not is_finite(update.metrics.get(metric)):
            return f"{metric} missing or not finite"
        return None

    def _decode(self, update: Update) -> tuple[str | None, NDArrays | None]:
        try:
            arrays = update.decode()
        except Exception as err:  # malformed bytes from a client
            return f"undecodable parameters ({type(err).__name__})", None
        return update_problem(arrays, self.weights), arrays

    def _train_on_server(self, rnd: int, aggregated: NDArrays, row: RoundRow) -> NDArrays:
        started = time.monotonic()
        trained = self.server_train(aggregated, rnd)
        row.server_train_seconds = round(time.monotonic() - started, 3)
        problem = update_problem(trained, aggregated)
        if problem is not None:
            logger.warning("round %d: server-side training result dropped: %s", rnd, problem)
            return aggregated
        row.server_train_delta = l2_distance(trained, aggregated)
        return trained

    # ---- evaluation --------------------------------------------------------------------------
    def evaluate(self, rnd: int) -> tuple[float, dict[str, float]] | None:
        """Server-side evaluation of round ``rnd``'s global model on the test sets.

        The transport's round 0 (``rnd == start_round``) is the initial model: evaluated in a new
        run, skipped when resuming (it was evaluated when its round ended). It has no row.
        """
        initial = rnd == self.start_round
        if (initial and self.start_round > 0) or self.stopped:
            return None
        result = None
        if self.evaluate_fn is not None:
            started = time.monotonic()
            loss, metrics = self.evaluate_fn(self.weights, rnd)
            seconds = round(time.monotonic() - started, 3)
            result = float(loss), metrics
            if initial:
                self._initial_eval_seconds = seconds
                logger.info("initial model: test loss %.4f, %s", loss, metrics)
                return result
            row = self._row(rnd)
            row.server_eval_seconds = seconds
            row.test_loss = float(loss)
            for key, value in metrics.items():
                row.set(f"test_{key}", value)
        if not initial:
            self._done(rnd, "evaluate")
        return result

    def record_client_evaluation(
        self, rnd: int, evaluations: Sequence[Evaluation], failures: int = 0
    ) -> dict[str, float]:
        """The clients' weighted dev-set loss and WER; keeps the best model by that WER.

        A round with failed evaluations and ``accept_failures`` off records none of them.
        """
        if failures and not self.accept_failures:
            evaluations = ()
        if self.stopped:
            return {}
        if not evaluations:
            if any(row.round == rnd for row in self.history):
                self._done(rnd, "client_evaluation")
            return {}
        n = sum(e.num_examples for e in evaluations)
        loss = sum(e.num_examples * e.loss for e in evaluations) / n if n else math.nan
        metrics = weighted_metrics([(e.num_examples, dict(e.metrics)) for e in evaluations])
        row = self._row(rnd)
        row.client_eval_loss = float(loss)
        row.client_eval_wer = metrics.get(protocol.WER)
        row.client_eval_clients = len(evaluations)
        seconds = [float(e.metrics[protocol.EVAL_SECONDS]) for e in evaluations
                   if is_finite(e.metrics.get(protocol.EVAL_SECONDS))]
        if seconds:
            row.client_eval_seconds_max = round(max(seconds), 3)
            row.client_eval_seconds_mean = round(sum(seconds) / len(seconds), 3)
        wer = metrics.get(protocol.WER)
        if is_finite(wer) and wer < self.best_wer:  # the clients' dev sets, never the test set
            self.best_wer = float(wer)
            row.best = True
            self.sink.save_best(rnd, self.weights)
        self._done(rnd, "client_evaluation")
        return {"loss": float(loss), **metrics}

    # ---- records -----------------------------------------------------------------------------
    def _done(self, rnd: int, phase: str) -> None:
        """``phase`` of round ``rnd`` happened; once none is left, the round is recorded. (A
        phase that comes after the round was recorded, which no transport does, records it
        again rather than lose what it added.)"""
        pending = self._pending.get(rnd, set())
        pending.discard(phase)
        if not pending:
            self._record(rnd)

    def _record(self, rnd: int) -> None:
        """The round's time and memory, then its model and the history to the sink, once."""
        row = self._row(rnd)
        started = self._started.get(rnd)
        if started is not None:
            row.seconds = round(time.monotonic() - started, 3)
        row.server_peak_rss_mb = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
        self._pending.pop(rnd, None)
        self.sink.save_round(rnd, self.weights, self.history)


def _client_costs(row: RoundRow, kept: Sequence[tuple[str, Update]]) -> None:
    """Per-phase client time (max and mean), bytes and peak memory, for the benchmark."""
    for key in (protocol.FIT_SECONDS, protocol.TRAIN_SECONDS, protocol.VALID_SECONDS):
        values = [float(u.metrics[key]) for _, u in kept if is_finite(u.metrics.get(key))]
        if values:
            row.set(f"client_{key}_max", round(max(values), 3))
            row.set(f"client_{key}_mean", round(sum(values) / len(values), 3))
    row.bytes_received = {name: u.payload_bytes for name, u in kept if u.payload_bytes}
    row.client_peak_rss_mb = {name: round(float(u.metrics[protocol.PEAK_RSS_MB]), 1)
                              for name, u in kept if is_finite(u.metrics.get(protocol.PEAK_RSS_MB))}
    row.examples = sum(u.num_examples for _, u in kept)


def _named(updates: Sequence[Update]) -> list[tuple[str, Update]]:
    """Updates sorted by client name; a name claimed twice is told apart by the transport id."""
    seen: set[str] = set()
    named = []
    for update in sorted(updates, key=lambda u: (u.client, u.node)):
        name = update.client if update.client not in seen else f"{update.client}@{update.node}"
        seen.add(name)
        named.append((name, update))
    return named
