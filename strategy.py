"""TrainAfterAggregateStrategy: FedAvg weighted by sample count, loss or WER, then server training.

The weighting math lives in :mod:`aggregate`. Side effects (training on the server's held-out set,
evaluation, saving) are callables handed to the strategy; this module imports neither SpeechBrain
nor argparse, and reads no global.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from flwr.common import (
    EvaluateRes,
    FitRes,
    GetPropertiesIns,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from aggregate import (
    METRIC_FOR_STRATEGY,
    WEIGHT_STRATEGIES,
    NDArrays,
    aggregation_coefficients,
    l2_distance,
    update_problem,
    weighted_average,
    weighted_metrics,
)

logger = logging.getLogger(__name__)

ServerTrainFn = Callable[[NDArrays, int], NDArrays]
# on_round_end(round, global weights or None when only the history changed, history rows)
RoundEndFn = Callable[[int, NDArrays | None, list[dict[str, Any]]], None]


def client_name(proxy: ClientProxy, metrics: dict[str, Scalar]) -> str:
    """The client's own id (``--cid``) when it reported one, else Flower's node id."""
    return str(metrics.get("cid", proxy.cid))


class TrainAfterAggregateStrategy(FedAvg):
    """FedAvg with num/loss/WER weighting, optional server-side training and per-round records.

    Rounds are numbered globally: ``start_round`` completed rounds are added to Flower's counter,
    so a resumed run keeps counting (and keeps epoch-dependent client settings right).
    """

    def __init__(
        self,
        *,
        weight_strategy: str = "num",
        server_train_fn: ServerTrainFn | None = None,
        on_round_end: RoundEndFn | None = None,
        tokenizer_sha256: str | None = None,
        start_round: int = 0,
        history: list[dict[str, Any]] | None = None,
        row_defaults: dict[str, Any] | None = None,
        **fedavg_kwargs: Any,
    ):
        if weight_strategy not in WEIGHT_STRATEGIES:
            raise ValueError(f"unknown weight strategy '{weight_strategy}' (use num, loss or wer)")
        fedavg_kwargs.setdefault("fit_metrics_aggregation_fn", weighted_metrics)
        fedavg_kwargs.setdefault("evaluate_metrics_aggregation_fn", weighted_metrics)
        super().__init__(**fedavg_kwargs)
        self.weight_strategy = weight_strategy
        self.server_train_fn = server_train_fn
        self.on_round_end = on_round_end
        self.tokenizer_sha256 = tokenizer_sha256
        self.start_round = start_round
        self.history: list[dict[str, Any]] = list(history or [])
        self.row_defaults = dict(row_defaults or {})
        self.global_weights: NDArrays | None = None
        if self.initial_parameters is not None:
            self.global_weights = parameters_to_ndarrays(self.initial_parameters)
        self._round_started: dict[int, float] = {}
        self._asked: set[str] = set()  # Flower node ids sent fit instructions this round
        self._names: dict[str, str] = {}  # Flower node id -> the client's own --cid

    def __repr__(self) -> str:
        return f"TrainAfterAggregateStrategy(weight_strategy={self.weight_strategy})"

    def _row(self, rnd: int) -> dict[str, Any]:
        for row in self.history:
            if row["round"] == rnd:
                return row
        row = {"round": rnd, **self.row_defaults}
        self.history.append(row)
        return row

    def _finish(self, rnd: int, model_changed: bool) -> None:
        row = self._row(rnd)
        row["seconds"] = round(time.monotonic() - self._round_started.get(rnd, time.monotonic()), 3)
        if self.on_round_end is not None:
            self.on_round_end(rnd, self.global_weights if model_changed else None, self.history)

    # ---- fit -----------------------------------------------------------------------------------
    def configure_fit(self, server_round, parameters, client_manager):
        rnd = server_round + self.start_round
        self._round_started[rnd] = time.monotonic()
        if self.global_weights is None:
            self.global_weights = parameters_to_ndarrays(parameters)
        # Size the sample from everyone connected once enough are: FedAvg alone counts the
        # clients present before it waits, so round 1 would train only --min_fit_clients.
        client_manager.wait_for(self.min_available_clients)
        instructions = super().configure_fit(rnd, parameters, client_manager)
        self._asked = {proxy.cid for proxy, _ in instructions}
        self._learn_names(proxy for proxy, _ in instructions)
        return instructions

    def _learn_names(self, proxies) -> None:
        """Ask new clients for their ``--cid``, so that failures can be reported by name."""
        for proxy in proxies:
            if proxy.cid in self._names:
                continue
            try:
                res = proxy.get_properties(GetPropertiesIns(config={}), timeout=30, group_id=None)
            except Exception:  # an old or foreign client: its node id will do
                continue
            if "cid" in res.properties:
                self._names[proxy.cid] = str(res.properties["cid"])

    def _weighting_value(self, res: FitRes) -> Any:
        """What the weighting reads from a result: its sample count, training loss or WER."""
        if self.weight_strategy == "num":
            return res.num_examples
        return res.metrics.get(METRIC_FOR_STRATEGY[self.weight_strategy])

    def _screen(self, proxy: ClientProxy, res: FitRes) -> tuple[str, NDArrays | None, str | None]:
        """Decode one result; return (client name, arrays, reason to reject or None)."""
        name = client_name(proxy, res.metrics)
        if self.tokenizer_sha256 is not None:
            theirs = res.metrics.get("tokenizer_sha256")
            if theirs != self.tokenizer_sha256:
                return name, None, (
                    f"tokenizer mismatch (client {str(theirs)[:12]}, server "
                    f"{self.tokenizer_sha256[:12]}): give every process the same --tokenizer_path"
                )
        if res.num_examples < 0 or (self.weight_strategy == "num" and res.num_examples == 0):
            return name, None, f"num_examples must be positive, got {res.num_examples}"
        value = self._weighting_value(res)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            return name, None, f"{METRIC_FOR_STRATEGY[self.weight_strategy]} missing or not finite"
        try:
            arrays = parameters_to_ndarrays(res.parameters)
        except Exception as err:  # malformed bytes from a client
            return name, None, f"undecodable parameters ({type(err).__name__})"
        problem = update_problem(arrays, self.global_weights)
        return name, arrays, problem

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        rnd = server_round + self.start_round
        row = self._row(rnd)
        for proxy, res in results:
            self._names[proxy.cid] = client_name(proxy, res.metrics)
        answered = {proxy.cid for proxy, _ in results}
        failed = sorted(self._names.get(node, node) for node in self._asked - answered)
        row["failures"] = len(failures)
        row["failed_clients"] = failed
        for failure in failures:
            logger.warning("round %d: a client failed: %s", rnd, _describe_failure(failure))
        if failed:
            logger.warning("round %d: no update from client(s) %s", rnd, ", ".join(failed))
        if failures and not self.accept_failures:
            logger.warning("round %d: failures not accepted (--no-accept_failures), "
                           "global model kept", rnd)
            row["accepted"] = False
            return None, {}
        if len(results) < self.min_fit_clients:
            logger.warning("round %d: only %d of --min_fit_clients %d answered, global model "
                           "kept", rnd, len(results), self.min_fit_clients)
            row["accepted"] = False
            return None, {}

        kept: list[tuple[str, NDArrays, FitRes]] = []
        rejected: dict[str, str] = {}
        seen: set[str] = set()
        for proxy, res in results:
            name, arrays, problem = self._screen(proxy, res)
            if name in seen:  # two clients claiming one id: keep both apart in the history
                name = f"{name}@{proxy.cid}"
            seen.add(name)
            if problem is not None or arrays is None:
                rejected[name] = problem or "no parameters"
                logger.warning("round %d: rejected client %s: %s", rnd, name, problem)
            else:
                kept.append((name, arrays, res))
        row["rejected"] = rejected
        row["clients"] = [name for name, _, _ in kept]
        if not kept:
            logger.warning("round %d: no usable update, global model kept unchanged", rnd)
            row["accepted"] = False
            return None, {}

        values = [float(self._weighting_value(res)) for _, _, res in kept]
        coefficients = aggregation_coefficients(values, self.weight_strategy)
        row["coefficients"] = {
            name: float(c) for (name, _, _), c in zip(kept, coefficients, strict=True)
        }
        aggregated = weighted_average([arrays for _, arrays, _ in kept], coefficients)
        metrics = self.fit_metrics_aggregation_fn(
            [(res.num_examples, res.metrics) for _, _, res in kept]
        )
        row["train_loss"] = metrics.get("train_loss")
        row["valid_wer"] = metrics.get("valid_wer")
        row["accepted"] = True

        if self.server_train_fn is not None:
            started = time.monotonic()
            trained = self.server_train_fn(aggregated, rnd)
            row["server_train_seconds"] = round(time.monotonic() - started, 3)
            problem = update_problem(trained, aggregated)
            if problem is None:
                row["server_train_delta"] = l2_distance(trained, aggregated)
                aggregated = trained
            else:
                logger.warning("round %d: server-side training result dropped: %s", rnd, problem)
        self.global_weights = aggregated
        return ndarrays_to_parameters(aggregated), metrics

    # ---- evaluation ----------------------------------------------------------------------------
    def evaluate(self, server_round, parameters):
        rnd = server_round + self.start_round if server_round > 0 else 0
        if server_round == 0 and self.start_round > 0:
            return None  # resuming: the model was evaluated when its round ended
        result = super().evaluate(rnd, parameters)
        if server_round == 0:
            if result is not None:
                logger.info("initial model: test loss %.4f, %s", result[0], result[1])
            return result
        row = self._row(rnd)
        if result is not None:
            loss, metrics = result
            row["test_loss"] = float(loss)
            row.update({f"test_{k}": v for k, v in metrics.items()})
        self._finish(rnd, model_changed=True)
        return result

    def configure_evaluate(self, server_round, parameters, client_manager):
        return super().configure_evaluate(server_round + self.start_round, parameters,
                                          client_manager)

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        rnd = server_round + self.start_round
        for proxy, res in results:
            self._names[proxy.cid] = client_name(proxy, res.metrics)
        loss, metrics = super().aggregate_evaluate(rnd, results, failures)
        if loss is not None:
            row = self._row(rnd)
            row["client_eval_loss"] = float(loss)
            row["client_eval_wer"] = metrics.get("wer")
            row["client_eval_clients"] = len(results)
            self._finish(rnd, model_changed=False)
        return loss, metrics


def _describe_failure(failure: tuple[ClientProxy, FitRes] | BaseException) -> str:
    if isinstance(failure, BaseException):
        text = str(failure) or ("connection closed (the client exited, or a message exceeded "
                                "--grpc_max_message_length)")
        return f"{type(failure).__name__}: {text}"
    proxy, res = failure
    return f"client {client_name(proxy, res.metrics)} returned status {res.status.code.name}"
