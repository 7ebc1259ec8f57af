"""Federated server: aggregates the clients' weights, trains on its held-out set, evaluates, saves.

The server builds its own SpeechBrain model once and wraps it into the strategy's callables:
server-side training on ``--tr_add_path``, evaluation on ``--test_path`` and saving of the global
model and ``history.json`` after every round.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import flwr as fl
import torch

from brain import ASR, ConfigError, init_model
from common_voice_prepare import DataPrepError
from history import library_versions, plot_histories, summary_table, write_json_atomic
from strategy import WEIGHT_STRATEGIES, TrainAfterAggregateStrategy
from tokenizer import file_sha256
from weights import (
    get_weights,
    load_model_file,
    save_checkpoint,
    set_weights,
    weight_keys,
    weights_to_state_dict,
)

logger = logging.getLogger("server")
HERE = Path(__file__).resolve().parent


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


def make_round_end_fn(keys: list[str], save_path: Path):
    """Save the global model, rewrite ``history.json`` (both atomically) and redraw the plot."""

    def on_round_end(rnd: int, weights, history):
        if weights is not None:
            save_checkpoint(weights_to_state_dict(weights, keys), save_path / "global_model.ckpt")
        write_json_atomic(history, save_path / "history.json")
        try:
            plot_histories({save_path.name: history}, save_path / "history.png")
        except Exception as err:  # a plot must never stop a federation
            logger.warning("could not draw %s: %s", save_path / "history.png", err)

    return on_round_end


def parse_extra_tests(items: list[str]) -> dict[str, str]:
    extra = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.isidentifier() or not path:
            raise ConfigError(f"--extra_test '{item}': expected NAME=TSV, e.g. unseen=test_b.tsv")
        extra[name] = path
    return extra


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Federated SpeechBrain ASR server (Flower, gRPC)")
    p.add_argument("--data_path", type=str, required=True,
                   help="Common Voice folder (holds clips/) for the server's own sets")
    p.add_argument("--config_path", type=str, default=str(HERE / "configs"),
                   help="folder of config files")
    p.add_argument("--config_file", type=str, default="small_cpu.yaml",
                   help="config file name inside --config_path")
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
    p.add_argument("--min_fit_clients", type=int, default=2, help="clients trained per round")
    p.add_argument("--min_available_clients", type=int, default=2,
                   help="clients that must be connected before a round starts")
    p.add_argument("--rounds", type=int, default=5, help="federated rounds")
    p.add_argument("--local_epochs", type=int, default=1, help="epochs each client trains a round")
    p.add_argument("--weight_strategy", type=str, default="num", choices=WEIGHT_STRATEGIES,
                   help="client weighting: num (FedAvg), loss or wer")
    p.add_argument("--fraction_evaluate", type=float, default=1.0,
                   help="share of clients evaluating on their dev sets each round (0: none)")
    p.add_argument("--server_address", type=str, default="127.0.0.1:8080",
                   help="host:port to listen on")
    p.add_argument("--save_path", type=str, default="results",
                   help="output folder: models, history.json, logs")
    p.add_argument("--seed", type=int, default=None,
                   help="random seed (default: the config's seed); recorded in the history")
    p.add_argument("--device", type=str, default=None,
                   help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--num_threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default)")
    p.add_argument("--grpc_max_message_length", type=int, default=1024**3,
                   help="largest gRPC message in bytes (the model travels in one)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def check_args(args: argparse.Namespace) -> None:
    if args.rounds < 1:
        raise ConfigError(f"--rounds must be at least 1, got {args.rounds}")
    if args.local_epochs < 1:
        raise ConfigError(f"--local_epochs must be at least 1, got {args.local_epochs}")
    if args.min_fit_clients < 1:
        raise ConfigError(f"--min_fit_clients must be at least 1, got {args.min_fit_clients}")
    if args.min_fit_clients > args.min_available_clients:
        raise ConfigError(
            f"--min_fit_clients ({args.min_fit_clients}) exceeds --min_available_clients "
            f"({args.min_available_clients})"
        )


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    check_args(args)
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    save_path = Path(args.save_path)
    save_path.mkdir(parents=True, exist_ok=True)
    brain, datasets = init_model(
        Path(args.config_path) / args.config_file,
        output_folder=save_path / "server",
        data_folder=args.data_path,
        train_tsv=args.tr_add_path,
        test_tsv=args.test_path,
        extra_tsvs=parse_extra_tests(args.extra_test),
        tokenizer_source=args.tokenizer_path or args.tr_path,
        device=args.device,
        overrides={} if args.seed is None else {"seed": args.seed},
    )
    if args.pre_train_model_path is not None:
        load_model_file(brain.modules, args.pre_train_model_path, brain.device)
    keys = weight_keys(brain.modules)
    sha = brain.tokenizer.sha256
    test_sets = {k: v for k, v in datasets.items() if k not in ("train", "dev")}
    server_lr = args.server_lr
    if server_lr is None:
        server_lr = float(getattr(brain.hparams, "server_lr", 0.01))

    config_file = Path(args.config_path) / args.config_file
    run_info = {
        "seed": brain.hparams.seed,
        "config": args.config_file,
        "config_sha256": file_sha256(config_file),
        "tokenizer_sha256": sha,
        "weight_strategy": args.weight_strategy,
        "local_epochs": args.local_epochs,
        "versions": library_versions(),
    }
    strategy = TrainAfterAggregateStrategy(
        weight_strategy=args.weight_strategy,
        row_defaults=run_info,
        server_train_fn=(
            make_server_train_fn(brain, datasets["train"], server_lr, args.local_epochs)
            if args.tr_add_path else None
        ),
        on_round_end=make_round_end_fn(keys, save_path),
        tokenizer_sha256=sha,
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
    logger.info("server ready: %s weighting, %d rounds, tokenizer %s", args.weight_strategy,
                args.rounds, brain.tokenizer.path)
    fl.server.start_server(
        server_address=args.server_address,
        config=fl.server.ServerConfig(num_rounds=args.rounds),
        strategy=strategy,
        grpc_max_message_length=args.grpc_max_message_length,
    )
    if strategy.global_weights is not None:
        save_checkpoint(weights_to_state_dict(strategy.global_weights, keys),
                        save_path / "final_model.ckpt")
    write_json_atomic(strategy.history, save_path / "history.json")
    print(summary_table(strategy.history))
    return strategy.history


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("flwr").propagate = False  # Flower prints through its own handler
    try:
        run(args)
    except (ConfigError, DataPrepError, ValueError, OSError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BaseException as err:  # noqa: BLE001
        # Flower leaves its gRPC threads running after an exception: the process would hang.
        logger.exception("server stopped: %s", err)
        sys.stderr.flush()
        os._exit(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
