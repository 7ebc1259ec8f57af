#!/usr/bin/env python3
"""Split a Common Voice TSV into per-client files ``train_0.tsv ... train_{N-1}.tsv``.

``--by speaker`` gives every speaker (``client_id``) to exactly one client, balancing the number of
utterances (non-IID, like real federations); ``--by iid`` deals utterances out at random. Both are
seeded. ``--bad_client K`` corrupts client K's copy, to test robust weighting:
``--corruption shuffle`` permutes its transcripts, ``--corruption noise`` drowns its audio in white
noise (the new clips are written to ``<out_dir>/clips/``: run that client with ``--data_path
<out_dir>``, since clip paths never leave a data folder's ``clips/``).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

from common_voice_prepare import read_tsv
from fedspeech.base.checks import check_at_least
from fedspeech.base.cli import ArgumentParser, run_cli
from fedspeech.base.errors import UsageError
from fedspeech.base.tsv import write_tsv
from fedspeech.core.settings import train_tsv_for
from fedspeech.speech.partitioning import split_by_speaker, split_iid


def shuffle_transcripts(rows: list[dict[str, str]], seed: int) -> list[dict[str, str]]:
    """Same clips, transcripts permuted among them (a client with wrong labels)."""
    sentences = [r["sentence"] for r in rows]
    random.Random(seed).shuffle(sentences)
    return [{**r, "sentence": s} for r, s in zip(rows, sentences, strict=True)]


def add_noise(
    rows: list[dict[str, str]], data_folder: Path, out_dir: Path, snr_db: float, seed: int
) -> list[dict[str, str]]:
    """Copies of the clips with white noise at ``snr_db`` in ``<out_dir>/clips``; rows name them."""
    import soundfile as sf

    from fedspeech.speech.audio import load_audio

    rng = np.random.default_rng(seed)
    noisy_dir = out_dir / "clips"
    noisy_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for row in rows:
        source = data_folder / "clips" / row["path"]
        audio = load_audio(str(source), 16000).numpy()
        power = float(np.mean(audio**2)) or 1e-8
        noise = rng.normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), size=audio.shape)
        target = noisy_dir / (Path(row["path"]).stem + ".wav")
        sf.write(target, np.clip(audio + noise, -1, 1).astype(np.float32), 16000)
        out.append({**row, "path": target.name})
    return out


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tsv", type=Path, required=True, help="Common Voice TSV to split")
    p.add_argument("--out_dir", type=Path, required=True, help="where train_<k>.tsv go")
    p.add_argument("--num_clients", type=int, required=True)
    p.add_argument("--by", choices=("speaker", "iid"), default="speaker")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--bad_client", type=int, default=None, help="index of a client to corrupt")
    p.add_argument("--corruption", choices=("shuffle", "noise"), default="shuffle")
    p.add_argument("--snr_db", type=float, default=-5.0, help="noise level for --corruption noise")
    p.add_argument("--data_path", type=Path, default=None,
                   help="folder holding clips/ (for --corruption noise; default: the TSV's folder)")
    return p


def run(args: argparse.Namespace) -> None:
    check_at_least(args.num_clients, 1, "--num_clients")
    if args.bad_client is not None and not 0 <= args.bad_client < args.num_clients:
        raise UsageError(f"--bad_client {args.bad_client} is not a client index")
    rows = read_tsv(args.tsv)
    header = list(rows[0].keys())
    split = split_by_speaker if args.by == "speaker" else split_iid
    parts = split(rows, args.num_clients, args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for k, part in enumerate(parts):
        note = ""
        if k == args.bad_client:
            if args.corruption == "shuffle":
                part = shuffle_transcripts(part, args.seed)
            else:
                data = args.data_path or args.tsv.parent
                part = add_noise(part, data, args.out_dir, args.snr_db, args.seed)
            note = f" (corrupted: {args.corruption})"
        write_tsv(train_tsv_for(args.out_dir, str(k)), part, header)
        speakers = len({r.get("client_id", "") for r in part})
        print(f"train_{k}.tsv: {len(part)} utterances, {speakers} speakers{note}")


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
