"""Audio loading and the SpeechBrain datasets (audio and token pipelines) from prepared CSVs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# isort: off
from fedspeech.base import (  # noqa: F401  (before torch: passive OpenMP, no torchvision warning)
    env as process_setup,
)
import speechbrain as sb
# isort: on
import torch
import torchaudio.functional as taf
from speechbrain.dataio import audio_io
from speechbrain.dataio.dataio import load_data_csv
from speechbrain.dataio.dataset import DynamicItemDataset

from fedspeech.speech.tokenizer import Tokenizer


def load_audio(path: str, sample_rate: int) -> torch.Tensor:
    """Mono float waveform at ``sample_rate`` (stereo is averaged, other rates resampled)."""
    signal, rate = audio_io.load(path)  # (channels, frames)
    signal = signal.float().mean(dim=0)
    if rate != sample_rate:
        signal = taf.resample(signal, rate, sample_rate)
    return signal


def trim_silence(
    signal: torch.Tensor, sample_rate: int, top_db: float, margin: float = 0.05
) -> torch.Tensor:
    """Cut leading and trailing stretches more than ``top_db`` below the clip's loudest frame.

    Recordings differ in how much silence surrounds the speech: some are cut tight, others keep
    a tenth of a second of near-digital silence whose log-mel values no other recording has (and
    which shifts a per-utterance mean). Frames are 10 ms; ``margin`` seconds are kept on either
    side. A clip shorter than a frame, or all zeros, is returned unchanged.
    """
    hop = max(1, sample_rate // 100)
    frames = signal[: signal.numel() // hop * hop].reshape(-1, hop)
    if frames.shape[0] == 0:
        return signal
    energy_db = 10 * torch.log10(frames.pow(2).mean(dim=1) + 1e-10)
    if energy_db.max() <= -100:  # digital silence throughout: nothing to anchor the cut on
        return signal
    loud = torch.nonzero(energy_db > energy_db.max() - top_db).flatten()
    pad = int(margin * sample_rate)
    start = max(0, int(loud[0]) * hop - pad)
    end = min(signal.numel(), (int(loud[-1]) + 1) * hop + pad)
    return signal[start:end]


def make_datasets(
    hparams: dict[str, Any], tokenizer: Tokenizer, sources: dict[str, Path | dict]
) -> dict[str, DynamicItemDataset]:
    """Datasets with ``sig`` (audio) and token pipelines.

    Each source is a prepared SpeechBrain CSV, or its rows already loaded (``load_csv_rows``, a
    subset of them for one virtual client).
    """
    sample_rate = hparams["sample_rate"]
    trim_db = hparams.get("trim_silence_db")
    cache: dict[str, torch.Tensor] | None = {} if hparams.get("cache_audio", False) else None

    def read(wav: str) -> torch.Tensor:
        signal = load_audio(wav, sample_rate)
        return signal if trim_db is None else trim_silence(signal, sample_rate, float(trim_db))

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        if cache is None:
            return read(wav)
        if wav not in cache:
            cache[wav] = read(wav)
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
    for split, source in sources.items():
        if isinstance(source, dict):
            data = DynamicItemDataset(source)
        else:
            data = DynamicItemDataset.from_csv(csv_path=str(source))
        if split == "train" and hparams.get("sorting", "random") in ("ascending", "descending"):
            data = data.filtered_sorted(
                sort_key="duration", reverse=hparams["sorting"] == "descending"
            )
        elif split != "train":
            data = data.filtered_sorted(sort_key="duration")
        sb.dataio.dataset.add_dynamic_item([data], audio_pipeline)
        sb.dataio.dataset.add_dynamic_item([data], text_pipeline)
        sb.dataio.dataset.set_output_keys(
            [data], ["id", "sig", "spk_id", "wrd", "tokens_bos", "tokens_eos", "tokens"]
        )
        datasets[split] = data
    normalize = hparams.get("normalize")
    if getattr(normalize, "norm_type", None) == "speaker":
        measure_speakers(normalize, hparams["compute_features"], datasets.values())
    return datasets


def measure_speakers(normalize, extractor, datasets) -> None:
    """Add every utterance of the datasets to ``normalize``'s per-speaker means (``speaker_norm``),
    from unaugmented audio and features: the feature extractor in evaluation mode (no VTLP).

    Audio is loaded only for utterances not measured yet: a ClientApp builds its datasets again
    for every message.
    """
    extractor.train(False)
    for data in datasets:
        with data.output_keys_as(["id", "spk_id"]):
            new = [(i, item["id"], item["spk_id"]) for i, item in enumerate(data)
                   if not normalize.has_measured(item["id"])]
        with data.output_keys_as(["sig"]):
            normalize.add_utterances(((uid, spk, data[i]["sig"]) for i, uid, spk in new),
                                     extractor)


def load_csv_rows(csv_file: str | Path) -> dict[str, dict[str, Any]]:
    """A prepared CSV as ``{ID: {duration, wav, spk_id, wrd}}`` (duration as a float)."""
    return load_data_csv(str(csv_file))
