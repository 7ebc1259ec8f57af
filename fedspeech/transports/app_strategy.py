"""CoreFedAvg: the Flower App's Message-API strategy, a thin adapter over :mod:`round_core`.

Flower's ``FedAvg`` keeps the sampling (a fraction and a minimum of the connected nodes) and the
message plumbing; each reply becomes a :class:`round_core.Update` or
:class:`round_core.Evaluation`, and the core does the round: screening, weighting, averaging one
update at a time, server-side training, evaluation, records.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedspeech.core.round import Evaluation, RoundCore, Update
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
        rnd = self.core.round_number(server_round)
        config["round"] = rnd  # global: a resumed run keeps counting epochs
        config["epochs"] = self.local_epochs
        config["tokenizer-sha256"] = self.core.tokenizer_sha256 or ""
        messages = list(super().configure_train(rnd, arrays, config, grid))  # waits for nodes
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
            metrics = dict(reply.content["metrics"])
            info = reply.content.get("info", ConfigRecord())
            updates.append(Update(
                client=str(info.get("cid", node)),
                node=str(node),
                num_examples=int(metrics.pop("num-examples", 0)),
                metrics=metrics,
                decode=lambda reply=reply: from_record(reply.content["arrays"]),
                tokenizer_sha256=info.get("tokenizer-sha256"),
                payload_bytes=record_bytes(reply.content["arrays"]),
            ))
        failed = [str(node) for node in self._asked - answered]
        failures += len(failed)
        aggregated = self.core.aggregate(rnd, updates, failed=failed, failures=failures)
        if aggregated is None:
            return None, None
        row = self.core.row(rnd)
        summary = {k: row[k] for k in ("train_loss", "valid_wer") if _is_number(row.get(k))}
        return to_record(aggregated), MetricRecord(summary)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config["tokenizer-sha256"] = self.core.tokenizer_sha256 or ""
        return super().configure_evaluate(self.core.round_number(server_round), arrays, config,
                                          grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        rnd = self.core.round_number(server_round)
        evaluations = []
        for reply in replies:
            if reply.has_error():
                logger.warning("round %d: evaluation on node %s failed: %s", rnd,
                               reply.metadata.src_node_id, reply.error.reason)
                continue
            metrics = dict(reply.content["metrics"])
            info = reply.content.get("info", ConfigRecord())
            evaluations.append(Evaluation(
                client=str(info.get("cid", reply.metadata.src_node_id)),
                num_examples=int(metrics.pop("num-examples", 0)),
                loss=float(metrics.pop("loss", float("nan"))),
                metrics=metrics,
            ))
        summary = self.core.record_client_evaluation(rnd, evaluations)
        return MetricRecord({k: v for k, v in summary.items() if _is_number(v)}) or None

    def evaluate_fn(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Server-side evaluation, then the round is recorded (checkpoint, history, plot)."""
        result = self.core.evaluate_transport_round(server_round)
        if result is None:
            return None
        loss, metrics = result
        return MetricRecord({"loss": float(loss), **metrics})


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
