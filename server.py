"""Federated server (legacy gRPC): aggregates the clients' weights, trains on its held-out set,
evaluates, saves.

The server builds its own SpeechBrain model once (:func:`server_side.build_federation`) and runs
Flower's gRPC server with :class:`strategy.TrainAfterAggregateStrategy`, whose rounds are
:class:`round_core.RoundCore`'s. ``--resume`` continues a run from its last completed round.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, NoReturn

from fedspeech.base.checks import (
    check_at_least,
    check_data_flags,
    check_file,
    check_fraction,
    check_grpc_max_message_length,
    check_port_free,
    parse_extra_tests,
    read_bytes,
)
from fedspeech.base.cli import ArgumentParser, main_and_exit
from fedspeech.base.errors import UsageError
from fedspeech.math.aggregate import WEIGHT_STRATEGIES
from fedspeech.roles.server_model import Federation, build_federation
from fedspeech.speech.config import parse_overrides
from fedspeech.speech.model import set_threads
from fedspeech.tools.flags import add_data_flags, add_grpc_flags, add_model_flags

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
    p.add_argument("--weight_strategy", type=str, default="num", choices=WEIGHT_STRATEGIES,
                   help="client weighting: num (FedAvg), loss or wer")
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
    add_grpc_flags(p)
    add_model_flags(p)
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse impossible settings before anything slow happens."""
    check_at_least(args.rounds, 1, "--rounds")
    if args.local_epochs is not None:
        check_at_least(args.local_epochs, 1, "--local_epochs")
    check_at_least(args.min_fit_clients, 1, "--min_fit_clients")
    if args.min_fit_clients > args.min_available_clients:
        raise UsageError(
            f"--min_fit_clients ({args.min_fit_clients}) exceeds --min_available_clients "
            f"({args.min_available_clients})"
        )
    if args.min_start_clients is not None:
        check_at_least(args.min_start_clients, args.min_available_clients, "--min_start_clients")
    check_fraction(args.fraction_fit, "--fraction_fit")
    check_fraction(args.fraction_evaluate, "--fraction_evaluate")
    if args.round_timeout is not None and args.round_timeout <= 0:
        raise UsageError(f"--round_timeout must be positive, got {args.round_timeout}")
    check_grpc_max_message_length(args.grpc_max_message_length)
    check_data_flags(args.data_path, args.tokenizer_path, args.save_path)
    for flag in ("test_path", "tr_add_path", "pre_train_model_path"):
        check_file(getattr(args, flag), f"--{flag}")
    for path in args.certificates or []:
        check_file(path, "--certificates")
    parse_extra_tests(args.extra_test)
    check_port_free(args.server_address)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    check_args(args)
    set_threads(args.num_threads)
    certificates = None
    if args.certificates:
        certificates = tuple(read_bytes(p, "--certificates") for p in args.certificates)
    federation = build_federation(
        config_file=Path(args.config_path) / args.config_file,
        overrides=parse_overrides(args.override, args.seed),
        device=args.device,
        data_path=args.data_path,
        test_path=args.test_path,
        save_path=args.save_path,
        extra_tests=parse_extra_tests(args.extra_test),
        tr_add_path=args.tr_add_path,
        tokenizer_path=args.tokenizer_path or args.tr_path,
        pre_train_model_path=args.pre_train_model_path,
        resume=args.resume,
        weight_strategy=args.weight_strategy,
        local_epochs=args.local_epochs,
        server_lr=args.server_lr,
        min_updates=args.min_fit_clients,
        accept_failures=args.accept_failures,
    )
    serve(
        federation,
        rounds=args.rounds,
        server_address=args.server_address,
        certificates=certificates,
        grpc_max_message_length=args.grpc_max_message_length,
        round_timeout=args.round_timeout,
        fraction_fit=args.fraction_fit,
        fraction_evaluate=args.fraction_evaluate,
        min_fit_clients=args.min_fit_clients,
        min_available_clients=args.min_available_clients,
        min_start_clients=args.min_start_clients,
    )
    return federation.finish()


def serve(
    federation: Federation,
    *,
    rounds: int,
    server_address: str,
    certificates: tuple[bytes, bytes, bytes] | None,
    grpc_max_message_length: int,
    round_timeout: float | None,
    fraction_fit: float,
    fraction_evaluate: float,
    min_fit_clients: int,
    min_available_clients: int,
    min_start_clients: int | None,
) -> None:
    """Run the rounds that are left over Flower's legacy gRPC server."""
    from flwr.server import ServerConfig, start_server  # flwr.compat's legacy server

    from strategy import TrainAfterAggregateStrategy

    core = federation.core
    done = core.start_round
    if done >= rounds:
        logger.info("all %d rounds already done in %s", rounds, federation.store.path)
        return
    sha, epochs = federation.tokenizer_sha256, federation.local_epochs
    strategy = TrainAfterAggregateStrategy(
        core,
        min_start_clients=min_start_clients,
        fraction_fit=fraction_fit,
        fraction_evaluate=fraction_evaluate,
        min_fit_clients=min_fit_clients,
        min_evaluate_clients=min_fit_clients if fraction_evaluate > 0 else 0,
        min_available_clients=min_available_clients,
        on_fit_config_fn=lambda rnd: {"epoch_global": rnd, "epochs": epochs,
                                      "tokenizer_sha256": sha},
        on_evaluate_config_fn=lambda rnd: {"epoch_global": rnd, "tokenizer_sha256": sha},
    )
    logger.info("server ready: %s weighting, rounds %d-%d, TLS %s", core.weight_strategy,
                done + 1, rounds, "on" if certificates else "off")
    start_server(
        server_address=server_address,
        config=ServerConfig(num_rounds=rounds - done, round_timeout=round_timeout),
        strategy=strategy,
        grpc_max_message_length=grpc_max_message_length,
        certificates=certificates,
    )


def main(argv: list[str] | None = None) -> NoReturn:
    main_and_exit(build_parser(), run, argv)


if __name__ == "__main__":
    main()
