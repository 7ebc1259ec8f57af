"""Federated client (legacy gRPC): trains the SpeechBrain model on this machine's own speech.

The speech never leaves the machine. Each round :class:`SpeechBrainClient` hands the server's
weights to :class:`local_training.LocalTrainer` (which trains the local epochs, loading a
pre-trained model at round 1 if asked) and returns the new weights with the sample count and raw
metrics; the server decides how to weight them.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import flwr as fl
import grpc

from fedspeech.base.checks import (
    check_data_flags,
    check_file,
    check_grpc_max_message_length,
    parse_address,
    read_bytes,
)
from fedspeech.base.cli import ArgumentParser, main_and_exit
from fedspeech.base.errors import UsageError
from fedspeech.speech.config import parse_overrides
from fedspeech.speech.model import set_threads
from fedspeech.tools.flags import add_data_flags, add_grpc_flags, add_model_flags

logger = logging.getLogger("client")


class SpeechBrainClient(fl.client.NumPyClient):
    """NumPyClient over a :class:`local_training.LocalTrainer`: converts, and nothing else."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.last_contact = -math.inf  # when the server last asked us something

    def get_properties(self, config):
        self.last_contact = time.monotonic()
        return {"cid": self.trainer.cid}

    def get_parameters(self, config):
        self.last_contact = time.monotonic()
        return self.trainer.weights()

    def fit(self, parameters, config):
        self.last_contact = time.monotonic()
        self.trainer.check_tokenizer(config.get("tokenizer_sha256"))
        weights, samples, metrics = self.trainer.fit(
            parameters, rnd=int(config["epoch_global"]), epochs=int(config["epochs"])
        )
        return weights, samples, {**metrics, **self._identity()}

    def evaluate(self, parameters, config):
        self.last_contact = time.monotonic()
        self.trainer.check_tokenizer(config.get("tokenizer_sha256"))
        loss, samples, metrics = self.trainer.evaluate(parameters)
        return loss, samples, {**metrics, "cid": self.trainer.cid}

    def _identity(self) -> dict[str, str]:
        return {"cid": self.trainer.cid, "tokenizer_sha256": self.trainer.tokenizer_sha256}


def train_tsv_for(tr_path: str | Path, cid: str) -> Path:
    """``--tr_path`` may be a TSV file or a folder holding ``train_<cid>.tsv``."""
    path = Path(tr_path)
    return path / f"train_{cid}.tsv" if path.is_dir() else path


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Federated SpeechBrain ASR client (Flower, gRPC)")
    p.add_argument("--cid", type=str, required=True,
                   help="this client's id (its name in the server's history)")
    add_data_flags(p, tokenizer_default="the training TSV")
    p.add_argument("--tr_path", type=str, required=True,
                   help="training TSV, or a folder holding train_<cid>.tsv")
    p.add_argument("--dev_path", type=str, default=None, help="validation TSV")
    p.add_argument("--pre_train_model_path", type=str, default=None,
                   help="checkpoint loaded at round 1 (after the server's weights)")
    p.add_argument("--server_address", type=str, default="127.0.0.1:8080",
                   help="server host:port")
    p.add_argument("--root_certificates", type=str, default=None, metavar="CA",
                   help="CA certificate of a TLS server (the link is encrypted and the server "
                        "authenticated)")
    p.add_argument("--max_wait", type=float, default=300.0,
                   help="seconds to keep retrying (with back-off) while the server is "
                        "unreachable, at start and after a lost connection")
    p.add_argument("--eval_device", type=str, default=None,
                   help="torch device for evaluation (default: --device)")
    add_grpc_flags(p)
    add_model_flags(p)
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse impossible settings before anything slow happens."""
    check_data_flags(args.data_path, args.tokenizer_path, args.save_path)
    tsv = train_tsv_for(args.tr_path, args.cid)
    if not tsv.is_file():
        raise UsageError(f"--tr_path {tsv}: no such TSV file")
    for flag in ("dev_path", "pre_train_model_path", "root_certificates"):
        check_file(getattr(args, flag), f"--{flag}")
    parse_address(args.server_address)
    if args.max_wait < 0:
        raise UsageError(f"--max_wait must not be negative, got {args.max_wait}")
    check_grpc_max_message_length(args.grpc_max_message_length)


def connect(
    client: SpeechBrainClient,
    *,
    server_address: str,
    max_wait: float,
    grpc_max_message_length: int,
    root_ca: bytes | None,
) -> None:
    """Serve the server until it says goodbye; retry with back-off while it is unreachable.

    The ``max_wait`` budget starts at the first failed attempt, and starts again after the
    server has been in touch, so a lost connection (say, the server was restarted with
    ``--resume``) gets the full budget too.
    """
    delay, failing_since = 1.0, None
    while True:
        attempt = time.monotonic()
        logger.info("client %s: connecting to %s", client.trainer.cid, server_address)
        try:
            fl.client.start_client(  # flwr.compat's legacy client
                server_address=server_address,
                client=client.to_client(),
                grpc_max_message_length=grpc_max_message_length,
                root_certificates=root_ca,
                insecure=root_ca is None,
            )
            return
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else None
            if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                details = err.details() if hasattr(err, "details") else str(err)
                raise UsageError(
                    f"--server_address {server_address}: gRPC error "
                    f"{getattr(code, 'name', code)}: {details}"
                ) from None
        now = time.monotonic()
        if failing_since is None or client.last_contact >= attempt:
            failing_since, delay = now, 1.0  # first failure, or the link worked since the last
        waited = now - failing_since
        if waited >= max_wait:
            hint = " (TLS: is --root_certificates the server's CA?)" if root_ca else ""
            raise UsageError(
                f"--server_address {server_address}: server unreachable for "
                f"{waited:.0f}s (--max_wait){hint}"
            )
        pause = max(0.1, min(delay, max_wait - waited))
        logger.warning("server %s unreachable, retrying in %.0fs", server_address, pause)
        time.sleep(pause)
        delay = min(delay * 2, 30.0)


def run(args: argparse.Namespace,
        make_client: Callable[[object], SpeechBrainClient] = SpeechBrainClient) -> None:
    """Build this client's model and data, then serve the server (``make_client`` wraps the
    trainer: tests pass a saboteur)."""
    from fedspeech.roles.local_training import LocalTrainer
    from fedspeech.speech.model import init_model
    from weights import load_model_file

    check_args(args)
    set_threads(args.num_threads)
    root_ca = None
    if args.root_certificates:
        root_ca = read_bytes(args.root_certificates, "--root_certificates")
    brain, datasets = init_model(
        Path(args.config_path) / args.config_file,
        output_folder=Path(args.save_path) / f"client_{args.cid}",
        data_folder=args.data_path,
        train_tsv=train_tsv_for(args.tr_path, args.cid),
        valid_tsv=args.dev_path,
        tokenizer_source=args.tokenizer_path,
        device=args.device,
        overrides=parse_overrides(args.override, args.seed),
    )
    if args.pre_train_model_path is not None:  # fail now, not at round 1
        load_model_file(brain.modules, args.pre_train_model_path, brain.device)
    trainer = LocalTrainer(args.cid, brain, datasets, args.pre_train_model_path,
                           args.eval_device)
    connect(
        make_client(trainer),
        server_address=args.server_address,
        max_wait=args.max_wait,
        grpc_max_message_length=args.grpc_max_message_length,
        root_ca=root_ca,
    )


def main(argv: list[str] | None = None,
         make_client: Callable[[object], SpeechBrainClient] = SpeechBrainClient) -> NoReturn:
    main_and_exit(build_parser(), lambda args: run(args, make_client), argv)


if __name__ == "__main__":
    main()
