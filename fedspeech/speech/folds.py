"""Leave-one-speaker-out folds of a Common Voice folder, and centralised training to match.

A fold holds one speaker out entirely (the test of speaker independence). Each remaining speaker's
takes are split, seeded, into four disjoint parts: ``train`` (that speaker's client), ``dev``
(client validation), ``test`` (new takes of a training speaker) and ``server`` (the server's
held-out set for server-side training). Splitting per speaker keeps every training speaker in
every part, so "new takes" never means "new speaker".

The centralised counterpart of a fold's federation is :mod:`fedspeech.roles.centralised`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedspeech.base.errors import UserError
from fedspeech.base.tsv import write_tsv
from fedspeech.core.settings import train_tsv_for
from fedspeech.speech.partitioning import by_speaker

SPLITS = ("train", "dev", "test", "server")


@dataclass
class Fold:
    """One held-out speaker; the other speakers' rows per split (train also per speaker)."""

    held_out: str
    unseen: list[dict[str, str]]
    clients: list[list[dict[str, str]]]  # one list of training rows per training speaker
    parts: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # pooled, per split


def split_takes(
    rows: Sequence[dict[str, str]], seed: int, fractions: dict[str, float]
) -> dict[str, list[dict[str, str]]]:
    """One speaker's rows into train / dev / test / server by ``fractions`` (train: the rest)."""
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    out: dict[str, list[dict[str, str]]] = {}
    start = 0
    for name in ("dev", "test", "server"):
        n = round(fractions.get(name, 0.0) * len(shuffled))
        out[name] = shuffled[start:start + n]
        start += n
    out["train"] = shuffled[start:]
    if not out["train"]:
        raise UserError(f"{len(rows)} takes leave none for training: lower the split fractions")
    return out


def make_folds(
    rows: Sequence[dict[str, str]], *, seed: int, fractions: dict[str, float],
    unseen_max: int | None = None,
) -> list[Fold]:
    """Every leave-one-speaker-out fold (in sorted speaker order)."""
    speakers = dict(sorted(by_speaker(rows).items()))  # sorted: stable fold numbers
    if len(speakers) < 2:
        raise UserError(f"{len(speakers)} speaker(s): leave-one-speaker-out needs at least 2")
    folds = []
    for held_out in speakers:
        unseen = list(speakers[held_out])
        if unseen_max and len(unseen) > unseen_max:
            unseen = random.Random(f"{seed}:{held_out}").sample(unseen, unseen_max)
        fold = Fold(held_out, unseen, [], {name: [] for name in SPLITS})
        for name, takes in speakers.items():
            if name == held_out:
                continue
            # The split of a speaker does not depend on the fold: its new takes stay new.
            parts = split_takes(takes, hash_seed(seed, name), fractions)
            fold.clients.append(parts["train"])
            for split in SPLITS:
                fold.parts[split].extend(parts[split])
        folds.append(fold)
    return folds


def hash_seed(seed: int, name: str) -> int:
    """A per-speaker seed that is stable across processes (``hash()`` of str is not)."""
    return seed * 1_000_003 + sum((i + 1) * ord(c) for i, c in enumerate(name))


def write_fold(fold: Fold, folder: Path) -> dict[str, Path]:
    """The fold's TSVs: ``train_<k>.tsv`` per client, pooled splits, ``unseen.tsv``."""
    files = {f"train_{k}": write_tsv(train_tsv_for(folder, str(k)), rows)
             for k, rows in enumerate(fold.clients)}
    for split, rows in fold.parts.items():
        files[split] = write_tsv(folder / f"{split}.tsv", rows)
    files["unseen"] = write_tsv(folder / "unseen.tsv", fold.unseen)
    return files
