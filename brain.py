"""SpeechBrain side of the federation: the ASR Brain, its data pipeline, and ``init_model``.

Two model families are chosen by the config: the tutorial's joint CTC + attention model (a CRDNN
encoder with a GRU attentional decoder; the config defines ``dec``) and a CTC-only model (no ``dec``
in the config), small enough to learn on a laptop CPU. This module imports no Flower code.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import speechbrain as sb
import torch
import torchaudio.functional as taf
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio import audio_io
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.metric_stats import ErrorRateStats

from common_voice_prepare import prepare_tsv
from tokenizer import Tokenizer, load_tokenizer
from weights import init_norm_stats

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A bad config file, override or combination of paths; the message is one line."""


class ASR(sb.Brain):
    """Speech recogniser whose ``fit`` and ``evaluate`` report what federated averaging needs."""

    tokenizer: Tokenizer
    lr_override: float | None = None  # learning rate for the next fit (server-side training)
    samples_seen: int = 0

    @property
    def is_seq2seq(self) -> bool:
        return "dec" in self.modules

    # ---- forward and loss -------------------------------------------------------------------
    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        if stage == sb.Stage.TRAIN:
            for augment in getattr(self.hparams, "wav_augment", None) or []:
                wavs = augment(wavs)
        feats = self.hparams.compute_features(wavs)
        epoch = self.hparams.epoch_counter.current if stage == sb.Stage.TRAIN else None
        feats = self.modules.normalize(feats, wav_lens, epoch=epoch)
        if stage == sb.Stage.TRAIN:
            for augment in getattr(self.hparams, "feature_augment", None) or []:
                feats = augment(feats)
        enc = self.modules.enc(feats)
        out = {"p_ctc": self.hparams.log_softmax(self.modules.ctc_lin(enc)), "wav_lens": wav_lens}
        if self.is_seq2seq:
            tokens_bos, _ = batch.tokens_bos
            dec_out, _ = self.modules.dec(self.modules.emb(tokens_bos), enc, wav_lens)
            out["p_seq"] = self.hparams.log_softmax(self.modules.seq_lin(dec_out))
        if stage != sb.Stage.TRAIN:  # decode only where a WER is needed
            out["hyps"] = self._decode(enc, out["p_ctc"], wav_lens)
        return out

    def _decode(self, enc, p_ctc, wav_lens) -> list[list[int]]:
        method = getattr(self.hparams, "decode_method", "greedy")
        if not self.is_seq2seq:
            return sb.decoders.ctc_greedy_decode(p_ctc, wav_lens, self.hparams.blank_index)
        searcher = self.hparams.beam_searcher if method == "beam" else self.hparams.greedy_searcher
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
        if stage != sb.Stage.TRAIN:
            self.wer_metric = ErrorRateStats()
            self.cer_metric = ErrorRateStats(split_tokens=True)

    def on_stage_end(self, stage, stage_loss, epoch=None):
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
                with open(wer_file, "w", encoding="utf-8") as f:
                    self.wer_metric.write_stats(f)

    def init_optimizers(self):
        super().init_optimizers()
        if self.lr_override is not None and self.opt_class is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_override

    # ---- sample counting --------------------------------------------------------------------
    def fit_batch(self, batch):
        self.samples_seen += len(batch.id)
        return super().fit_batch(batch)

    def evaluate_batch(self, batch, stage):
        if stage == sb.Stage.TEST:  # validation inside fit() must not count as training samples
            self.samples_seen += len(batch.id)
        return super().evaluate_batch(batch, stage)

    def _reset_counts(self) -> None:
        self.samples_seen = 0
        self.stage_stats: dict[sb.Stage, dict[str, float]] = {}

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

    def test(self, test_set) -> dict[str, float]:
        """Evaluate with the config's test loader options; return samples, loss, WER and CER."""
        samples, loss, wer = self.evaluate(
            test_set, test_loader_kwargs=self.hparams.test_dataloader_options
        )
        cer = self.stage_stats[sb.Stage.TEST]["CER"]
        return {"samples": samples, "loss": loss, "wer": wer, "cer": cer}


# ---- data ---------------------------------------------------------------------------------------
def load_audio(path: str, sample_rate: int) -> torch.Tensor:
    """Mono float waveform at ``sample_rate`` (stereo is averaged, other rates resampled)."""
    signal, rate = audio_io.load(path)  # (channels, frames)
    signal = signal.float().mean(dim=0)
    if rate != sample_rate:
        signal = taf.resample(signal, rate, sample_rate)
    return signal


def make_datasets(
    hparams: dict[str, Any], tokenizer: Tokenizer, csv_files: dict[str, Path]
) -> dict[str, DynamicItemDataset]:
    """Datasets with ``sig`` (audio) and token pipelines, from prepared SpeechBrain CSVs."""
    sample_rate = hparams["sample_rate"]
    cache: dict[str, torch.Tensor] | None = {} if hparams.get("cache_audio", False) else None

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        if cache is None:
            return load_audio(wav, sample_rate)
        if wav not in cache:
            cache[wav] = load_audio(wav, sample_rate)
        return cache[wav]

    bos, eos = hparams["bos_index"], hparams["eos_index"]

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("tokens_list", "tokens_bos", "tokens_eos", "tokens")
    def text_pipeline(wrd):
        tokens_list = tokenizer.encode_as_ids(wrd)
        yield tokens_list
        yield torch.LongTensor([bos] + tokens_list)
        yield torch.LongTensor(tokens_list + [eos])
        yield torch.LongTensor(tokens_list)

    datasets = {}
    for split, csv_file in csv_files.items():
        data = DynamicItemDataset.from_csv(csv_path=str(csv_file))
        if split == "train" and hparams.get("sorting", "random") in ("ascending", "descending"):
            data = data.filtered_sorted(
                sort_key="duration", reverse=hparams["sorting"] == "descending"
            )
        elif split != "train":
            data = data.filtered_sorted(sort_key="duration")
        sb.dataio.dataset.add_dynamic_item([data], audio_pipeline)
        sb.dataio.dataset.add_dynamic_item([data], text_pipeline)
        sb.dataio.dataset.set_output_keys(
            [data], ["id", "sig", "wrd", "tokens_bos", "tokens_eos", "tokens"]
        )
        datasets[split] = data
    return datasets


# What the Brain, init_model and the server read from a config (a missing one would otherwise be
# a KeyError/AttributeError deep inside training).
REQUIRED_KEYS = (
    "seed", "sample_rate", "n_mels", "output_neurons", "token_type", "blank_index", "bos_index",
    "eos_index", "compute_features", "log_softmax", "ctc_cost", "modules", "opt_class",
    "epoch_counter", "dataloader_options", "test_dataloader_options",
)
REQUIRED_MODULES = ("enc", "ctc_lin", "normalize")
SEQ2SEQ_KEYS = ("seq_cost", "ctc_weight", "number_of_ctc_epochs")
SEQ2SEQ_MODULES = ("emb", "seq_lin")


def check_config_keys(config_file: str | Path, hparams: dict) -> None:
    """A key or module the code needs but the config lacks is a one-line ConfigError."""
    missing = [k for k in REQUIRED_KEYS if k not in hparams]
    modules = hparams.get("modules")
    if not missing and not isinstance(modules, dict):
        raise ConfigError(f"{config_file}: 'modules' must be a mapping of name: module")
    if not missing:
        needed = list(REQUIRED_MODULES)
        if "dec" in modules:
            beam = hparams.get("decode_method", "greedy") == "beam"
            searcher = "beam_searcher" if beam else "greedy_searcher"
            needed += list(SEQ2SEQ_MODULES)
            missing += [k for k in (*SEQ2SEQ_KEYS, searcher) if k not in hparams]
        missing += [f"modules.{m}" for m in needed if m not in modules]
    if missing:
        keys = ", ".join(repr(k) for k in missing)
        raise ConfigError(f"{config_file}: missing key{'s' if len(missing) > 1 else ''} {keys}")


def load_hparams(config_file: str | Path, overrides: dict[str, Any] | None = None) -> dict:
    """Read a hyperpyyaml config; a missing file or bad YAML becomes a one-line ConfigError."""
    path = Path(config_file)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return load_hyperpyyaml(f, overrides or {})
    except Exception as err:  # hyperpyyaml raises many types; keep the first line
        text = str(err).strip()
        first = text.splitlines()[0] if text else type(err).__name__
        mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
        ref = re.search(r'reference "([^"]+)" is not valid', text)
        if ref:
            why = f"missing key '{ref.group(1)}' (used as <{ref.group(1)}>)"
        elif mark is not None and problem:
            why = f"invalid YAML, line {mark.line + 1}: {problem}"
        else:
            why = f"invalid config ({first})"
        raise ConfigError(f"{path}: {why}") from err


def init_model(
    config_file: str | Path,
    *,
    output_folder: str | Path,
    data_folder: str | Path,
    train_tsv: str | Path | None = None,
    valid_tsv: str | Path | None = None,
    test_tsv: str | Path | None = None,
    extra_tsvs: dict[str, str | Path] | None = None,
    tokenizer_source: str | Path | None = None,
    device: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> tuple[ASR, dict[str, DynamicItemDataset]]:
    """Build the Brain, the shared tokenizer and the datasets (the tutorial's ``int_model``).

    Each given TSV is prepared into ``<output_folder>/save/<split>.csv`` (splits ``train``,
    ``dev``, ``test`` and the names in ``extra_tsvs``) and becomes a dataset. The tokenizer
    comes from ``tokenizer_source`` (a ``.model`` file, or transcripts to train it from), else
    from ``train_tsv``; every process of a federation must end up with the same file.
    """
    output_folder = Path(output_folder)
    hparams = load_hparams(config_file, {"output_folder": str(output_folder), **(overrides or {})})
    check_config_keys(config_file, hparams)
    # SpeechBrain's shuffling sampler takes its seed from the environment.
    os.environ.setdefault("SB_GLOBAL_SEED", str(hparams.get("seed", 0)))
    save_folder = output_folder / "save"
    save_folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config_file, output_folder / "hyperparams.yaml")

    prep = {
        "language": hparams.get("language", "en"),
        "accented_letters": hparams.get("accented_letters", False),
        "max_duration": hparams.get("avoid_if_longer_than"),
        "min_duration": hparams.get("avoid_if_shorter_than", 0.0),
    }
    csv_files = {}
    splits = {"train": train_tsv, "dev": valid_tsv, "test": test_tsv, **(extra_tsvs or {})}
    for split, tsv in splits.items():
        if tsv is not None:
            csv_files[split] = save_folder / f"{split}.csv"
            prepare_tsv(tsv, csv_files[split], data_folder, **prep)

    source = tokenizer_source if tokenizer_source is not None else train_tsv
    if source is None:
        raise ConfigError("no tokenizer: pass --tokenizer_path (a .model file or transcripts)")
    tokenizer = load_tokenizer(
        source,
        output_folder / "tokenizer",
        vocab_size=hparams["output_neurons"],
        model_type=hparams["token_type"],
        character_coverage=hparams.get("character_coverage", 1.0),
        language=prep["language"],
        accented_letters=prep["accented_letters"],
    )
    if tokenizer.vocab_size() > hparams["output_neurons"]:
        raise ConfigError(
            f"{tokenizer.path}: tokenizer has {tokenizer.vocab_size()} tokens but the config's "
            f"output_neurons is {hparams['output_neurons']}"
        )

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    brain = ASR(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts={"device": device, "noprogressbar": hparams.get("noprogressbar", True)},
        checkpointer=None,  # the federation saves models itself; never auto-recover here
    )
    brain.tokenizer = tokenizer
    brain._reset_counts()
    init_norm_stats(brain.modules, hparams["n_mels"])
    brain.modules.to(brain.device)
    return brain, make_datasets(hparams, tokenizer, csv_files)
