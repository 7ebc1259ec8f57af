"""CoreFedAvg: the Flower App's Message-API strategy, a thin adapter over the round core.

Flower's ``FedAvg`` keeps the sampling (a fraction and a minimum of the connected nodes) and the
message plumbing; each reply becomes a :class:`~fedspeech.core.round.Update` or
:class:`~fedspeech.core.round.Evaluation` (keys: :mod:`fedspeech.core.protocol`), and the core does
the round: screening, weighting, averaging one update at a time, server-side training,
evaluation, records.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedspeech.base.checks import is_finite
from fedspeech.core import protocol
from fedspeech.core.round import Evaluation, RoundCore, Update
from fedspeech.core.settings import ServerSettings
from fedspeech.transports.app_arrays import from_record, record_bytes, to_record

logger = logging.getLogger(__name__)


class CoreFedAvg(FedAvg):
    """FedAvg whose aggregation, server training and records are :class:`RoundCore`'s."""

    def __init__(self, core: RoundCore, *, local_epochs: int, **fedavg_kwargs: Any):
        super().__init__(**fedavg_kwargs)
        self.core = core
        self.local_epochs = local_epochs
        self._asked: set[int] = set()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        rnd = self.core.round_number(server_round)  # global: a resumed run keeps counting
        # FedAvg writes protocol.ROUND (Flower's server-round) from the round it is given
        config.update(protocol.train_config(rnd, self.local_epochs, self.core.tokenizer_sha256))
        messages = list(super().configure_train(rnd, arrays, config, grid))  # waits for nodes
        if not self.core.allows(rnd, len(messages)):  # the privacy budget is spent
            return []
        # the round's clock starts once its nodes are there, not while they start up
        self.core.begin(rnd, sent_bytes=record_bytes(arrays))
        self._asked = {m.metadata.dst_node_id for m in messages}
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rnd = self.core.round_number(server_round)
        updates, failures, answered = [], 0, set()
        for reply in replies:
            node = reply.metadata.src_node_id
            answered.add(node)
            if reply.has_error():
                failures += 1
                logger.warning("round %d: node %s failed: %s", rnd, node, reply.error.reason)
                continue
            metrics = dict(reply.content[protocol.METRICS])
            info = reply.content.get(protocol.INFO, ConfigRecord())
            updates.append(Update(
                client=str(info.get(protocol.CLIENT_ID, node)),
                node=str(node),
                num_examples=int(metrics.pop(protocol.NUM_EXAMPLES, 0)),
                metrics=metrics,
                decode=lambda reply=reply: from_record(reply.content[protocol.ARRAYS]),
                tokenizer_sha256=info.get(protocol.TOKENIZER_SHA256),
                payload_bytes=record_bytes(reply.content[protocol.ARRAYS]),
            ))
        failed = [str(node) for node in self._asked - answered]
        failures += len(failed)
        aggregated = self.core.aggregate(rnd, updates, failed=failed, failures=failures,
                                         sampled=len(self._asked))
        if aggregated is None:
            return None, None
        # the kept updates' metrics: a refused client's loss or sample count must not count
        summary = {k: v for k, v in self.core.fit_metrics.items() if is_finite(v)}
        return to_record(aggregated), MetricRecord(summary)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        rnd = self.core.round_number(server_round)
        if self.core.stopped:
            return []
        config.update(protocol.evaluate_config(rnd, self.core.tokenizer_sha256))
        messages = list(super().configure_evaluate(rnd, arrays, config, grid))
        if not messages:  # no federated evaluation this round: it is complete without one
            self.core.record_client_evaluation(rnd, [])
        return messages

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        rnd = self.core.round_number(server_round)
        evaluations, failures = [], 0
        for reply in replies:
            if reply.has_error():
                failures += 1
                logger.warning("round %d: evaluation on node %s failed: %s", rnd,
                               reply.metadata.src_node_id, reply.error.reason)
                continue
            metrics = dict(reply.content[protocol.METRICS])
            info = reply.content.get(protocol.INFO, ConfigRecord())
            evaluations.append(Evaluation(
                client=str(info.get(protocol.CLIENT_ID, reply.metadata.src_node_id)),
                num_examples=int(metrics.pop(protocol.NUM_EXAMPLES, 0)),
                loss=float(metrics.pop(protocol.LOSS, float("nan"))),
                metrics=metrics,
            ))
        summary = self.core.record_client_evaluation(rnd, evaluations, failures=failures)
        return MetricRecord({k: v for k, v in summary.items() if is_finite(v)}) or None

    def evaluate_fn(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Server-side evaluation; the core records the round (checkpoint, history, plot)."""
        result = self.core.evaluate(self.core.round_number(server_round))
        if result is None:
            return None
        loss, metrics = result
        return MetricRecord({protocol.LOSS: float(loss), **metrics})


def sampling(s: ServerSettings) -> tuple[float, float, int]:
    """Flower's fractions of connected nodes to train and evaluate, and the nodes a round needs.

    clients-per-round fixes the sample size (cross-device: the nodes sampled each round, out of
    however many are connected); else a fraction of the connected nodes. Flower's FedAvg takes a
    fraction of 0 as "skip this phase", hence the tiny fraction.
    """
    fraction_fit, fraction_evaluate = s.fraction_fit, s.fraction_evaluate
    if s.clients_per_round:
        fraction_fit = 1e-12
        fraction_evaluate = 1e-12 if fraction_evaluate > 0 else 0.0
    return fraction_fit, fraction_evaluate, max(s.clients_per_round, s.min_fit_clients)
