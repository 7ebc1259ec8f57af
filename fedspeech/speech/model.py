"""Building a federation process's model and data: the Brain, the shared tokenizer, the datasets.

``init_model`` is the tutorial's ``int_model``; the Flower App's ClientApp uses the pieces apart
(one Brain per process, a virtual client's datasets per message).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from speechbrain.dataio.dataset import DynamicItemDataset

from brain import ASR
from common_voice_prepare import prepare_tsv
from fedspeech.speech.audio import make_datasets
from fedspeech.speech.config import (
    ConfigError,
    check_config_keys,
    load_hparams,
    save_resolved_config,
)
from fedspeech.speech.tokenizer import load_tokenizer
from weights import init_norm_stats, move_modules


def load_config(config_file: str | Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """The config with its overrides, checked for the keys the code needs."""
    hparams = load_hparams(config_file, overrides)
    check_config_keys(config_file, hparams)
    return hparams


def build_brain(
    config_file: str | Path,
    *,
    output_folder: str | Path,
    tokenizer_source: str | Path | None,
    device: str | None = None,
    overrides: dict[str, Any] | None = None,
    hparams: dict[str, Any] | None = None,
) -> ASR:
    """The Brain and the shared tokenizer from a config; no data yet (see :func:`prepare_splits`).

    The tokenizer comes from ``tokenizer_source``: a ``.model`` file, or transcripts to train it
    from; every process of a federation must end up with the same file. The resolved config (with
    its overrides) is kept as ``<output_folder>/hyperparams.yaml``.
    """
    output_folder = Path(output_folder)
    overrides = {"output_folder": str(output_folder), **(overrides or {})}
    if hparams is None:  # init_model has read it already
        hparams = load_config(config_file, overrides)
    (output_folder / "save").mkdir(parents=True, exist_ok=True)
    save_resolved_config(config_file, overrides, output_folder / "hyperparams.yaml")
    if tokenizer_source is None:
        raise ConfigError("no tokenizer: pass --tokenizer_path (a .model file or transcripts)")
    tokenizer = load_tokenizer(
        tokenizer_source,
        output_folder / "tokenizer",
        vocab_size=hparams["output_neurons"],
        model_type=hparams["token_type"],
        character_coverage=hparams.get("character_coverage", 1.0),
        language=hparams.get("language", "en"),
        accented_letters=hparams.get("accented_letters", False),
    )
    if tokenizer.vocab_size() > hparams["output_neurons"]:
        raise ConfigError(
            f"{tokenizer.path}: tokenizer has {tokenizer.vocab_size()} tokens but the config's "
            f"output_neurons is {hparams['output_neurons']}"
        )
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    # Progress bars on a terminal (the tutorial's scripts), none in the launcher's log files.
    progress = hparams.get("noprogressbar", not sys.stderr.isatty())
    brain = ASR(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts={"device": device, "noprogressbar": progress},
        checkpointer=None,  # the federation saves models itself; never auto-recover here
    )
    brain.tokenizer = tokenizer
    brain._reset_counts()
    init_norm_stats(brain.modules, hparams["n_mels"])
    move_modules(brain.modules, brain.device)
    return brain


def prepare_splits(
    hparams: dict[str, Any], data_folder: str | Path, tsvs: dict[str, str | Path | None]
) -> dict[str, Path]:
    """Prepare each given TSV into ``<output_folder>/save/<split>.csv`` (cached by content).

    Needs only the config (``vars(brain.hparams)`` once a Brain exists), so a bad TSV is reported
    before any model is built.
    """
    save_folder = Path(hparams["output_folder"]) / "save"
    csv_files = {}
    for split, tsv in tsvs.items():
        if tsv is not None:
            csv_files[split] = save_folder / f"{split}.csv"
            prepare_tsv(
                tsv, csv_files[split], data_folder,
                language=hparams.get("language", "en"),
                accented_letters=hparams.get("accented_letters", False),
                max_duration=hparams.get("avoid_if_longer_than"),
                min_duration=hparams.get("avoid_if_shorter_than", 0.0),
            )
    return csv_files


def datasets_for(brain: ASR, sources: dict[str, Path | dict]) -> dict[str, DynamicItemDataset]:
    """SpeechBrain datasets from prepared CSV files or already-loaded CSV rows."""
    return make_datasets(vars(brain.hparams), brain.tokenizer, sources)


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

    Each given TSV becomes a dataset under its split name (``train``, ``dev``, ``test`` and the
    names in ``extra_tsvs``). The tokenizer defaults to one trained from ``train_tsv``.
    """
    output_folder = Path(output_folder)
    overrides = {"output_folder": str(output_folder), **(overrides or {})}
    hparams = load_config(config_file, overrides)
    splits = {"train": train_tsv, "dev": valid_tsv, "test": test_tsv, **(extra_tsvs or {})}
    csv_files = prepare_splits(hparams, data_folder, splits)  # the data's errors come first
    brain = build_brain(
        config_file,
        output_folder=output_folder,
        tokenizer_source=tokenizer_source if tokenizer_source is not None else train_tsv,
        device=device,
        overrides=overrides,
        hparams=hparams,
    )
    return brain, datasets_for(brain, csv_files)


def set_threads(num_threads: int) -> None:
    """``--num_threads``: torch's CPU threads for this process (0 keeps torch's default)."""
    if num_threads > 0:
        torch.set_num_threads(num_threads)
