#!/usr/bin/env python3
"""Centralised pre-training: train the federation's model on a separate split before round 1.

Writes ``<save_path>/model.ckpt`` (what ``--pre_train_model_path`` loads at round 1: a plain
tensor dict, normalisation statistics included) and ``<save_path>/tokenizer.model``, the tokenizer
every server and client of the federation must then share (``--tokenizer_path
<save_path>/tokenizer.model``), plus ``<save_path>/pretrain.json`` with the per-epoch losses and
validation WERs.

    python scripts/pretrain.py --epochs 15 --save_path results/pretrain

``--tr_path`` may list several TSVs of ``--data_path``, comma-separated (all nine voices of
``temp_dataset``, say, before a federation on real speech: README "Real speech"); they are merged
into ``<save_path>/work/pretrain.tsv``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common_voice_prepare import read_tsv
from fedspeech.base.checks import check_at_least, check_data_flags, check_file
from fedspeech.base.cli import ArgumentParser, run_cli
from fedspeech.base.errors import UsageError
from fedspeech.base.files import atomic_write
from fedspeech.base.paths import ROOT
from fedspeech.base.tsv import write_tsv
from fedspeech.records.history import write_json_atomic
from fedspeech.speech.config import parse_overrides
from fedspeech.speech.model import init_model, set_threads
from fedspeech.tools.flags import add_data_flags, add_model_flags
from weights import model_state_dict, save_checkpoint


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    add_data_flags(p, tokenizer_default="--tr_path", data_path=str(ROOT / "temp_dataset"),
                   save_path="results/pretrain")
    p.add_argument("--tr_path", default=str(ROOT / "temp_dataset" / "pretrain.tsv"),
                   help="pre-training split(s), comma-separated (not any client's data)")
    p.add_argument("--dev_path", default=str(ROOT / "temp_dataset" / "dev.tsv"),
                   help="validation split, for the WER printed after every epoch")
    p.add_argument("--epochs", type=int, default=15)
    add_model_flags(p)
    return p


def training_tsv(tr_path: str, work: Path) -> str:
    """The one TSV to train on: ``tr_path`` itself, or its comma-separated TSVs merged."""
    tsvs = [t for t in tr_path.split(",") if t] or [tr_path]
    for tsv in tsvs:  # before the tokenizer is trained from it
        if not Path(tsv).is_file():
            raise UsageError(f"--tr_path {tsv}: no such TSV file")
    if len(tsvs) == 1:
        return tsvs[0]
    rows = [row for tsv in tsvs for row in read_tsv(tsv)]
    return str(write_tsv(work / "pretrain.tsv", rows))


def run(args: argparse.Namespace) -> Path:
    check_at_least(args.epochs, 1, "--epochs")
    check_data_flags(args.data_path, args.tokenizer_path, args.save_path)
    check_file(args.dev_path, "--dev_path")
    out = Path(args.save_path)
    train_tsv = training_tsv(args.tr_path, out / "work")
    set_threads(args.num_threads)
    brain, datasets = init_model(
        Path(args.config_path) / args.config_file,
        output_folder=out / "work",
        data_folder=args.data_path,
        train_tsv=train_tsv,
        valid_tsv=args.dev_path,
        tokenizer_source=args.tokenizer_path,
        device=args.device,
        overrides=parse_overrides(args.override, args.seed),
    )
    log = []
    for epoch in range(1, args.epochs + 1):
        started = time.monotonic()
        samples, loss, wer = brain.train_epochs(
            datasets["train"], datasets["dev"], epochs=1, first_epoch=epoch
        )
        log.append({"epoch": epoch, "train_loss": loss, "valid_wer": wer,
                    "seconds": round(time.monotonic() - started, 2)})
        print(f"pretrain epoch {epoch}: {samples} samples, train loss {loss:.4f}, "
              f"valid WER {wer:.2f}", flush=True)
    with atomic_write(out / "tokenizer.model") as f:
        f.write(brain.tokenizer.path.read_bytes())
    save_checkpoint(model_state_dict(brain.modules), out / "model.ckpt")
    write_json_atomic({"config": args.config_file, "tr_path": args.tr_path,
                       "tokenizer_sha256": brain.tokenizer.sha256, "epochs": log},
                      out / "pretrain.json")
    print(f"pretrain: wrote {out / 'model.ckpt'} and {out / 'tokenizer.model'}")
    return out / "model.ckpt"


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
