"""What a client does with the global model, written once for every transport.

"Set the weights, train the local epochs, return the weights with the sample count and the raw
metrics" and "evaluate on the dev set": the legacy ``NumPyClient`` (``client.py``) and the Flower
App's ``ClientApp`` (:mod:`fedspeech.transports.client_app`) are thin adapters over
:class:`LocalTrainer`; :func:`build_trainer` makes one from a site's
:class:`~fedspeech.core.settings.ClientSettings`.
"""

from __future__ import annotations

import logging
import resource
import time
from pathlib import Path
from typing import Any

import speechbrain as sb
import torch

from brain import ASR
from fedspeech.base.errors import UsageError
from fedspeech.core import protocol
from fedspeech.core.round import NDArrays
from fedspeech.core.settings import ClientSettings
from fedspeech.speech.config import parse_overrides
from fedspeech.speech.model import init_model
from fedspeech.speech.tokenizer import TokenizerMismatch
from weights import get_weights, load_model_file, move_modules, set_weights

logger = logging.getLogger("client")


class LocalTrainer:
    """A client's Brain and datasets; trains and evaluates the weights it is given."""

    def __init__(
        self,
        cid: str,
        brain: ASR,
        datasets: dict[str, Any],
        pre_train_model_path: str | Path | None = None,
        eval_device: str | None = None,
    ):
        self.cid = str(cid)
        self.brain = brain
        self.train_data = datasets.get("train")
        self.dev_data = datasets.get("dev")
        self.pre_train_model_path = pre_train_model_path
        self.eval_device = eval_device

    @property
    def tokenizer_sha256(self) -> str:
        return self.brain.tokenizer.sha256

    def check_tokenizer(self, expected: str | None) -> None:
        if expected and expected != self.tokenizer_sha256:
            raise TokenizerMismatch(
                f"client {self.cid}: tokenizer {self.brain.tokenizer.path} (sha256 "
                f"{self.tokenizer_sha256[:12]}) differs from the server's ({expected[:12]}); "
                "give every process the same --tokenizer_path"
            )

    def weights(self) -> NDArrays:
        return get_weights(self.brain.modules)

    def fit(self, weights: NDArrays, rnd: int, epochs: int
            ) -> tuple[NDArrays, int, dict[str, float]]:
        """Train ``epochs`` epochs of round ``rnd`` (epochs numbered across rounds).

        Returns the new weights, the samples trained on and the metrics the server weighs by.
        """
        started = time.monotonic()
        brain = self.brain
        logger.info("client %s starts round %d (%d local epochs)", self.cid, rnd, epochs)
        set_weights(weights, brain.modules, brain.device)
        if rnd == 1 and self.pre_train_model_path is not None:
            logger.info("client %s: loading pre-trained model %s", self.cid,
                        self.pre_train_model_path)
            load_model_file(brain.modules, self.pre_train_model_path, brain.device)
        samples, train_loss, valid_wer = brain.train_epochs(
            self.train_data, self.dev_data, epochs=epochs, first_epoch=(rnd - 1) * epochs + 1
        )
        seconds = time.monotonic() - started
        logger.info("client %s round %d: %d samples, train loss %.4f, valid WER %.2f, %.1fs",
                    self.cid, rnd, samples, train_loss, valid_wer, seconds)
        _release_gpu_memory()
        metrics = {
            protocol.TRAIN_LOSS: train_loss, protocol.VALID_WER: valid_wer,
            protocol.FIT_SECONDS: seconds,
            protocol.TRAIN_SECONDS: brain.stage_seconds.get(sb.Stage.TRAIN, 0.0),
            protocol.VALID_SECONDS: brain.stage_seconds.get(sb.Stage.VALID, 0.0),
            protocol.PEAK_RSS_MB: peak_rss_mb(),
        }
        return self.weights(), samples, metrics

    def evaluate(self, weights: NDArrays) -> tuple[float, int, dict[str, float]]:
        """Loss, sample count, WER and CER of ``weights`` on this client's dev set."""
        if self.dev_data is None:
            raise UsageError(f"client {self.cid}: no --dev_path to evaluate on")
        brain, home = self.brain, self.brain.device
        device = self.eval_device or home
        set_weights(weights, brain.modules, home)
        if device != home:
            brain.device = device
            move_modules(brain.modules, device)
        try:
            result = brain.test(self.dev_data)
        finally:
            if device != home:
                brain.device = home
                move_modules(brain.modules, home)
        _release_gpu_memory()
        metrics = {protocol.WER: result["wer"], protocol.CER: result["cer"],
                   protocol.EVAL_SECONDS: brain.stage_seconds.get(sb.Stage.TEST, 0.0)}
        return result["loss"], int(result["samples"]), metrics


def build_trainer(settings: ClientSettings) -> LocalTrainer:
    """A site's model and data from its settings (the TSVs prepared before the model is built);
    a pre-trained checkpoint is checked now, not at round 1."""
    s = settings
    brain, datasets = init_model(
        s.config,
        output_folder=Path(s.save_path) / f"client_{s.cid}",
        data_folder=s.data_path,
        train_tsv=s.train_tsv,
        valid_tsv=s.dev_path,
        tokenizer_source=s.tokenizer_path,
        device=s.device,
        overrides=parse_overrides(list(s.override), s.seed),
    )
    if s.pre_train_model_path is not None:
        load_model_file(brain.modules, s.pre_train_model_path, brain.device)
    return LocalTrainer(s.cid, brain, datasets, s.pre_train_model_path, s.eval_device)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _release_gpu_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
