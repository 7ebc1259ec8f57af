"""The one SentencePiece tokenizer a federation shares.

Averaging output layers is meaningful only if token *i* means the same thing on every client, so
every process must load the same model file. It is either given (a ``.model`` file, or a folder
holding exactly one) or trained deterministically from transcripts (a Common Voice TSV or a
SpeechBrain CSV); the same transcripts and settings give the same file. Clients report the file's
SHA-256 so the server can refuse a client whose tokenizer differs.
"""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import sentencepiece as spm

from common_voice_prepare import DataPrepError, read_tsv
from fedspeech.base.errors import UserError
from fedspeech.base.files import atomic_write, file_sha256
from fedspeech.speech.text import normalize_sentence


class TokenizerMismatch(UserError):
    """A process's tokenizer file differs from the one the federation shares."""


class Tokenizer:
    """A loaded SentencePiece model plus the file it came from and that file's hash."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.processor = spm.SentencePieceProcessor()
        try:
            self.processor.load(str(self.path))
        except Exception as err:
            raise DataPrepError(f"{self.path}: not a SentencePiece model ({err})") from err
        self.sha256 = file_sha256(self.path)

    def encode_as_ids(self, text: str) -> list[int]:
        return self.processor.encode_as_ids(text)

    def decode_ids(self, ids: list[int]) -> str:
        """Text of ``ids``; ids beyond the vocabulary (unused output units) are dropped."""
        size = self.processor.get_piece_size()
        return self.processor.decode_ids([int(i) for i in ids if 0 <= int(i) < size])

    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def unknown_words(self, lines: list[str]) -> list[str]:
        """Words of ``lines`` this tokenizer can only write as ``<unk>`` (id 0): a model trained
        on them would learn to say nothing for them."""
        words = sorted({w for line in lines for w in line.split()})
        return [w for w in words if 0 in self.encode_as_ids(w)]


def read_transcripts(
    source: str | Path, language: str = "en", accented_letters: bool = False
) -> list[str]:
    """Normalised transcripts of a Common Voice TSV (``sentence``) or SpeechBrain CSV (``wrd``)."""
    source = Path(source)
    if source.suffix.lower() == ".csv":
        with open(source, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "wrd" not in reader.fieldnames:
                raise DataPrepError(f"{source}: CSV has no 'wrd' column")
            lines = [row["wrd"] for row in reader]
    else:
        rows = read_tsv(source, required=("sentence",))
        lines = [normalize_sentence(r["sentence"], language, accented_letters) for r in rows]
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise DataPrepError(f"{source}: no transcripts to train a tokenizer from")
    return lines


def _find_model(source: Path) -> Path | None:
    if source.is_dir():
        models = sorted(source.glob("*.model"))
        if len(models) != 1:
            raise DataPrepError(
                f"{source}: expected exactly one .model file in the folder, found {len(models)}"
            )
        return models[0]
    return source if source.suffix == ".model" else None


def load_tokenizer(
    source: str | Path,
    save_dir: str | Path,
    *,
    vocab_size: int,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    language: str = "en",
    accented_letters: bool = False,
) -> Tokenizer:
    """Load ``source`` if it is a model, else train one from its transcripts into ``save_dir``.

    Index 0 is ``<unk>``, which the configs also use as CTC blank and as bos/eos, as in
    SpeechBrain's recipes. A trained model is reused when the same transcripts and settings ask
    for it again.
    """
    source = Path(source)
    if not source.exists():
        raise DataPrepError(f"{source}: tokenizer file not found")
    model = _find_model(source)
    if model is not None:
        return Tokenizer(model)

    lines = read_transcripts(source, language, accented_letters)
    text = "\n".join(lines) + "\n"
    settings = f"{vocab_size}|{model_type}|{character_coverage}"
    key = hashlib.sha256((settings + "\n" + text).encode("utf-8")).hexdigest()[:16]
    save_dir = Path(save_dir)
    target = save_dir / f"{model_type}_{vocab_size}_{key}.model"
    if target.exists():
        return Tokenizer(target)

    # Training from an iterator into memory keeps temporary paths out of the model file, so the
    # same transcripts give byte-identical models (and hashes) in every process.
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buffer,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    with atomic_write(target) as f:
        f.write(buffer.getvalue())
    return Tokenizer(target)
