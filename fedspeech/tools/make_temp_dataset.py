#!/usr/bin/env python3
"""Synthesise ``temp_dataset/``: a small connected-digit corpus in Common Voice layout.

Every speaker is an espeak-ng voice with its own accent, variant, speed and pitch, and a
stable Common-Voice-style ``client_id``. Audio is written as 48 kHz mono MP3 (like Common
Voice) into ``clips/``; the splits are Common Voice TSVs:

- ``train.tsv``      the federated clients' data (split per client by ``scripts/partition.py``)
- ``dev.tsv``        client validation data (same voices as train)
- ``test.tsv``       server test set: the training voices plus one voice nobody trains on
- ``test_unseen.tsv`` the rows of ``test.tsv`` spoken by that unseen voice
- ``train_add.tsv``  the server's held-out set for server-side training after aggregation
- ``pretrain.tsv``   centralised pre-training data, from voices no client has

The same ``--seed`` gives the same texts, voices and file names. Needs ``espeak-ng`` on PATH.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as taf

from fedspeech.base.tsv import write_tsv

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TSV_COLUMNS = [
    "client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes",
    "down_votes", "age", "gender", "accents", "variant", "locale", "segment",
]
SAMPLE_RATE = 48000


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker."""

    name: str
    espeak_voice: str
    speed: int
    pitch: int
    gender: str
    accent: str
    group: str  # "client", "pretrain" or "unseen"


VOICES = [
    Voice("us_m1", "en-us+m1", 165, 45, "male_masculine", "United States English", "client"),
    Voice("gb_f2", "en-gb+f2", 155, 60, "female_feminine", "England English", "client"),
    Voice("scot_m3", "en-gb-scotland+m3", 170, 35, "male_masculine", "Scottish English", "client"),
    Voice("carib_f4", "en-029+f4", 160, 65, "female_feminine", "Caribbean English", "client"),
    Voice("nyc_m5", "en-us-nyc+m5", 175, 40, "male_masculine", "United States English", "client"),
    Voice("rp_f1", "en-gb-x-rp+f1", 150, 55, "female_feminine", "England English", "client"),
    Voice("lancs_m2", "en-gb-x-gbclan+m2", 160, 50, "male_masculine", "England English",
          "pretrain"),
    Voice("us_f3", "en-us+f3", 170, 62, "female_feminine", "United States English", "pretrain"),
    Voice("wmids_m4", "en-gb-x-gbcwmd+m4", 162, 42, "male_masculine", "England English", "unseen"),
]

# split -> (voice group, utterances per voice)
SPLITS = {
    "train": ("client", 100),
    "dev": ("client", 6),
    "test": ("client", 8),
    "train_add": ("client", 6),
    "pretrain": ("pretrain", 80),
}
UNSEEN_TEST_UTTERANCES = 24


def client_id(voice: Voice, seed: int) -> str:
    """A stable 128-hex-digit id, shaped like Common Voice's hashed client ids."""
    return hashlib.sha512(f"{seed}:{voice.name}".encode()).hexdigest()


def random_sentence(rng: random.Random) -> str:
    """Two to five digit words, written like a Common Voice prompt."""
    words = [rng.choice(DIGITS) for _ in range(rng.randint(2, 5))]
    sep = rng.choice([" ", ", "])
    text = sep.join(words)
    return text[0].upper() + text[1:] + rng.choice([".", ".", "!", "?", ""])


def synthesise(voice: Voice, text: str, rng: random.Random, workdir: Path) -> np.ndarray:
    """Speak ``text`` with ``voice`` (jittered speed/pitch) and return 48 kHz float32 audio."""
    wav = workdir / "utt.wav"
    cmd = [
        "espeak-ng", "-v", voice.espeak_voice,
        "-s", str(voice.speed + rng.randint(-12, 12)),
        "-p", str(max(0, min(99, voice.pitch + rng.randint(-6, 6)))),
        "-w", str(wav), text,
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    audio, rate = sf.read(wav, dtype="float32")
    audio = taf.resample(torch.from_numpy(audio), rate, SAMPLE_RATE).numpy()
    peak = float(np.abs(audio).max()) or 1.0
    return (audio / peak * rng.uniform(0.4, 0.9)).astype(np.float32)


def build(out_dir: Path, seed: int, scale: float = 1.0) -> dict[str, int]:
    """Write clips and TSVs under ``out_dir``; returns the number of rows per split."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("error: espeak-ng not found on PATH (apt-get install espeak-ng)")
    clips = out_dir / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for split, (group, per_voice) in SPLITS.items():
            rows = []
            plan = [(v, max(1, round(per_voice * scale))) for v in VOICES if v.group == group]
            if split == "test":
                plan += [(v, max(1, round(UNSEEN_TEST_UTTERANCES * scale)))
                         for v in VOICES if v.group == "unseen"]
            for voice, n in plan:
                for i in range(n):
                    text = random_sentence(rng)
                    name = f"synth_{voice.name}_{split}_{i:04d}.mp3"
                    audio = synthesise(voice, text.replace(",", ""), rng, Path(tmp))
                    sf.write(clips / name, audio, SAMPLE_RATE, format="MP3",
                             compression_level=0.99, bitrate_mode="CONSTANT")
                    rows.append({
                        "client_id": client_id(voice, seed), "path": name,
                        "sentence_id": hashlib.sha1(text.encode()).hexdigest()[:16],
                        "sentence": text, "sentence_domain": "", "up_votes": "2",
                        "down_votes": "0", "age": "", "gender": voice.gender,
                        "accents": voice.accent, "variant": "", "locale": "en",
                        "segment": "",
                    })
            rng.shuffle(rows)
            write_tsv(out_dir / f"{split}.tsv", rows, TSV_COLUMNS)
            counts[split] = len(rows)
            if split == "test":  # the voices no client or pre-training run ever hears
                unseen = {client_id(v, seed) for v in VOICES if v.group == "unseen"}
                unseen_rows = [r for r in rows if r["client_id"] in unseen]
                write_tsv(out_dir / "test_unseen.tsv", unseen_rows, TSV_COLUMNS)
                counts["test_unseen"] = len(unseen_rows)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("temp_dataset"), help="output folder")
    parser.add_argument("--seed", type=int, default=1234, help="random seed")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every split's size by this (e.g. 0.2 for a quick set)")
    args = parser.parse_args(argv)
    counts = build(args.out, args.seed, args.scale)
    for split, n in counts.items():
        print(f"{split}: {n} utterances")
    return 0


if __name__ == "__main__":
    sys.exit(main())
