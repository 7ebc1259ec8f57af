"""SpeechBrain side of the federation: the ASR Brain (built by :mod:`model_setup`).

Two model families are chosen by the config: the tutorial's joint CTC + attention model (a CRDNN
encoder with a GRU attentional decoder; the config defines ``dec``) and a CTC-only model (no ``dec``
in the config), small enough to learn on a laptop CPU. This module imports no Flower code.
"""

from __future__ import annotations

import logging
import math
import time

# isort: off
from fedspeech.base import (  # noqa: F401  (before torch: passive OpenMP, no torchvision warning)
    env as process_setup,
)
import speechbrain as sb
# isort: on
from speechbrain.utils.metric_stats import ErrorRateStats

from fedspeech.base.files import atomic_write
from fedspeech.speech.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


class ASR(sb.Brain):
    """Speech recogniser whose ``fit`` and ``evaluate`` report what federated averaging needs."""

    tokenizer: Tokenizer
    lr_override: float | None = None  # learning rate for the next fit (server-side training)
    samples_seen: int = 0
    nonfinite_batches: int = 0  # evaluation batches whose loss was NaN or infinite
    final_test: bool = False  # decode with the config's wide test_search (set by test(final=True))

    @property
    def is_seq2seq(self) -> bool:
        return "dec" in self.modules

    # ---- forward and loss -------------------------------------------------------------------
    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        train = stage == sb.Stage.TRAIN
        # Augmenters (SpeechBrain's, declared in the yaml) keep the batch size: concat_original
        # stays False, so the labels need no replicating.
        if train and getattr(self.hparams, "wav_augment", None) is not None:
            wavs, wav_lens = self.hparams.wav_augment(wavs, wav_lens)
        # Training-only randomness of the feature extractor (Fbank's param_rand_factor warps the
        # mel filters, VTLP-like) must be off in evaluation; it lives in hparams, not modules, so
        # Brain does not switch its mode.
        self.hparams.compute_features.train(train)
        feats = self.hparams.compute_features(wavs)
        epoch = self.hparams.epoch_counter.current if train else None
        if getattr(self.modules.normalize, "norm_type", None) == "speaker":  # speaker_norm
            feats = self.modules.normalize(feats, wav_lens, epoch=epoch, spk_ids=batch.spk_id)
        else:
            feats = self.modules.normalize(feats, wav_lens, epoch=epoch)
        if train and getattr(self.hparams, "feature_augment", None) is not None:
            feats, wav_lens = self.hparams.feature_augment(feats, wav_lens)
        enc = self.modules.enc(feats)
        out = {"p_ctc": self.hparams.log_softmax(self.modules.ctc_lin(enc)), "wav_lens": wav_lens}
        if self.is_seq2seq:
            tokens_bos, _ = batch.tokens_bos
            dec_out, _ = self.modules.dec(self.modules.emb(tokens_bos), enc, wav_lens)
            out["p_seq"] = self.hparams.log_softmax(self.modules.seq_lin(dec_out))
        if stage != sb.Stage.TRAIN:  # decode only where a WER is needed
            out["hyps"] = self._decode(enc, out["p_ctc"], wav_lens)
        return out

    @property
    def final_decoding_differs(self) -> bool:
        """Whether ``test(final=True)`` decodes differently (a wider beam) from every round."""
        return (self.is_seq2seq and getattr(self.hparams, "decode_method", "greedy") == "beam"
                and self.hparams.test_search is not self.hparams.valid_search)

    def _decode(self, enc, p_ctc, wav_lens) -> list[list[int]]:
        """Hypotheses; beam search is narrow (valid_search) except in the final test."""
        method = getattr(self.hparams, "decode_method", "greedy")
        if not self.is_seq2seq:
            return sb.decoders.ctc_greedy_decode(p_ctc, wav_lens, self.hparams.blank_index)
        if method != "beam":
            searcher = self.hparams.greedy_searcher
        elif self.final_test:
            searcher = self.hparams.test_search
        else:
            searcher = self.hparams.valid_search
        hyps = searcher(enc, wav_lens)[0]
        return [[int(t) for t in h] for h in hyps]

    def compute_objectives(self, predictions, batch, stage):
        tokens, tokens_lens = batch.tokens
        wav_lens = predictions["wav_lens"]
        loss = self.hparams.ctc_cost(predictions["p_ctc"], tokens, wav_lens, tokens_lens)
        if self.is_seq2seq:
            tokens_eos, tokens_eos_lens = batch.tokens_eos
            loss_seq = self.hparams.seq_cost(predictions["p_seq"], tokens_eos, tokens_eos_lens)
            # The epoch counter counts across federated rounds, so the CTC phase really ends.
            ctc_phase = self.hparams.epoch_counter.current <= self.hparams.number_of_ctc_epochs
            if stage == sb.Stage.TRAIN and ctc_phase:
                w = self.hparams.ctc_weight
                loss = w * loss + (1 - w) * loss_seq
            else:
                loss = loss_seq
        if stage != sb.Stage.TRAIN:
            predicted = [self.tokenizer.decode_ids(h).split() for h in predictions["hyps"]]
            target = [words.split() for words in batch.wrd]
            self.wer_metric.append(batch.id, predicted, target)
            self.cer_metric.append(batch.id, predicted, target)
        return loss

    # ---- stage hooks ------------------------------------------------------------------------
    def on_stage_start(self, stage, epoch=None):
        self._stage_started = time.monotonic()
        if stage == sb.Stage.TRAIN and epoch is not None:
            self._anneal_lr(epoch)
        if stage != sb.Stage.TRAIN:
            self.wer_metric = ErrorRateStats()
            self.cer_metric = ErrorRateStats(split_tokens=True)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        seconds = time.monotonic() - getattr(self, "_stage_started", time.monotonic())
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds
        stats: dict[str, float] = {"loss": float(stage_loss)}
        if stage != sb.Stage.TRAIN:
            stats["WER"] = float(self.wer_metric.summarize("error_rate"))
            stats["CER"] = float(self.cer_metric.summarize("error_rate"))
        self.stage_stats[stage] = stats
        train_logger = getattr(self.hparams, "train_logger", None)
        if stage == sb.Stage.VALID and train_logger is not None:
            train_logger.log_stats(
                stats_meta={"epoch": epoch},
                train_stats=self.stage_stats.get(sb.Stage.TRAIN),
                valid_stats=stats,
            )
        elif stage == sb.Stage.TEST:
            if train_logger is not None:
                train_logger.log_stats(stats_meta={"evaluation": "test"}, test_stats=stats)
            wer_file = getattr(self.hparams, "test_wer_file", None)
            if wer_file:
                with atomic_write(wer_file, "w", encoding="utf-8") as f:
                    self.wer_metric.write_stats(f)

    def init_optimizers(self):
        super().init_optimizers()
        if self.opt_class is None:
            return
        if self.lr_override is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_override
        self._base_lrs = [group["lr"] for group in self.optimizer.param_groups]

    def _anneal_lr(self, epoch: int) -> None:
        """Scale this fit's learning rate by the config's ``lr_annealing`` at global ``epoch``.

        The optimiser is rebuilt every round, so the schedule follows the epoch numbering that
        counts across rounds (:meth:`train_epochs`): round r's epochs continue where r-1 stopped,
        on every client and in server-side training alike. No ``lr_annealing``: a constant rate.
        """
        annealing = getattr(self.hparams, "lr_annealing", None)
        if annealing is None or getattr(self, "optimizer", None) is None:
            return
        factor, _ = annealing(epoch)
        for group, base in zip(self.optimizer.param_groups, self._base_lrs, strict=True):
            group["lr"] = base * factor

    # ---- sample counting --------------------------------------------------------------------
    def fit_batch(self, batch):
        self.samples_seen += len(batch.id)
        return super().fit_batch(batch)

    def evaluate_batch(self, batch, stage):
        if stage == sb.Stage.TEST:  # validation inside fit() must not count as training samples
            self.samples_seen += len(batch.id)
        loss = super().evaluate_batch(batch, stage)
        if not math.isfinite(float(loss)):
            # SpeechBrain's running average skips a non-finite loss: a model that gives NaN on
            # every batch would otherwise report an average loss of 0, the best there is
            self.nonfinite_batches += 1
        return loss

    def _reset_counts(self) -> None:
        self.samples_seen = 0
        self.nonfinite_batches = 0
        self.stage_stats: dict[sb.Stage, dict[str, float]] = {}
        self.stage_seconds: dict[sb.Stage, float] = {}  # wall time per stage, for the benchmark

    def fit(
        self,
        epoch_counter,
        train_set,
        valid_set=None,
        progressbar=None,
        train_loader_kwargs=None,
        valid_loader_kwargs=None,
    ) -> tuple[int, float, float]:
        """Train; return (samples processed, last epoch's train loss, last validation WER)."""
        self._reset_counts()
        # SpeechBrain edits the loader kwargs in place (shuffle -> sampler): hand it copies.
        super().fit(
            epoch_counter,
            train_set,
            valid_set,
            progressbar=progressbar,
            train_loader_kwargs=dict(train_loader_kwargs or {}),
            valid_loader_kwargs=dict(valid_loader_kwargs or {}),
        )
        train_loss = self.stage_stats.get(sb.Stage.TRAIN, {}).get("loss", math.nan)
        valid_wer = self.stage_stats.get(sb.Stage.VALID, {}).get("WER", math.nan)
        return self.samples_seen, float(train_loss), float(valid_wer)

    def evaluate(
        self, test_set, max_key=None, min_key=None, progressbar=None, test_loader_kwargs=None
    ) -> tuple[int, float, float]:
        """Evaluate; return (samples, average loss, WER). CER is in ``stage_stats[TEST]``."""
        self._reset_counts()
        loss = super().evaluate(
            test_set, progressbar=progressbar, test_loader_kwargs=dict(test_loader_kwargs or {})
        )
        return self.samples_seen, float(loss), self.stage_stats[sb.Stage.TEST]["WER"]

    def train_epochs(
        self, train_set, valid_set=None, *, epochs: int, first_epoch: int = 1,
        lr: float | None = None,
    ) -> tuple[int, float, float]:
        """Run ``epochs`` epochs numbered from ``first_epoch`` (global across rounds).

        Global numbering keeps epoch-dependent settings (the CTC phase, normalisation statistics
        updates, the shuffling seed) counting across federated rounds instead of restarting.
        """
        counter = self.hparams.epoch_counter
        counter.current = first_epoch - 1
        counter.limit = first_epoch - 1 + epochs
        self.lr_override = lr
        try:
            return self.fit(
                counter,
                train_set,
                valid_set,
                train_loader_kwargs=self.hparams.dataloader_options,
                valid_loader_kwargs=self.hparams.test_dataloader_options,
            )
        finally:
            self.lr_override = None

    def test(self, test_set, final: bool = False) -> dict[str, float]:
        """Evaluate with the config's test loader options; return samples, loss, WER and CER.

        ``final`` decodes with ``test_search`` (the wide beam, as SpeechBrain recipes keep for
        the last test); per-round evaluations use the cheaper ``valid_search``.
        """
        self.final_test = final
        try:
            samples, loss, wer = self.evaluate(
                test_set, test_loader_kwargs=self.hparams.test_dataloader_options
            )
        finally:
            self.final_test = False
        cer = self.stage_stats[sb.Stage.TEST]["CER"]
        if self.nonfinite_batches:  # the average would hide them: the loss is not finite
            loss = math.inf
        return {"samples": samples, "loss": loss, "wer": wer, "cer": cer}
