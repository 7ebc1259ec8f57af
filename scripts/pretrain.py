#!/usr/bin/env python3
"""Centralised pre-training: train the federation's model on a separate split before round 1.

Writes ``<out>/model.ckpt`` (what ``--pre_train_model_path`` loads at round 1: a plain tensor dict,
normalisation statistics included) and ``<out>/tokenizer.model``, the tokenizer every server and
client of the federation must then share (``--tokenizer_path <out>/tokenizer.model``), plus
``<out>/pretrain.json`` with the per-epoch losses and validation WERs.

    python scripts/pretrain.py --epochs 15 --out results/pretrain
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from brain import init_model  # noqa: E402
from cli import (  # noqa: E402
    ArgumentParser,
    UsageError,
    add_model_flags,
    model_setup,
    run_main,
    setup_logging,
)
from history import write_json_atomic  # noqa: E402
from weights import model_state_dict, save_checkpoint  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_path", default=str(ROOT / "temp_dataset"),
                   help="folder holding clips/")
    p.add_argument("--train_tsv", default=str(ROOT / "temp_dataset" / "pretrain.tsv"),
                   help="pre-training split (not any client's data)")
    p.add_argument("--dev_tsv", default=str(ROOT / "temp_dataset" / "dev.tsv"),
                   help="validation split, for the WER printed after every epoch")
    p.add_argument("--tokenizer_path", default=None,
                   help="tokenizer source (.model or transcripts); default: --train_tsv")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--out", default="results/pretrain", help="output folder")
    add_model_flags(p)
    return p


def run(args: argparse.Namespace) -> Path:
    if args.epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {args.epochs}")
    out = Path(args.out)
    config_file, model_options = model_setup(args)
    brain, datasets = init_model(
        config_file,
        output_folder=out / "work",
        data_folder=args.data_path,
        train_tsv=args.train_tsv,
        valid_tsv=args.dev_tsv,
        tokenizer_source=args.tokenizer_path,
        **model_options,
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
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(brain.tokenizer.path, out / "tokenizer.model")
    save_checkpoint(model_state_dict(brain.modules), out / "model.ckpt")
    write_json_atomic({"config": args.config_file, "train_tsv": args.train_tsv,
                       "tokenizer_sha256": brain.tokenizer.sha256, "epochs": log},
                      out / "pretrain.json")
    print(f"pretrain: wrote {out / 'model.ckpt'} and {out / 'tokenizer.model'}")
    return out / "model.ckpt"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.debug)
    return run_main(run, args)


if __name__ == "__main__":
    sys.exit(main())
