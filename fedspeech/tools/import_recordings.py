#!/usr/bin/env python3
"""Bring a folder of labelled recordings into the Common Voice layout the project reads.

Writes ``<out>/clips/`` (the audio, copied: data preparation refuses links out of ``clips/``),
``<out>/all.tsv`` and
one ``<out>/speaker_<name>.tsv`` per speaker (columns ``client_id``, ``path``, ``sentence``; the
``client_id`` is ``speaker_<name>``, the unit of ``partition.py --by speaker`` and of
``speaker_eval.py``). Labels come from one of:

- ``--pattern fsdd``: the Free Spoken Digit Dataset's names, ``{digit}_{speaker}_{take}.wav``;
  the transcript is the digit as a word (``zero`` ... ``nine``).
- ``--transcripts FILE``: lines ``filename<TAB>transcript[<TAB>speaker]`` (the general case;
  ``--speaker`` names the speaker of lines without one).

    python scripts/import_recordings.py fsdd/recordings data/fsdd --pattern fsdd
    python scripts/import_recordings.py my_wavs data/mine --transcripts my_wavs/labels.tsv
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

from fedspeech.base.cli import ArgumentParser, run_cli
from fedspeech.base.errors import UsageError, UserError
from fedspeech.base.tsv import write_tsv

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
AUDIO = (".wav", ".flac", ".mp3", ".ogg")
FSDD_NAME = re.compile(r"^(\d)_([A-Za-z0-9-]+)_(\d+)\.wav$")

Label = tuple[str, str, str]  # (file name, transcript, speaker)


def fsdd_labels(names: Iterable[str]) -> list[Label]:
    """Labels from FSDD file names; other files are skipped (with a count on stderr)."""
    labels, skipped = [], 0
    for name in names:
        match = FSDD_NAME.match(name)
        if match is None:
            skipped += 1
            continue
        labels.append((name, DIGITS[int(match.group(1))], match.group(2)))
    if skipped:
        print(f"import_recordings: skipped {skipped} file(s) not named "
              "{digit}_{speaker}_{take}.wav", file=sys.stderr)
    return labels


def transcript_labels(path: Path, default_speaker: str | None) -> list[Label]:
    """Labels from ``filename<TAB>transcript[<TAB>speaker]`` lines (blank and # lines skipped)."""
    labels = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        cells = [c.strip() for c in line.split("\t")]
        if len(cells) < 2 or not cells[0] or not cells[1]:
            raise UserError(f"{path}:{number}: expected filename<TAB>transcript[<TAB>speaker]")
        speaker = cells[2] if len(cells) > 2 and cells[2] else default_speaker
        if not speaker:
            raise UserError(f"{path}:{number}: no speaker column: add one or pass --speaker")
        labels.append((cells[0], cells[1], speaker))
    if not labels:
        raise UserError(f"{path}: no labelled recordings")
    return labels


def safe_speaker(name: str) -> str:
    """A speaker name usable in file names (``speaker_<name>.tsv``)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "unknown"


def import_recordings(src: Path, out: Path, labels: list[Label]) -> dict:
    """Copy the labelled files into ``out/clips`` and write the TSVs; counts."""
    clips = out / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    rows, seen = [], set()
    for name, transcript, speaker in labels:
        source = src / name
        if not source.is_file():
            raise UserError(f"{source}: listed but not found")
        target_name = name.replace("/", "__")  # nested files stay distinct in one clips/
        if target_name in seen:
            raise UserError(f"{name}: listed twice")
        seen.add(target_name)
        target = clips / target_name
        shutil.copyfile(source, target)
        rows.append({"client_id": f"speaker_{safe_speaker(speaker)}", "path": target_name,
                     "sentence": transcript})
    write_tsv(out / "all.tsv", rows)
    speakers: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        speakers.setdefault(row["client_id"], []).append(row)
    for client_id, speaker_rows in speakers.items():
        write_tsv(out / f"{client_id}.tsv", speaker_rows)
    return {"recordings": len(rows), "speakers": {k: len(v) for k, v in sorted(speakers.items())}}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path, help="folder of recordings")
    p.add_argument("out", type=Path, help="output Common Voice folder")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--pattern", choices=("fsdd",), help="labels from the file names")
    source.add_argument("--transcripts", type=Path, metavar="FILE",
                        help="filename<TAB>transcript[<TAB>speaker] lines")
    p.add_argument("--speaker", default=None, help="speaker of transcript lines without one")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def run(args: argparse.Namespace) -> dict:
    if not args.src.is_dir():
        raise UsageError(f"{args.src}: no such folder of recordings")
    if args.out.resolve() == args.src.resolve():
        raise UsageError("out must differ from src")
    if args.pattern == "fsdd":
        names = sorted(p.name for p in args.src.iterdir() if p.suffix.lower() in AUDIO)
        labels = fsdd_labels(names)
    else:
        if not args.transcripts.is_file():
            raise UsageError(f"{args.transcripts}: no such transcript file")
        labels = transcript_labels(args.transcripts, args.speaker)
    if not labels:
        raise UsageError(f"{args.src}: no recordings matched")
    counts = import_recordings(args.src, args.out, labels)
    print(f"import_recordings: {counts['recordings']} recordings of "
          f"{len(counts['speakers'])} speaker(s) into {args.out}: "
          + ", ".join(f"{k} {v}" for k, v in counts["speakers"].items()))
    return counts


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
