"""Federated server (legacy gRPC): aggregates the clients' weights, trains on its held-out set,
evaluates, saves.

The flags become one :class:`~fedspeech.core.settings.ServerSettings` (checked before anything
slow). The server builds its own SpeechBrain model once
(:func:`fedspeech.roles.server_model.build_federation`) and runs Flower's legacy gRPC server with
:class:`strategy.TrainAfterAggregateStrategy`, whose rounds are
:class:`~fedspeech.core.round.RoundCore`'s. ``--resume`` continues a run from its last completed
round. Any client that reaches ``--server_address`` can join (TLS proves the server, not the
client): across machines keep it on 127.0.0.1 behind ``scripts/proxy.py grpc-server`` (client
certificates); see docs/security.md.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import NoReturn

from fedspeech.base.checks import read_bytes
from fedspeech.base.cli import ArgumentParser, log_to_file, main_and_exit
from fedspeech.core import protocol
from fedspeech.core.defences import SERVER_WEIGHTINGS
from fedspeech.core.row import RoundRow
from fedspeech.core.settings import ServerSettings, check_server
from fedspeech.math.aggregate import WEIGHT_STRATEGIES
from fedspeech.roles.server_model import Federation, build_federation
from fedspeech.speech.model import set_threads
from fedspeech.tools.flags import (
    add_data_flags,
    add_grpc_flags,
    add_model_flags,
    add_privacy_flags,
    add_trust_flags,
)

logger = logging.getLogger("server")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Federated SpeechBrain ASR server (Flower, gRPC)")
    add_data_flags(p, tokenizer_default="trained from --tr_path")
    p.add_argument("--tr_path", type=str, default=None,
                   help="training TSV; used to train the tokenizer when --tokenizer_path is absent")
    p.add_argument("--test_path", type=str, required=True,
                   help="test TSV for server-side evaluation every round")
    p.add_argument("--extra_test", type=str, action="append", default=[], metavar="NAME=TSV",
                   help="another test set whose WER is recorded as test_NAME_wer (repeatable)")
    p.add_argument("--tr_add_path", type=str, default=None,
                   help="held-out TSV: train one epoch on it after each aggregation")
    p.add_argument("--server_lr", type=float, default=None,
                   help="learning rate of server-side training (default: the config's server_lr, "
                        "else 0.01)")
    p.add_argument("--pre_train_model_path", type=str, default=None,
                   help="start the global model from this checkpoint")
    p.add_argument("--min_fit_clients", type=int, default=2,
                   help="clients trained per round at least; fewer answers and the round is "
                        "not used")
    p.add_argument("--min_available_clients", type=int, default=2,
                   help="clients that must be connected before a round starts")
    p.add_argument("--min_start_clients", type=int, default=None,
                   help="clients that must be connected before round 1 (default: "
                        "--min_available_clients)")
    p.add_argument("--fraction_fit", type=float, default=1.0,
                   help="share of the connected clients trained each round (cross-device "
                        "sampling; at least --min_fit_clients)")
    p.add_argument("--rounds", type=int, default=5, help="federated rounds (in all, with --resume)")
    p.add_argument("--local_epochs", type=int, default=None,
                   help="epochs each client trains a round (default: the config's "
                        "number_of_epochs)")
    p.add_argument("--weight_strategy", type=str, default="num",
                   choices=WEIGHT_STRATEGIES + SERVER_WEIGHTINGS,
                   help="client weighting: num (FedAvg), loss or wer (the clients' claims), or "
                        "server_wer / server_loss (measured by the server on --score_path)")
    p.add_argument("--fraction_evaluate", type=float, default=1.0,
                   help="share of clients evaluating on their dev sets each round (0: none)")
    p.add_argument("--accept_failures", action=argparse.BooleanOptionalAction, default=True,
                   help="aggregate a round in which some clients failed (if at least "
                        "--min_fit_clients answered)")
    p.add_argument("--round_timeout", type=float, default=None,
                   help="seconds to wait for clients in a round; later answers count as failures")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --save_path from its last completed round")
    p.add_argument("--server_address", type=str, default="127.0.0.1:8080",
                   help="host:port to listen on (0.0.0.0:PORT to accept other machines)")
    p.add_argument("--certificates", nargs=3, metavar=("CA", "CERT", "KEY"), default=None,
                   help="enable TLS: CA certificate, server certificate and private key files")
    add_trust_flags(p)
    add_privacy_flags(p)
    add_grpc_flags(p)
    add_model_flags(p)
    return p


def settings_from(args: argparse.Namespace) -> ServerSettings:
    """The flags as the server's one settings value."""
    return ServerSettings.from_flags(args)


def run(args: argparse.Namespace) -> list[RoundRow]:
    settings = settings_from(args)
    check_server(settings, listen=True)
    set_threads(settings.num_threads)
    log_to_file(Path(settings.save_path) / "server" / "run.log", verbose=args.verbose)
    certificates = None
    if settings.certificates:
        certificates = tuple(read_bytes(p, "--certificates") for p in settings.certificates)
    federation = build_federation(settings)
    serve(federation, settings, certificates)
    return federation.finish()


def serve(federation: Federation, settings: ServerSettings,
          certificates: tuple[bytes, ...] | None) -> None:
    """Run the rounds that are left over Flower's legacy gRPC server."""
    from flwr.server import ServerConfig, start_server  # flwr.compat's legacy server

    from strategy import TrainAfterAggregateStrategy

    s = settings
    core = federation.core
    done = core.start_round
    if done >= s.rounds:
        logger.info("all %d rounds already done in %s", s.rounds, federation.store.path)
        return
    sha, epochs = federation.tokenizer_sha256, federation.local_epochs
    strategy = TrainAfterAggregateStrategy(
        core,
        min_start_clients=s.start_clients,
        fraction_fit=s.fraction_fit,
        fraction_evaluate=s.fraction_evaluate,
        min_fit_clients=s.min_fit_clients,
        min_evaluate_clients=s.min_fit_clients if s.fraction_evaluate > 0 else 0,
        min_available_clients=s.min_available_clients,
        on_fit_config_fn=lambda rnd: protocol.train_config(rnd, epochs, sha),
        on_evaluate_config_fn=lambda rnd: protocol.evaluate_config(rnd, sha),
    )
    logger.info("server ready: %s weighting, rounds %d-%d, TLS %s", core.weight_strategy,
                done + 1, s.rounds, "on" if certificates else "off")
    start_server(
        server_address=s.server_address,
        config=ServerConfig(num_rounds=s.rounds - done, round_timeout=s.round_timeout),
        strategy=strategy,
        grpc_max_message_length=s.grpc_max_message_length,
        certificates=certificates,
    )


def main(argv: list[str] | None = None) -> NoReturn:
    main_and_exit(build_parser(), run, argv)


if __name__ == "__main__":
    main()
