"""Secure aggregation on Flower's engines: the App's rounds through Flower's SecAgg+ workflow.

Flower 1.42 runs SecAgg+ only as a legacy workflow (``SecAggPlusWorkflow`` inside a
``DefaultWorkflow``, over a legacy ``Strategy`` and the ``fitins``/``fitres`` message layout), so
with ``secure-aggregation = true`` the ServerApp drives the round core through
:class:`SecureStrategy` (the gRPC transport's strategy, reading the sum) and the ClientApp
answers those messages through :func:`secure_client_app` (Flower's ``secaggplus_mod`` over
:class:`SecureClient`). Each client masks its change from the global model; the server unmasks
only the example-weighted mean change of the clients that answered, adds it to the global model
and carries on as usual (server-side training, evaluation, records). What the server cannot see,
it cannot check: :func:`fedspeech.core.secure.check_secure` refuses the per-client defences.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from flwr.app import Context, RecordDict
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.server import LegacyContext, ServerConfig
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid

from fedspeech.core import protocol
from fedspeech.core.settings import ServerSettings
from fedspeech.math.secure import apply_change, beyond_range, encode_change
from fedspeech.transports.app_strategy import sampling
from strategy import TrainAfterAggregateStrategy

logger = logging.getLogger(__name__)

CLIPPING_RANGE = "secagg-clipping-range"  # in the fit config: the client warns when it bites
# content keys of the legacy message layout and of SecAgg+'s own stages
LEGACY_PREFIXES = ("fitins.", "evaluateins.", "getpropertiesins.", "getparametersins.")


class SecureStrategy(TrainAfterAggregateStrategy):
    """The round core behind SecAgg+: every result carries the unmasked mean change."""

    def __init__(self, core, *, clipping_range: float, **kwargs: Any):
        super().__init__(core, **kwargs)
        self.clipping_range = clipping_range

    def configure_fit(self, server_round, parameters, client_manager):
        instructions = super().configure_fit(server_round, parameters, client_manager)
        for _, fit_ins in instructions:
            fit_ins.config[CLIPPING_RANGE] = self.clipping_range
        return instructions

    def _learn_names(self, proxies) -> None:
        """Nothing to ask: a SecAgg+ client names itself in its fit metrics."""

    def aggregate_fit(self, server_round, results, failures):
        # SecAgg+ put the same unmasked sum (the weighted mean change) into every result; the
        # core sees one model per client, all equal, so its num weighting keeps it as it is
        if results:
            mean_change = parameters_to_ndarrays(results[0][1].parameters)
            model = ndarrays_to_parameters(apply_change(self.core.weights, mean_change))
            for _, res in results:
                res.parameters = model
        return super().aggregate_fit(server_round, results, failures)


def run_secure(grid: Grid, context: Context, federation, s: ServerSettings) -> None:
    """The federation's remaining rounds through Flower's ``SecAggPlusWorkflow``."""
    core = federation.core
    epochs, sha = federation.local_epochs, core.tokenizer_sha256
    fraction_fit, fraction_evaluate, per_round = sampling(s)
    strategy = SecureStrategy(
        core, clipping_range=s.secagg_clipping_range, min_start_clients=s.start_clients,
        fraction_fit=fraction_fit, fraction_evaluate=fraction_evaluate,
        min_fit_clients=per_round, min_evaluate_clients=per_round if fraction_evaluate else 0,
        min_available_clients=max(s.min_available_clients, per_round),
        on_fit_config_fn=lambda rnd: protocol.train_config(rnd, epochs, sha),
        on_evaluate_config_fn=lambda rnd: protocol.evaluate_config(rnd, sha),
    )
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
        num_shares=_count_or_fraction(s.secagg_num_shares),
        reconstruction_threshold=_count_or_fraction(s.secagg_reconstruction_threshold),
        clipping_range=s.secagg_clipping_range,
        max_weight=s.secagg_max_weight,
        timeout=s.round_timeout,
    ))
    legacy = LegacyContext(context=context, strategy=strategy, config=ServerConfig(
        num_rounds=s.rounds - core.start_round, round_timeout=s.round_timeout))
    logger.info("secure aggregation (SecAgg+): %d clients a round, shares %s, threshold %s, "
                "clipping range %g", per_round, s.secagg_num_shares,
                s.secagg_reconstruction_threshold, s.secagg_clipping_range)
    workflow(grid, legacy)


def _count_or_fraction(value: float) -> int | float:
    """Flower reads an int as a count and a float as a fraction."""
    return int(value) if value > 1 else float(value)


class SecureClient(NumPyClient):
    """A SecAgg+ client over a :class:`~fedspeech.roles.local_training.LocalTrainer`: it hands
    its change from the global model (see :mod:`fedspeech.math.secure`) to the masking mod."""

    def __init__(self, trainer):
        self.trainer = trainer

    def fit(self, parameters, config):
        self.trainer.check_tokenizer(str(config.get(protocol.TOKENIZER_SHA256, "")))
        weights, samples, metrics = self.trainer.fit(
            parameters, rnd=int(config[protocol.ROUND]), epochs=int(config[protocol.EPOCHS]))
        change = encode_change(weights, parameters)
        if not all(np.all(np.isfinite(c)) for c in change):  # the server could not tell it
            raise ValueError(f"client {self.trainer.cid}: its change has NaN or Inf; it drops "
                             "out of this round rather than corrupt the secure sum")
        clipped = beyond_range(change, float(config[CLIPPING_RANGE]))
        if clipped:
            logger.warning("client %s: %d coordinates of the change exceed secagg-clipping-range "
                           "%s and will be clipped", self.trainer.cid, clipped,
                           config[CLIPPING_RANGE])
        return change, samples, {**metrics, **self._identity()}

    def evaluate(self, parameters, config):
        self.trainer.check_tokenizer(str(config.get(protocol.TOKENIZER_SHA256, "")))
        loss, samples, metrics = self.trainer.evaluate(parameters)
        return loss, samples, {**metrics, **self._identity()}

    def _identity(self) -> dict[str, str]:
        return protocol.identity(self.trainer.cid, self.trainer.tokenizer_sha256)


def is_secure_message(content: RecordDict) -> bool:
    """A message's content from the SecAgg+ workflow (legacy layout, or a SecAgg+ stage)."""
    keys = list(content.keys())
    return RECORD_KEY_CONFIGS in keys or any(k.startswith(LEGACY_PREFIXES) for k in keys)


def secure_client_app(trainer_for) -> ClientApp:
    """The legacy ClientApp that answers the SecAgg+ workflow: Flower's ``secaggplus_mod`` over a
    :class:`SecureClient` built by ``trainer_for(context)``."""
    return ClientApp(client_fn=lambda context: SecureClient(trainer_for(context)).to_client(),
                     mods=[secaggplus_mod])
