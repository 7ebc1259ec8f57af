"""Federated server: aggregates the clients' weights, trains on its held-out set, evaluates, saves.

The server builds its own SpeechBrain model once and wraps it into the strategy's callables:
server-side training on ``--tr_add_path``, evaluation on ``--test_path``, and saving of the global
model and ``history.json`` after every round (``--resume`` continues from them after a crash).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, NoReturn

import flwr as fl
from flwr.common import GRPC_MAX_MESSAGE_LENGTH

from aggregate import WEIGHT_STRATEGIES
from brain import ASR, init_model
from cli import (
    ArgumentParser,
    UsageError,
    add_model_flags,
    check_file,
    check_port_free,
    check_writable_dir,
    main_and_exit,
    model_setup,
    read_bytes,
)
from history import RunStore, library_versions, plot_histories, summary_table
from strategy import TrainAfterAggregateStrategy
from tokenizer import file_sha256
from weights import (
    get_weights,
    load_model_file,
    load_model_state_dict,
    save_checkpoint,
    set_weights,
    weight_keys,
    weights_to_state_dict,
)

logger = logging.getLogger("server")


def make_server_train_fn(brain: ASR, train_data, lr: float, local_epochs: int):
    """Train the aggregated model for one epoch on the server's held-out set."""

    def server_train(weights, rnd: int):
        set_weights(weights, brain.modules, brain.device)
        samples, loss, _ = brain.train_epochs(
            train_data, None, epochs=1, first_epoch=rnd * local_epochs, lr=lr
        )
        logger.info("round %d: server-side training on %d samples, loss %.4f", rnd, samples, loss)
        return get_weights(brain.modules)

    return server_train


def make_evaluate_fn(brain: ASR, test_sets: dict[str, Any]):
    """Evaluate the global model on the test set (and any extra named test sets)."""

    def evaluate(server_round: int, weights, config):
        set_weights(weights, brain.modules, brain.device)
        main = brain.test(test_sets["test"])
        metrics: dict[str, float] = {"wer": main["wer"], "cer": main["cer"]}
        for name, data in test_sets.items():
            if name != "test":
                extra = brain.test(data)
                metrics[f"{name}_wer"] = extra["wer"]
                metrics[f"{name}_cer"] = extra["cer"]
        logger.info("round %d: test loss %.4f, %s", server_round, main["loss"],
                    ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        return main["loss"], metrics

    return evaluate


def make_round_end_fn(store: RunStore):
    """Persist the round (model, then history) and redraw the plot."""

    def on_round_end(rnd: int, weights, history):
        store.save_round(rnd, weights, history)
        try:
            plot_histories({store.path.name: history}, store.path / "history.png")
        except Exception as err:  # a plot must never stop a federation
            logger.warning("could not draw %s: %s", store.path / "history.png", err)

    return on_round_end


def parse_extra_tests(items: list[str]) -> dict[str, str]:
    extra = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.isidentifier() or not path:
            raise UsageError(f"--extra_test '{item}': expected NAME=TSV, e.g. unseen=test_b.tsv")
        extra[name] = path
    return extra


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Federated SpeechBrain ASR server (Flower, gRPC)")
    p.add_argument("--data_path", type=str, required=True,
                   help="Common Voice folder (holds clips/) for the server's own sets")
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
    p.add_argument("--tokenizer_path", type=str, default=None,
                   help="shared tokenizer: a .model file, or transcripts (TSV/CSV) to train "
                        "it from")
    p.add_argument("--pre_train_model_path", type=str, default=None,
                   help="start the global model from this checkpoint")
    p.add_argument("--min_fit_clients", type=int, default=2,
                   help="clients trained per round; fewer answers and the round is not used")
    p.add_argument("--min_available_clients", type=int, default=2,
                   help="clients that must be connected before a round starts")
    p.add_argument("--rounds", type=int, default=5, help="federated rounds (in all, with --resume)")
    p.add_argument("--local_epochs", type=int, default=1, help="epochs each client trains a round")
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
    p.add_argument("--save_path", type=str, default="results",
                   help="output folder: models, history.json, logs")
    p.add_argument("--grpc_max_message_length", type=int, default=GRPC_MAX_MESSAGE_LENGTH,
                   help="largest gRPC message in bytes (the model travels in one; default: "
                        "gRPC's ceiling, 2 GiB)")
    add_model_flags(p)
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse impossible settings before anything slow happens."""
    for flag in ("rounds", "local_epochs", "min_fit_clients"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.min_fit_clients > args.min_available_clients:
        raise UsageError(
            f"--min_fit_clients ({args.min_fit_clients}) exceeds --min_available_clients "
            f"({args.min_available_clients})"
        )
    if not 0.0 <= args.fraction_evaluate <= 1.0:
        raise UsageError(f"--fraction_evaluate must be within [0, 1], got {args.fraction_evaluate}")
    if args.round_timeout is not None and args.round_timeout <= 0:
        raise UsageError(f"--round_timeout must be positive, got {args.round_timeout}")
    if args.grpc_max_message_length < 1024:
        raise UsageError(f"--grpc_max_message_length too small: {args.grpc_max_message_length}")
    if not Path(args.data_path).is_dir():
        raise UsageError(f"--data_path {args.data_path}: no such folder")
    for flag in ("test_path", "tr_add_path", "pre_train_model_path"):
        check_file(getattr(args, flag), f"--{flag}")
    for path in args.certificates or []:
        check_file(path, "--certificates")
    if args.tokenizer_path is not None and not Path(args.tokenizer_path).exists():
        raise UsageError(f"--tokenizer_path {args.tokenizer_path}: no such file or folder")
    check_port_free(args.server_address)
    check_writable_dir(args.save_path, "--save_path")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    check_args(args)
    save_path = Path(args.save_path)
    config_file, model_options = model_setup(args)
    brain, datasets = init_model(
        config_file,
        output_folder=save_path / "server",
        data_folder=args.data_path,
        train_tsv=args.tr_add_path,
        test_tsv=args.test_path,
        extra_tsvs=parse_extra_tests(args.extra_test),
        tokenizer_source=args.tokenizer_path or args.tr_path,
        **model_options,
    )
    keys = weight_keys(brain.modules)
    store = RunStore(save_path, keys)
    history: list[dict[str, Any]] = []
    if args.resume:
        history, state = store.load_latest()
        load_model_state_dict(brain.modules, state, brain.device)
        logger.info("resuming after round %d from %s", history[-1]["round"], store.path)
    elif args.pre_train_model_path is not None:
        load_model_file(brain.modules, args.pre_train_model_path, brain.device)
    done = history[-1]["round"] if history else 0
    certificates = None
    if args.certificates:
        certificates = tuple(read_bytes(p, "--certificates") for p in args.certificates)

    sha = brain.tokenizer.sha256
    run_info = {
        "seed": brain.hparams.seed,
        "config": args.config_file,
        "config_sha256": file_sha256(config_file),
        "tokenizer_sha256": sha,
        "weight_strategy": args.weight_strategy,
        "local_epochs": args.local_epochs,
        "overrides": args.override,
        "versions": library_versions(),
    }
    server_lr = args.server_lr
    if server_lr is None:
        server_lr = float(getattr(brain.hparams, "server_lr", 0.01))
    test_sets = {k: v for k, v in datasets.items() if k not in ("train", "dev")}
    strategy = TrainAfterAggregateStrategy(
        weight_strategy=args.weight_strategy,
        server_train_fn=(
            make_server_train_fn(brain, datasets["train"], server_lr, args.local_epochs)
            if args.tr_add_path else None
        ),
        on_round_end=make_round_end_fn(store),
        tokenizer_sha256=sha,
        start_round=done,
        history=history,
        row_defaults=run_info,
        accept_failures=args.accept_failures,
        fraction_fit=1.0,
        fraction_evaluate=args.fraction_evaluate,
        min_fit_clients=args.min_fit_clients,
        min_evaluate_clients=args.min_fit_clients if args.fraction_evaluate > 0 else 0,
        min_available_clients=args.min_available_clients,
        evaluate_fn=make_evaluate_fn(brain, test_sets),
        on_fit_config_fn=lambda rnd: {
            "epoch_global": rnd, "epochs": args.local_epochs, "tokenizer_sha256": sha,
        },
        on_evaluate_config_fn=lambda rnd: {"epoch_global": rnd, "tokenizer_sha256": sha},
        initial_parameters=fl.common.ndarrays_to_parameters(get_weights(brain.modules)),
    )
    if done < args.rounds:
        logger.info("server ready: %s weighting, rounds %d-%d, tokenizer %s, TLS %s",
                    args.weight_strategy, done + 1, args.rounds, brain.tokenizer.path,
                    "on" if certificates else "off")
        fl.server.start_server(
            server_address=args.server_address,
            config=fl.server.ServerConfig(num_rounds=args.rounds - done,
                                          round_timeout=args.round_timeout),
            strategy=strategy,
            grpc_max_message_length=args.grpc_max_message_length,
            certificates=certificates,
        )
    else:
        logger.info("all %d rounds already done in %s", args.rounds, store.path)
    save_checkpoint(weights_to_state_dict(strategy.global_weights, keys),
                    save_path / "final_model.ckpt")
    print(summary_table(strategy.history), flush=True)
    return strategy.history


def main(argv: list[str] | None = None) -> NoReturn:
    main_and_exit(build_parser(), run, argv)


if __name__ == "__main__":
    main()
