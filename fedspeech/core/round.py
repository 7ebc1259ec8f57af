"""What one federated round does, written once for every transport.

Screen the updates, weight them (``num`` | ``loss`` | ``wer``), average them one at a time, train
on the server's held-out set, evaluate, record the round and keep the models. The legacy gRPC
strategy (:mod:`strategy`) and the Message-API strategy (:mod:`server_app`) are thin adapters that
turn Flower's types into :class:`Update` objects and call :class:`RoundCore`; this module imports
neither Flower nor SpeechBrain: training, evaluation and saving arrive as callables.

Rounds are numbered globally: a resumed run continues the count of the run it resumes.
"""

from __future__ import annotations

import logging
import math
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedspeech.math.aggregate import (
    METRIC_FOR_STRATEGY,
    WEIGHT_STRATEGIES,
    NDArrays,
    WeightedSum,
    aggregation_coefficients,
    l2_distance,
    update_problem,
    weighted_metrics,
)

logger = logging.getLogger("round")

Row = dict[str, Any]
ServerTrainFn = Callable[[NDArrays, int], NDArrays]
EvaluateFn = Callable[[NDArrays, int], tuple[float, dict[str, float]]]


class RoundSink:
    """Where finished rounds go (a :class:`history.RunStore` in the programs); default: nowhere."""

    def save_round(self, rnd: int, weights: NDArrays | None, history: list[Row]) -> None:
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
        history: list[Row] | None = None,
        row_defaults: Mapping[str, Any] | None = None,
        min_updates: int = 1,
        accept_failures: bool = True,
    ):
        if weight_strategy not in WEIGHT_STRATEGIES:
            raise ValueError(f"unknown weight strategy '{weight_strategy}' (use num, loss or wer)")
        self.weights = list(initial_weights)
        self.weight_strategy = weight_strategy
        self.server_train = server_train
        self.evaluate_fn = evaluate
        self.sink = sink or RoundSink()
        self.tokenizer_sha256 = tokenizer_sha256
        self.history: list[Row] = list(history or [])
        self.row_defaults = dict(row_defaults or {})
        self.min_updates = min_updates
        self.accept_failures = accept_failures
        self.start_round = self.history[-1]["round"] if self.history else 0
        self.best_wer = min(
            (r["client_eval_wer"] for r in self.history if _finite(r.get("client_eval_wer"))),
            default=math.inf,
        )
        self._started: dict[int, float] = {}
        self._initial_eval_seconds: float | None = None  # goes into the first row made
        # example-weighted metrics of the updates kept by the last :meth:`aggregate` ({} if none)
        self.fit_metrics: dict[str, Any] = {}

    def round_number(self, server_round: int) -> int:
        """The global number of the transport's ``server_round`` (1-based)."""
        return server_round + self.start_round

    def row(self, rnd: int) -> Row:
        for row in self.history:
            if row["round"] == rnd:
                return row
        row = {"round": rnd, **self.row_defaults}
        if not self.history and self._initial_eval_seconds is not None:
            row["initial_eval_seconds"] = self._initial_eval_seconds  # round 0 has no row
        self.history.append(row)
        return row

    def begin(self, rnd: int, sent_bytes: int = 0) -> None:
        """Round ``rnd`` starts: the global model (``sent_bytes`` each) goes to its clients."""
        self._started.setdefault(rnd, time.monotonic())
        if sent_bytes:
            self.row(rnd)["bytes_sent_per_client"] = sent_bytes

    # ---- training ----------------------------------------------------------------------------
    def aggregate(
        self, rnd: int, updates: Sequence[Update], failed: Sequence[str] = (), failures: int = 0
    ) -> NDArrays | None:
        """Screen, weight and average ``updates``, then train on the server; None keeps the model.

        Updates are summed in a fixed order (by client name), so equal seeds give equal numbers
        whatever order the answers arrived in.
        """
        self.fit_metrics = {}
        row = self.row(rnd)
        started = time.monotonic()
        if rnd in self._started:  # clients' training, serialisation and transfer
            row["fit_wait_seconds"] = round(started - self._started[rnd], 3)
        row["failures"] = failures
        row["failed_clients"] = sorted(failed)
        if failed:
            logger.warning("round %d: no update from client(s) %s", rnd, ", ".join(sorted(failed)))
        if failures and not self.accept_failures:
            logger.warning("round %d: failures not accepted (--no-accept_failures), global "
                           "model kept", rnd)
            row["accepted"] = False
            return None
        if len(updates) < self.min_updates:
            logger.warning("round %d: only %d of --min_fit_clients %d answered, global model "
                           "kept", rnd, len(updates), self.min_updates)
            row["accepted"] = False
            return None

        rejected: dict[str, str] = {}
        candidates: list[tuple[str, Update]] = []
        for name, update in _named(updates):
            problem = self._metric_problem(update)
            if problem is None:
                candidates.append((name, update))
            else:
                rejected[name] = problem
        kept: list[tuple[str, Update, float]] = []
        total = WeightedSum()
        if candidates:
            values = [float(self._weighting_value(u)) for _, u in candidates]
            coefficients = aggregation_coefficients(values, self.weight_strategy)
            for (name, update), c in zip(candidates, coefficients, strict=True):
                problem, arrays = self._decode(update)
                if problem is None:
                    total.add(arrays, c)
                    kept.append((name, update, float(c)))
                else:
                    rejected[name] = problem
                del arrays  # one decoded update at a time, a refused one too
        for name, problem in rejected.items():
            logger.warning("round %d: rejected client %s: %s", rnd, name, problem)
        row["rejected"] = rejected
        row["clients"] = [name for name, _, _ in kept]
        if not kept:
            logger.warning("round %d: no usable update, global model kept unchanged", rnd)
            row["accepted"] = False
            return None
        row["coefficients"] = {name: c / total.total for name, _, c in kept}
        aggregated = total.result()
        row["aggregate_seconds"] = round(time.monotonic() - started, 3)
        _client_costs(row, [(name, u) for name, u, _ in kept])
        metrics = weighted_metrics([(u.num_examples, dict(u.metrics)) for _, u, _ in kept])
        self.fit_metrics = metrics
        row["train_loss"] = metrics.get("train_loss")
        row["valid_wer"] = metrics.get("valid_wer")
        row["accepted"] = True
        if self.server_train is not None:
            aggregated = self._train_on_server(rnd, aggregated, row)
        self.weights = aggregated
        return aggregated

    def _weighting_value(self, update: Update) -> Any:
        if self.weight_strategy == "num":
            return update.num_examples
        return update.metrics.get(METRIC_FOR_STRATEGY[self.weight_strategy])

    def _metric_problem(self, update: Update) -> str | None:
        """Why an update is refused before its arrays are even decoded, or None."""
        if self.tokenizer_sha256 is not None and update.tokenizer_sha256 != self.tokenizer_sha256:
            return (f"tokenizer mismatch (client {str(update.tokenizer_sha256)[:12]}, server "
                    f"{self.tokenizer_sha256[:12]}): give every process the same --tokenizer_path")
        n = update.num_examples
        if n < 0 or (self.weight_strategy == "num" and n == 0):
            return f"num_examples must be positive, got {n}"
        if not _finite(self._weighting_value(update)):
            return f"{METRIC_FOR_STRATEGY[self.weight_strategy]} missing or not finite"
        return None

    def _decode(self, update: Update) -> tuple[str | None, NDArrays | None]:
        try:
            arrays = update.decode()
        except Exception as err:  # malformed bytes from a client
            return f"undecodable parameters ({type(err).__name__})", None
        return update_problem(arrays, self.weights), arrays

    def _train_on_server(self, rnd: int, aggregated: NDArrays, row: Row) -> NDArrays:
        started = time.monotonic()
        trained = self.server_train(aggregated, rnd)
        row["server_train_seconds"] = round(time.monotonic() - started, 3)
        problem = update_problem(trained, aggregated)
        if problem is not None:
            logger.warning("round %d: server-side training result dropped: %s", rnd, problem)
            return aggregated
        row["server_train_delta"] = l2_distance(trained, aggregated)
        return trained

    # ---- evaluation --------------------------------------------------------------------------
    def evaluate(self, rnd: int) -> tuple[float, dict[str, float]] | None:
        """Server-side evaluation of the global model; round 0 is the initial model."""
        if self.evaluate_fn is None:
            return None
        started = time.monotonic()
        loss, metrics = self.evaluate_fn(self.weights, rnd)
        seconds = round(time.monotonic() - started, 3)
        if rnd == 0:
            self._initial_eval_seconds = seconds
            logger.info("initial model: test loss %.4f, %s", loss, metrics)
            return loss, metrics
        row = self.row(rnd)
        row["server_eval_seconds"] = seconds
        row["test_loss"] = float(loss)
        row.update({f"test_{k}": v for k, v in metrics.items()})
        return loss, metrics

    def evaluate_transport_round(self, server_round: int) -> tuple[float, dict] | None:
        """A transport's server-side evaluation hook, with the transport's round number.

        Round 0 is the initial model (skipped when resuming: it was evaluated when its round
        ended); a later round is evaluated, then recorded (checkpoint, history).
        """
        if server_round == 0:
            return None if self.start_round > 0 else self.evaluate(0)
        rnd = self.round_number(server_round)
        result = self.evaluate(rnd)
        self.end(rnd, model_changed=True)
        return result

    def record_client_evaluation(
        self, rnd: int, evaluations: Sequence[Evaluation]
    ) -> dict[str, float]:
        """The clients' weighted dev-set loss and WER; keeps the best model by that WER."""
        if not evaluations:
            return {}
        n = sum(e.num_examples for e in evaluations)
        loss = sum(e.num_examples * e.loss for e in evaluations) / n if n else math.nan
        metrics = weighted_metrics([(e.num_examples, dict(e.metrics)) for e in evaluations])
        row = self.row(rnd)
        row["client_eval_loss"] = float(loss)
        row["client_eval_wer"] = metrics.get("wer")
        row["client_eval_clients"] = len(evaluations)
        seconds = [float(e.metrics["eval_seconds"]) for e in evaluations
                   if _finite(e.metrics.get("eval_seconds"))]
        if seconds:
            row["client_eval_seconds_max"] = round(max(seconds), 3)
            row["client_eval_seconds_mean"] = round(sum(seconds) / len(seconds), 3)
        wer = metrics.get("wer")
        if _finite(wer) and wer < self.best_wer:  # the clients' dev sets, never the test set
            self.best_wer = float(wer)
            row["best"] = True
            self.sink.save_best(rnd, self.weights)
        return {"loss": float(loss), **metrics}

    def end(self, rnd: int, model_changed: bool) -> None:
        """Record the round's time and hand it to the sink (model, history)."""
        row = self.row(rnd)
        started = self._started.get(rnd)
        if started is not None:
            row["seconds"] = round(time.monotonic() - started, 3)
        row["server_peak_rss_mb"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
        self.sink.save_round(rnd, self.weights if model_changed else None, self.history)


def _client_costs(row: Row, kept: Sequence[tuple[str, Update]]) -> None:
    """Per-phase client time (max and mean), bytes and peak memory, for the benchmark."""
    for key in ("fit_seconds", "train_seconds", "valid_seconds"):
        values = [float(u.metrics[key]) for _, u in kept if _finite(u.metrics.get(key))]
        if values:
            row[f"client_{key}_max"] = round(max(values), 3)
            row[f"client_{key}_mean"] = round(sum(values) / len(values), 3)
    row["bytes_received"] = {name: u.payload_bytes for name, u in kept if u.payload_bytes}
    row["client_peak_rss_mb"] = {name: round(float(u.metrics["peak_rss_mb"]), 1)
                                 for name, u in kept if _finite(u.metrics.get("peak_rss_mb"))}
    row["examples"] = sum(u.num_examples for _, u in kept)


def _finite(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, int | float)
            and math.isfinite(value))


def _named(updates: Sequence[Update]) -> list[tuple[str, Update]]:
    """Updates sorted by client name; a name claimed twice is told apart by the transport id."""
    seen: set[str] = set()
    named = []
    for update in sorted(updates, key=lambda u: (u.client, u.node)):
        name = update.client if update.client not in seen else f"{update.client}@{update.node}"
        seen.add(name)
        named.append((name, update))
    return named
