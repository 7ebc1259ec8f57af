"""The server's SpeechBrain side, shared by every transport: its own model, data and run folder.

:func:`build_federation` builds the server's Brain once, its held-out training set and test sets,
the run folder (resuming or starting from a pre-trained model), and a
:class:`~fedspeech.core.round.RoundCore` whose server training and evaluation are this model's,
all from one :class:`~fedspeech.core.settings.ServerSettings`. ``server.py`` (legacy gRPC) and
the App's ServerApp only add their transport around it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brain import ASR
from fedspeech.base.files import file_sha256
from fedspeech.core.round import NDArrays, RoundCore
from fedspeech.core.row import RoundRow
from fedspeech.core.settings import ServerSettings
from fedspeech.records.history import RunStore, library_versions, summary_table
from fedspeech.speech.config import parse_overrides
from fedspeech.speech.model import init_model
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


class ServerModel:
    """Server-side training on the held-out set and evaluation on the test sets."""

    def __init__(self, brain: ASR, datasets: dict[str, Any], *, lr: float, local_epochs: int):
        self.brain = brain
        self.train_data = datasets.get("train")
        self.score_set = datasets.get("score")
        self.test_sets = {k: v for k, v in datasets.items() if k not in ("train", "dev", "score")}
        self.lr = lr
        self.local_epochs = local_epochs

    def train(self, weights: NDArrays, rnd: int) -> NDArrays:
        """One epoch on the held-out set, numbered after the clients' epochs of round ``rnd``."""
        brain = self.brain
        set_weights(weights, brain.modules, brain.device)
        samples, loss, _ = brain.train_epochs(
            self.train_data, None, epochs=1, first_epoch=rnd * self.local_epochs, lr=self.lr
        )
        logger.info("round %d: server-side training on %d samples, loss %.4f", rnd, samples, loss)
        return get_weights(brain.modules)

    def score(self, weights: NDArrays) -> tuple[float, float]:
        """Loss and WER of a client's update on the server's scoring set (``--score_path``)."""
        set_weights(weights, self.brain.modules, self.brain.device)
        result = self.brain.test(self.score_set)
        return result["loss"], result["wer"]

    def evaluate(self, weights: NDArrays, rnd: int, final: bool = False
                 ) -> tuple[float, dict[str, float]]:
        """Test loss, WER and CER (and each extra test set's WER and CER)."""
        set_weights(weights, self.brain.modules, self.brain.device)
        main = self.brain.test(self.test_sets["test"], final=final)
        metrics: dict[str, float] = {"wer": main["wer"], "cer": main["cer"]}
        for name, data in self.test_sets.items():
            if name != "test":
                extra = self.brain.test(data, final=final)
                metrics[f"{name}_wer"] = extra["wer"]
                metrics[f"{name}_cer"] = extra["cer"]
        label = "final test" if final else f"round {rnd}"
        logger.info("%s: test loss %.4f, %s", label, main["loss"],
                    ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        return main["loss"], metrics


@dataclass
class Federation:
    """What a server process holds for a whole run."""

    core: RoundCore
    model: ServerModel
    store: RunStore
    local_epochs: int
    tokenizer_sha256: str

    def finish(self) -> list[RoundRow]:
        """Save ``final_model.ckpt``; where decoding differs, test once more with the final beam."""
        save_checkpoint(weights_to_state_dict(self.core.weights, self.store.keys),
                        self.store.path / "final_model.ckpt")
        brain = self.model.brain
        if self.core.history and brain.final_decoding_differs:
            started = time.monotonic()
            loss, metrics = self.model.evaluate(self.core.weights, 0, final=True)
            last = self.core.history[-1]
            last.final_test_seconds = round(time.monotonic() - started, 3)
            last.final_test_loss = float(loss)
            for key, value in metrics.items():
                last.set(f"final_test_{key}", value)
            self.store.save_round(last.round, None, self.core.history)
        print(summary_table(self.core.history), flush=True)
        return self.core.history


def build_federation(settings: ServerSettings, run_info: dict[str, Any] | None = None
                     ) -> Federation:
    """Build the server's model and the round core for a new or resumed run."""
    s = settings.with_preset()
    save_path = Path(s.save_path)
    overrides = parse_overrides(list(s.override), s.seed)
    extra = {**s.extra_tests, **({"score": s.score_path} if s.score_path else {})}
    brain, datasets = init_model(
        s.config,
        output_folder=save_path / "server",
        data_folder=s.data_path,
        train_tsv=s.tr_add_path,
        test_tsv=s.test_path,
        extra_tsvs=extra,
        tokenizer_source=s.tokenizer_source,
        device=s.device,
        overrides=overrides,
    )
    if s.score_utts and "score" in datasets:  # the first N by duration: a fixed, cheap subset
        datasets["score"] = datasets["score"].filtered_sorted(select_n=s.score_utts)
    store = RunStore(save_path, weight_keys(brain.modules))
    history: list[RoundRow] = []
    if s.resume:
        history, state = store.load_latest()
        load_model_state_dict(brain.modules, state, brain.device)
        logger.info("resuming after round %d from %s", history[-1].round, store.path)
    elif s.pre_train_model_path is not None:
        load_model_file(brain.modules, s.pre_train_model_path, brain.device)
    local_epochs = s.local_epochs or int(brain.hparams.number_of_epochs)
    server_lr = s.server_lr or float(getattr(brain.hparams, "server_lr", 0.01))
    sha = brain.tokenizer.sha256
    row_defaults = {
        "seed": brain.hparams.seed,
        "config": s.config.name,
        "config_sha256": file_sha256(s.config),
        "tokenizer_sha256": sha,
        "weight_strategy": s.weight_strategy,
        "local_epochs": local_epochs,
        **({"aggregation": s.aggregation} if s.aggregation != "mean" else {}),
        **({"secure_aggregation": "secagg+"} if s.secure_aggregation else {}),
        "overrides": [f"{k}={v}" for k, v in overrides.items() if k != "seed"],
        "versions": library_versions(),
        **(run_info or {}),
    }
    model = ServerModel(brain, datasets, lr=server_lr, local_epochs=local_epochs)
    core = RoundCore(
        initial_weights=get_weights(brain.modules),
        weight_strategy=s.weight_strategy,
        server_train=model.train if s.tr_add_path else None,
        evaluate=model.evaluate,
        sink=store,
        tokenizer_sha256=sha,
        history=history,
        row_defaults=row_defaults,
        min_updates=s.min_fit_clients,
        accept_failures=s.accept_failures,
        client_evaluation=s.fraction_evaluate > 0,
        defences=s.defences,
        score=model.score if s.score_path else None,
        privacy=s.privacy,
    )
    return Federation(core, model, store, local_epochs, sha)
