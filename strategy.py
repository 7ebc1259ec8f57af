"""TrainAfterAggregateStrategy: the legacy gRPC transport's adapter over the round core.

It turns Flower's ``FitRes`` / ``EvaluateRes`` into :class:`~fedspeech.core.round.Update` /
:class:`~fedspeech.core.round.Evaluation` and back (keys: :mod:`fedspeech.core.protocol`),
samples clients, and learns the clients' own names; what a
round *does* (screening, weighting, averaging, server training, evaluation, records) is the core's.
This module imports neither SpeechBrain nor argparse.
"""

from __future__ import annotations

import logging
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

from fedspeech.core import protocol
from fedspeech.core.round import Evaluation, RoundCore, Update
from fedspeech.math.aggregate import weighted_metrics

logger = logging.getLogger(__name__)


def client_name(proxy: ClientProxy, metrics: dict[str, Scalar]) -> str:
    """The client's own id (``--cid``) when it reported one, else Flower's node id."""
    return str(metrics.get(protocol.CLIENT_ID, proxy.cid))


class TrainAfterAggregateStrategy(FedAvg):
    """FedAvg whose rounds are :class:`RoundCore`'s: weighting, server training, records.

    ``min_start_clients`` clients must be connected before round 1 is sampled (FedAvg alone sizes
    its sample from the clients present before it waits); later rounds need
    ``min_available_clients``.
    """

    def __init__(self, core: RoundCore, *, min_start_clients: int | None = None,
                 **fedavg_kwargs: Any):
        fedavg_kwargs.setdefault("fit_metrics_aggregation_fn", weighted_metrics)
        fedavg_kwargs.setdefault("evaluate_metrics_aggregation_fn", weighted_metrics)
        fedavg_kwargs.setdefault("initial_parameters", ndarrays_to_parameters(core.weights))
        fedavg_kwargs.setdefault("accept_failures", core.accept_failures)
        super().__init__(**fedavg_kwargs)
        self.core = core
        self.min_start_clients = max(min_start_clients or 0, self.min_available_clients)
        self._asked: set[str] = set()  # Flower node ids sent fit instructions this round
        self._names: dict[str, str] = {}  # Flower node id -> the client's own --cid

    def __repr__(self) -> str:
        return f"TrainAfterAggregateStrategy(weight_strategy={self.core.weight_strategy})"

    # ---- fit -----------------------------------------------------------------------------------
    def configure_fit(self, server_round, parameters, client_manager):
        rnd = self.core.round_number(server_round)
        if server_round == 1:
            client_manager.wait_for(self.min_start_clients)
        client_manager.wait_for(self.min_available_clients)
        # the round's clock starts once its clients are there, not while they start up
        instructions = super().configure_fit(rnd, parameters, client_manager)
        if not self.core.allows(rnd, len(instructions)):  # the privacy budget is spent
            return []
        self.core.begin(rnd, sent_bytes=sum(len(t) for t in parameters.tensors))
        self._asked = {proxy.cid for proxy, _ in instructions}
        self._learn_names(proxy for proxy, _ in instructions)
        logger.info("round %d: training %d of %d connected clients", rnd, len(instructions),
                    client_manager.num_available())
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
            if protocol.CLIENT_ID in res.properties:
                self._names[proxy.cid] = str(res.properties[protocol.CLIENT_ID])

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        rnd = self.core.round_number(server_round)
        for proxy, res in results:
            self._names[proxy.cid] = client_name(proxy, res.metrics)
        answered = {proxy.cid for proxy, _ in results}
        for failure in failures:
            logger.warning("round %d: a client failed: %s", rnd, _describe_failure(failure))
        updates = [
            Update(
                client=client_name(proxy, res.metrics),
                node=proxy.cid,
                num_examples=res.num_examples,
                metrics=res.metrics,
                decode=lambda res=res: parameters_to_ndarrays(res.parameters),
                tokenizer_sha256=_str_or_none(res.metrics.get(protocol.TOKENIZER_SHA256)),
                payload_bytes=sum(len(t) for t in res.parameters.tensors),
            )
            for proxy, res in results
        ]
        failed = [self._names.get(node, node) for node in self._asked - answered]
        aggregated = self.core.aggregate(rnd, updates, failed=failed, failures=len(failures),
                                         sampled=len(self._asked))
        if aggregated is None:
            return None, {}
        # the kept updates' metrics: a refused client's loss or sample count must not count
        return ndarrays_to_parameters(aggregated), dict(self.core.fit_metrics)

    # ---- evaluation ----------------------------------------------------------------------------
    def evaluate(self, server_round, parameters):
        return self.core.evaluate(self.core.round_number(server_round))

    def configure_evaluate(self, server_round, parameters, client_manager):
        rnd = self.core.round_number(server_round)
        if self.core.stopped:
            return []
        instructions = super().configure_evaluate(rnd, parameters, client_manager)
        if not instructions:  # Flower skips the phase: the round is complete without it
            self.core.record_client_evaluation(rnd, [])
        return instructions

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        rnd = self.core.round_number(server_round)
        evaluations = []
        for proxy, res in results:
            self._names[proxy.cid] = client_name(proxy, res.metrics)
            evaluations.append(Evaluation(client_name(proxy, res.metrics), res.num_examples,
                                          float(res.loss), res.metrics))
        metrics = self.core.record_client_evaluation(rnd, evaluations, failures=len(failures))
        if not metrics:
            return None, {}
        return metrics.pop("loss"), metrics


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _describe_failure(failure: tuple[ClientProxy, FitRes] | BaseException) -> str:
    if isinstance(failure, BaseException):
        text = str(failure) or ("connection closed (the client exited, or a message exceeded "
                                "--grpc_max_message_length)")
        return f"{type(failure).__name__}: {text}"
    proxy, res = failure
    return f"client {client_name(proxy, res.metrics)} returned status {res.status.code.name}"
