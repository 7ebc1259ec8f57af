"""Federated client: trains the SpeechBrain model on this machine's own speech (never sent).

Each round it loads the server's weights, optionally a pre-trained model at round 1, trains its
local epochs and returns the new weights with the sample count and raw metrics (training loss,
validation WER); the server decides how to weight them.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import NoReturn

import flwr as fl
import grpc
import torch
from flwr.common import GRPC_MAX_MESSAGE_LENGTH

from brain import ASR, init_model
from cli import (
    ArgumentParser,
    UsageError,
    add_model_flags,
    check_file,
    check_writable_dir,
    main_and_exit,
    model_setup,
    parse_address,
    read_bytes,
)
from weights import get_weights, load_model_file, set_weights

logger = logging.getLogger("client")


class TokenizerMismatch(ValueError):
    """The server and this client use different tokenizer files."""


class SpeechBrainClient(fl.client.NumPyClient):
    """NumPyClient around an :class:`brain.ASR` and this client's train/dev datasets."""

    def __init__(
        self,
        cid: str,
        brain: ASR,
        datasets: dict,
        pre_train_model_path: str | Path | None = None,
        eval_device: str | None = None,
    ):
        self.cid = str(cid)
        self.brain = brain
        self.train_data = datasets["train"]
        self.dev_data = datasets.get("dev")
        self.pre_train_model_path = pre_train_model_path
        self.eval_device = eval_device
        self.last_contact = -math.inf  # when the server last asked us something

    def get_properties(self, config):
        self.last_contact = time.monotonic()
        return {"cid": self.cid}

    def get_parameters(self, config):
        self.last_contact = time.monotonic()
        return get_weights(self.brain.modules)

    def _check_tokenizer(self, config) -> None:
        expected = config.get("tokenizer_sha256")
        if expected and expected != self.brain.tokenizer.sha256:
            raise TokenizerMismatch(
                f"client {self.cid}: tokenizer {self.brain.tokenizer.path} (sha256 "
                f"{self.brain.tokenizer.sha256[:12]}) differs from the server's ({expected[:12]}); "
                "give every process the same --tokenizer_path"
            )

    def fit(self, parameters, config):
        self.last_contact = time.monotonic()
        self._check_tokenizer(config)
        rnd = int(config["epoch_global"])
        epochs = int(config["epochs"])
        started = time.monotonic()
        set_weights(parameters, self.brain.modules, self.brain.device)
        if rnd == 1 and self.pre_train_model_path is not None:
            logger.info("client %s: loading pre-trained model %s", self.cid,
                        self.pre_train_model_path)
            load_model_file(self.brain.modules, self.pre_train_model_path, self.brain.device)
        samples, train_loss, valid_wer = self.brain.train_epochs(
            self.train_data, self.dev_data, epochs=epochs, first_epoch=(rnd - 1) * epochs + 1
        )
        seconds = time.monotonic() - started
        logger.info("client %s round %d: %d samples, train loss %.4f, valid WER %.2f, %.1fs",
                    self.cid, rnd, samples, train_loss, valid_wer, seconds)
        _release_gpu_memory()
        metrics = {
            "cid": self.cid,
            "train_loss": train_loss,
            "valid_wer": valid_wer,
            "tokenizer_sha256": self.brain.tokenizer.sha256,
            "fit_seconds": seconds,
        }
        return get_weights(self.brain.modules), samples, metrics

    def evaluate(self, parameters, config):
        self.last_contact = time.monotonic()
        if self.dev_data is None:
            raise ValueError(f"client {self.cid}: no --dev_path to evaluate on")
        self._check_tokenizer(config)
        brain, home = self.brain, self.brain.device
        device = self.eval_device or home
        set_weights(parameters, brain.modules, home)
        if device != home:
            brain.device = device
            brain.modules.to(device)
        try:
            result = brain.test(self.dev_data)
        finally:
            if device != home:
                brain.device = home
                brain.modules.to(home)
        _release_gpu_memory()
        metrics = {"cid": self.cid, "wer": result["wer"], "cer": result["cer"]}
        return result["loss"], int(result["samples"]), metrics


def _release_gpu_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_tsv_for(tr_path: str | Path, cid: str) -> Path:
    """``--tr_path`` may be a TSV file or a folder holding ``train_<cid>.tsv``."""
    path = Path(tr_path)
    return path / f"train_{cid}.tsv" if path.is_dir() else path


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Federated SpeechBrain ASR client (Flower, gRPC)")
    p.add_argument("--cid", type=str, required=True, help="this client's id")
    p.add_argument("--data_path", type=str, required=True,
                   help="Common Voice folder (holds clips/)")
    p.add_argument("--tr_path", type=str, required=True,
                   help="training TSV, or a folder holding train_<cid>.tsv")
    p.add_argument("--dev_path", type=str, default=None, help="validation TSV")
    p.add_argument("--tokenizer_path", type=str, default=None,
                   help="shared tokenizer: a .model file, or transcripts (TSV/CSV) to train it "
                        "from; default: the training TSV")
    p.add_argument("--pre_train_model_path", type=str, default=None,
                   help="checkpoint loaded at round 1 (after the server's weights)")
    p.add_argument("--save_path", type=str, default="results",
                   help="output folder; this client writes to <save_path>/client_<cid>")
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
    p.add_argument("--grpc_max_message_length", type=int, default=GRPC_MAX_MESSAGE_LENGTH,
                   help="largest gRPC message in bytes (the model travels in one; default: "
                        "gRPC's ceiling, 2 GiB)")
    add_model_flags(p)
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse impossible settings before anything slow happens."""
    if not Path(args.data_path).is_dir():
        raise UsageError(f"--data_path {args.data_path}: no such folder")
    tsv = train_tsv_for(args.tr_path, args.cid)
    if not tsv.is_file():
        raise UsageError(f"--tr_path {tsv}: no such TSV file")
    for flag in ("dev_path", "pre_train_model_path", "root_certificates"):
        check_file(getattr(args, flag), f"--{flag}")
    if args.tokenizer_path is not None and not Path(args.tokenizer_path).exists():
        raise UsageError(f"--tokenizer_path {args.tokenizer_path}: no such file or folder")
    parse_address(args.server_address)
    if args.max_wait < 0:
        raise UsageError(f"--max_wait must not be negative, got {args.max_wait}")
    check_writable_dir(args.save_path, "--save_path")


def connect(client: SpeechBrainClient, args: argparse.Namespace, root_ca: bytes | None) -> None:
    """Serve the server until it says goodbye; retry with back-off while it is unreachable.

    The ``--max_wait`` budget starts at the first failed attempt, and starts again after the
    server has been in touch, so a lost connection (say, the server was restarted with
    ``--resume``) gets the full budget too.
    """
    delay, failing_since = 1.0, None
    while True:
        attempt = time.monotonic()
        try:
            fl.client.start_client(
                server_address=args.server_address,
                client=client.to_client(),
                grpc_max_message_length=args.grpc_max_message_length,
                root_certificates=root_ca,
                insecure=root_ca is None,
            )
            return
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else None
            if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                details = err.details() if hasattr(err, "details") else str(err)
                raise ConnectionError(
                    f"--server_address {args.server_address}: gRPC error "
                    f"{getattr(code, 'name', code)}: {details}"
                ) from None
        now = time.monotonic()
        if failing_since is None or client.last_contact >= attempt:
            failing_since, delay = now, 1.0  # first failure, or the link worked since the last
        waited = now - failing_since
        if waited >= args.max_wait:
            hint = " (TLS: is --root_certificates the server's CA?)" if root_ca else ""
            raise ConnectionError(
                f"--server_address {args.server_address}: server unreachable for "
                f"{waited:.0f}s (--max_wait){hint}"
            )
        pause = max(0.1, min(delay, args.max_wait - waited))
        logger.warning("server %s unreachable, retrying in %.0fs", args.server_address, pause)
        time.sleep(pause)
        delay = min(delay * 2, 30.0)


def run(args: argparse.Namespace) -> None:
    check_args(args)
    root_ca = read_bytes(args.root_certificates, "--root_certificates") \
        if args.root_certificates else None
    config_file, model_options = model_setup(args)
    brain, datasets = init_model(
        config_file,
        output_folder=Path(args.save_path) / f"client_{args.cid}",
        data_folder=args.data_path,
        train_tsv=train_tsv_for(args.tr_path, args.cid),
        valid_tsv=args.dev_path,
        tokenizer_source=args.tokenizer_path,
        **model_options,
    )
    if args.pre_train_model_path is not None:  # fail now, not at round 1
        load_model_file(brain.modules, args.pre_train_model_path, brain.device)
    client = SpeechBrainClient(args.cid, brain, datasets, args.pre_train_model_path,
                               args.eval_device)
    connect(client, args, root_ca)


def main(argv: list[str] | None = None) -> NoReturn:
    main_and_exit(build_parser(), run, argv)


if __name__ == "__main__":
    main()
