"""Leave-one-speaker-out folds of a Common Voice folder, and centralised training to match.

A fold holds one speaker out entirely (the test of speaker independence). Each remaining speaker's
takes are split, seeded, into four disjoint parts: ``train`` (that speaker's client), ``dev``
(client validation), ``test`` (new takes of a training speaker) and ``server`` (the server's
held-out set for server-side training). Splitting per speaker keeps every training speaker in
every part, so "new takes" never means "new speaker".

:func:`train_centralised` runs the federation's schedule on pooled data: every round
``local_epochs`` epochs on the clients' pooled training takes, then one server-side epoch on the
server's held-out takes at ``server_lr`` - the same passes over the same utterances, with no
averaging.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedspeech.base.errors import UserError

SPLITS = ("train", "dev", "test", "server")


@dataclass
class Fold:
    """One held-out speaker; the other speakers' rows per split (train also per speaker)."""

    held_out: str
    unseen: list[dict[str, str]]
    clients: list[list[dict[str, str]]]  # one list of training rows per training speaker
    parts: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # pooled, per split


def speakers_of(rows: Sequence[dict[str, str]], key: str = "client_id") -> dict[str, list[dict]]:
    """Rows grouped by speaker, speakers in sorted order (so fold numbers are stable)."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row.get(key, "") or "unknown", []).append(row)
    return dict(sorted(groups.items()))


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
    speakers = speakers_of(rows)
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


def write_tsv(path: Path, rows: Sequence[dict[str, str]]) -> Path:
    """Rows as a Common Voice TSV (client_id, path, sentence)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n")
        writer.writerow(["client_id", "path", "sentence"])
        for row in rows:
            writer.writerow([row.get("client_id", ""), row["path"], row["sentence"]])
    return path


def write_fold(fold: Fold, folder: Path) -> dict[str, Path]:
    """The fold's TSVs: ``train_<k>.tsv`` per client, pooled splits, ``unseen.tsv``."""
    files = {f"train_{k}": write_tsv(folder / f"train_{k}.tsv", rows)
             for k, rows in enumerate(fold.clients)}
    for split, rows in fold.parts.items():
        files[split] = write_tsv(folder / f"{split}.tsv", rows)
    files["unseen"] = write_tsv(folder / "unseen.tsv", fold.unseen)
    return files


def train_centralised(
    config_file: Path, files: dict[str, Path], data_path: Path, out: Path, *,
    rounds: int, local_epochs: int, server_training: bool, overrides: dict[str, Any],
    pretrained: Path | None = None,
) -> dict[str, Any]:
    """The federation's schedule on pooled data (see the module docstring); final test WERs.

    ``pretrained``: a ``scripts/pretrain.py`` folder to start from, as the federation does.
    """
    from fedspeech.speech.model import init_model
    from weights import load_model_file

    brain, data = init_model(
        config_file, output_folder=out, data_folder=data_path, train_tsv=files["train"],
        test_tsv=files["test"], extra_tsvs={"unseen": files["unseen"], "server": files["server"]},
        tokenizer_source=pretrained / "tokenizer.model" if pretrained else files["train"],
        overrides=overrides,
    )
    if pretrained:
        load_model_file(brain.modules, pretrained / "model.ckpt", str(brain.device))
    server_lr = float(getattr(brain.hparams, "server_lr", brain.hparams.lr))
    samples = 0
    for rnd in range(1, rounds + 1):
        n, loss, _ = brain.train_epochs(data["train"], None, epochs=local_epochs,
                                        first_epoch=(rnd - 1) * local_epochs + 1)
        samples += n
        if server_training:
            n, _, _ = brain.train_epochs(data["server"], None, epochs=1,
                                         first_epoch=rnd * local_epochs, lr=server_lr)
            samples += n
        print(f"centralised round {rnd}: train loss {loss:.4f}", flush=True)
    test = brain.test(data["test"], final=True)
    unseen = brain.test(data["unseen"], final=True)
    return {"test_wer": test["wer"], "unseen_wer": unseen["wer"], "test_cer": test["cer"],
            "unseen_cer": unseen["cer"], "train_samples": samples}
