"""Federated client (legacy gRPC): trains the SpeechBrain model on this machine's own speech.

The speech never leaves the machine. Each round :class:`SpeechBrainClient` hands the server's
weights to :class:`fedspeech.roles.local_training.LocalTrainer` (which trains the local epochs,
loading a pre-trained model at round 1 if asked) and returns the new weights with the sample count
and raw metrics; the server decides how to weight them. To show a client certificate, connect
through ``scripts/proxy.py grpc-client`` on 127.0.0.1 (docs/security.md). The flags become one
:class:`~fedspeech.core.settings.ClientSettings`, checked (with this site's TSVs) before the model
is built.
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

from fedspeech.base.checks import read_bytes
from fedspeech.base.cli import ArgumentParser, log_to_file, main_and_exit
from fedspeech.base.errors import UsageError
from fedspeech.core import protocol
from fedspeech.core.settings import ClientSettings, check_client
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
        return {protocol.CLIENT_ID: self.trainer.cid}

    def get_parameters(self, config):
        self.last_contact = time.monotonic()
        return self.trainer.weights()

    def fit(self, parameters, config):
        self.last_contact = time.monotonic()
        self.trainer.check_tokenizer(config.get(protocol.TOKENIZER_SHA256))
        weights, samples, metrics = self.trainer.fit(
            parameters, rnd=int(config[protocol.ROUND]), epochs=int(config[protocol.EPOCHS])
        )
        return weights, samples, {**metrics, **self._identity()}

    def evaluate(self, parameters, config):
        self.last_contact = time.monotonic()
        self.trainer.check_tokenizer(config.get(protocol.TOKENIZER_SHA256))
        loss, samples, metrics = self.trainer.evaluate(parameters)
        return loss, samples, {**metrics, **self._identity()}

    def _identity(self) -> dict[str, str]:
        return protocol.identity(self.trainer.cid, self.trainer.tokenizer_sha256)


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
    """Check the flags and this site's TSVs, build its model and data, then serve the server
    (``make_client`` wraps the trainer: tests pass a saboteur)."""
    from fedspeech.roles.local_training import build_trainer

    settings = ClientSettings.from_flags(args)
    check_client(settings)
    set_threads(settings.num_threads)
    log_to_file(Path(settings.save_path) / f"client_{settings.cid}" / "run.log", args.verbose)
    root_ca = None
    if settings.root_certificates:
        root_ca = read_bytes(settings.root_certificates, "--root_certificates")
    trainer = build_trainer(settings)
    connect(
        make_client(trainer),
        server_address=settings.server_address,
        max_wait=settings.max_wait,
        grpc_max_message_length=settings.grpc_max_message_length,
        root_ca=root_ca,
    )


def main(argv: list[str] | None = None,
         make_client: Callable[[object], SpeechBrainClient] = SpeechBrainClient) -> NoReturn:
    main_and_exit(build_parser(), lambda args: run(args, make_client), argv)


if __name__ == "__main__":
    main()
