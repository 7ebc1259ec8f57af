"""Turn Common Voice TSV manifests into the CSV files SpeechBrain's data pipeline reads.

Each output CSV has the columns ``ID,duration,wav,spk_id,wrd``. A sidecar
``<csv>.meta.json`` records a fingerprint of the inputs so an unchanged split is not
prepared twice. Bad inputs raise :class:`DataPrepError` with a one-line message.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import io
import json
import logging
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from fedspeech.base import cli
from fedspeech.base.errors import UserError
from fedspeech.base.files import atomic_write, file_sha256
from fedspeech.speech.text import normalize_sentence

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: clips outside <data>/clips are refused
CSV_HEADER = ["ID", "duration", "wav", "spk_id", "wrd"]
_SHOWN = 5  # names shown per kind of skipped row
_PROGRESS_ROWS = 10_000  # a progress bar on a terminal for TSVs at least this long

class DataPrepError(UserError):
    """Bad input data; ``str(err)`` is a one-line message naming the offending file."""


def _fingerprint(tsv_bytes: bytes, options: dict) -> str:
    digest = hashlib.sha256(tsv_bytes)
    digest.update(json.dumps({"version": FORMAT_VERSION, **options}, sort_keys=True).encode())
    return digest.hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` whole (CSV rows keep their own line endings)."""
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def _already_prepared(csv_path: Path, meta_path: Path, fingerprint: str) -> int | None:
    """Row count of a CSV prepared from the same inputs, else None."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        csv_hash = file_sha256(csv_path)
    except (OSError, ValueError):
        return None
    if meta.get("fingerprint") != fingerprint or meta.get("csv_sha256") != csv_hash:
        return None
    return int(meta.get("rows", 0))


def _read_tsv(
    tsv: Path, raw: bytes, required: Sequence[str] = ("path", "sentence")
) -> tuple[list[str], list[list[str]]]:
    """Header and data rows; quotes are literal text, blank lines are skipped."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataPrepError(f"{tsv}: not UTF-8 text (byte {err.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    rows = [row for row in reader if any(cell.strip() for cell in row)]
    if not rows:
        raise DataPrepError(f"{tsv}: empty TSV file (no header)")
    header = [name.strip() for name in rows[0]]
    for column in required:
        if column not in header:
            present = ", ".join(header)
            raise DataPrepError(f"{tsv}: header has no '{column}' column (columns: {present})")
    if len(rows) == 1:
        raise DataPrepError(f"{tsv}: TSV has a header but no data rows")
    return header, rows[1:]


def read_tsv(
    tsv_file: str | Path, required: Sequence[str] = ("path", "sentence")
) -> list[dict[str, str]]:
    """Rows of a Common Voice TSV as dicts keyed by header name (columns in any order)."""
    tsv = Path(tsv_file)
    if not tsv.is_file():
        raise DataPrepError(f"{tsv}: no such TSV file")
    header, records = _read_tsv(tsv, tsv.read_bytes(), required)
    return _as_dicts(header, records)


def _as_dicts(header: list[str], records: list[list[str]]) -> list[dict[str, str]]:
    """Rows keyed by column name; short rows are padded with empty cells."""
    return [dict(zip(header, r + [""] * (len(header) - len(r)), strict=False)) for r in records]


class Skip(NamedTuple):
    """Why a TSV row gave no CSV row, and the name to show for it in warnings and errors."""

    reason: str
    name: str


NO_PATH, OUTSIDE, MISSING = "no path", "outside", "missing"
UNREADABLE, NO_WORDS = "unreadable", "no words"
TOO_LONG, TOO_SHORT = "too long", "too short"


def _resolve_audio(clips: Path, name: str) -> Path | str:
    """The clip's real path, which must lie inside ``clips`` (resolved), else OUTSIDE or MISSING.

    Symlinks are followed before the check, so neither ``..``, nor an absolute path, nor a link
    can make a TSV read files elsewhere; ``clips`` itself may be a link (it is resolved first).
    A name without an extension may also mean ``<name>.mp3``.
    """
    candidates = [name] if Path(name).suffix else [name, name + ".mp3"]
    for candidate in candidates:
        try:
            path = (clips / candidate).resolve()  # an absolute name replaces clips/
            if not path.is_relative_to(clips):
                return OUTSIDE
            if path.is_file():
                return path
        except (OSError, ValueError, RuntimeError):  # too long, NUL byte, symlink loop
            return MISSING
    return MISSING


def _duration(path: Path) -> float | None:
    """Seconds of audio, or None if the file is empty or unreadable."""
    from speechbrain.dataio.dataio import read_audio_info

    if path.stat().st_size == 0:
        return None
    try:
        info = read_audio_info(str(path))
    except Exception:  # soundfile/codec errors vary by format
        return None
    if not info.num_frames or not info.sample_rate:
        return None
    return info.num_frames / info.sample_rate


@dataclass(frozen=True)
class RowOptions:
    """What :func:`process_line` needs besides the row (one object, so rows map in parallel)."""

    data_folder: Path  # resolved
    clips: Path  # <data_folder>/clips, resolved: no clip may lie outside it
    language: str = "en"
    accented_letters: bool = False
    max_duration: float | None = None
    min_duration: float = 0.0


def process_line(numbered_row: tuple[int, dict[str, str]], opts: RowOptions) -> list[str] | Skip:
    """One TSV row -> a CSV row (its ID is the clip's stem, not yet unique), or why it is skipped.

    Independent of every other row, so :func:`prepare_tsv` can read durations in parallel.
    """
    lineno, row = numbered_row
    name = row["path"].strip()
    if not name:
        return Skip(NO_PATH, f"row {lineno}")
    audio = _resolve_audio(opts.clips, name)
    if isinstance(audio, str):
        return Skip(audio, name)
    words = normalize_sentence(row["sentence"], opts.language, opts.accented_letters)
    if not words:
        return Skip(NO_WORDS, Path(name).stem)
    seconds = _duration(audio)
    if seconds is None:
        return Skip(UNREADABLE, name)
    if opts.max_duration is not None and seconds > opts.max_duration:
        return Skip(TOO_LONG, name)
    if seconds < opts.min_duration:
        return Skip(TOO_SHORT, name)
    speaker = row.get("client_id", "").strip() or "unknown"
    return [Path(name).stem, f"{seconds:.3f}", str(audio), speaker, words]


def _map_rows(
    rows: list[tuple[int, dict[str, str]]], opts: RowOptions
) -> Iterator[list[str] | Skip]:
    """:func:`process_line` over ``rows`` in TSV order, reading several clips at once.

    Threads, not SpeechBrain's default process pool: the work is file I/O and libsndfile
    calls that release the GIL, a thread pool starts in microseconds (small TSVs pay nothing),
    and forking a process that holds torch and gRPC threads (the client) can deadlock.
    ``SB_NUM_PROC`` caps the threads, as it caps SpeechBrain's processes.
    """
    from speechbrain.utils.parallel import get_available_cpu_count, parallel_map

    show_bar = len(rows) >= _PROGRESS_ROWS and sys.stderr.isatty()
    with ThreadPoolExecutor(max_workers=get_available_cpu_count()) as pool:
        yield from parallel_map(
            functools.partial(process_line, opts=opts), rows, executor=pool,
            progress_bar=show_bar, progress_bar_kwargs={"desc": "reading clips"},
        )


def _collect(
    results: Iterable[list[str] | Skip],
) -> tuple[list[list[str]], Counter[str], dict[str, list[str]]]:
    """CSV rows with unique IDs, the count of skipped rows per reason, and their first names.

    IDs are made unique in row order (``a``, ``a_2``, ...) so one TSV always gives the same IDs.
    """
    out: list[list[str]] = []
    counts: Counter[str] = Counter()
    names: dict[str, list[str]] = {}
    ids: set[str] = set()
    for result in results:
        if isinstance(result, Skip):
            counts[result.reason] += 1
            shown = names.setdefault(result.reason, [])
            if len(shown) < _SHOWN:
                shown.append(result.name)
            continue
        stem, n = result[0], 1
        while result[0] in ids:
            n += 1
            result[0] = f"{stem}_{n}"
        ids.add(result[0])
        out.append(result)
    return out, counts, names


def _why_none(
    total: int, counts: Counter[str], names: dict[str, list[str]], opts: RowOptions
) -> str:
    """Why no row was usable, for the one-line error: each reason's count and first name."""
    if counts[MISSING] == total:
        return f"all {total} clips missing under {opts.data_folder / 'clips'}"
    texts = {
        MISSING: "clips missing", NO_PATH: "rows without a path",
        OUTSIDE: f"clip paths outside {opts.data_folder / 'clips'}",
        UNREADABLE: "audio empty/unreadable", NO_WORDS: "empty sentences",
        TOO_LONG: f"longer than {opts.max_duration}s",
        TOO_SHORT: f"shorter than {opts.min_duration}s",
    }
    return "; ".join(f"{counts[reason]} {text}, e.g. {names[reason][0]}"
                     for reason, text in texts.items() if counts[reason])


def _warn(tsv: Path, counts: Counter[str], names: dict[str, list[str]], reason: str,
          what: str) -> None:
    if counts[reason]:
        shown = ", ".join(names[reason]) + (", ..." if counts[reason] > _SHOWN else "")
        logger.warning("%s: %d %s, skipped: %s", tsv, counts[reason], what, shown)


def prepare_tsv(
    tsv_file: str | Path,
    csv_file: str | Path,
    data_folder: str | Path,
    *,
    language: str = "en",
    accented_letters: bool = False,
    max_duration: float | None = None,
    min_duration: float | None = 0.0,
) -> int:
    """Write ``csv_file`` from one Common Voice TSV; return the number of rows written."""
    tsv, csv_path = Path(tsv_file), Path(csv_file)
    data = Path(data_folder).resolve()
    min_duration = min_duration or 0.0
    if not tsv.is_file():
        raise DataPrepError(f"{tsv}: no such TSV file")
    try:
        raw = tsv.read_bytes()
    except OSError as err:
        raise DataPrepError(f"{tsv}: cannot read TSV file ({err.strerror})") from None
    options = {
        "language": language,
        "accented_letters": bool(accented_letters),
        "max_duration": max_duration,
        "min_duration": min_duration,
        "data_folder": str(data),
    }
    fingerprint = _fingerprint(raw, options)
    meta_path = csv_path.with_name(csv_path.name + ".meta.json")
    rows_done = _already_prepared(csv_path, meta_path, fingerprint)
    if rows_done is not None:
        logger.info("%s: already prepared from %s (%d rows)", csv_path, tsv, rows_done)
        return rows_done

    header, records = _read_tsv(tsv, raw)
    opts = RowOptions(data, (data / "clips").resolve(), language, bool(accented_letters),
                      max_duration, min_duration)
    rows = list(enumerate(_as_dicts(header, records), start=2))
    out, counts, names = _collect(_map_rows(rows, opts))
    _warn(tsv, counts, names, NO_PATH, "rows without a path")
    _warn(tsv, counts, names, OUTSIDE, f"clip paths outside {data / 'clips'}")
    _warn(tsv, counts, names, MISSING, f"audio files missing under {data / 'clips'}")
    _warn(tsv, counts, names, UNREADABLE, "audio files empty or unreadable")
    _warn(tsv, counts, names, NO_WORDS, "sentences with nothing speakable")
    if counts[TOO_LONG] or counts[TOO_SHORT]:
        logger.info(
            "%s: dropped %d clips longer than %ss and %d shorter than %ss",
            tsv, counts[TOO_LONG], max_duration, counts[TOO_SHORT], min_duration,
        )
    if not out:
        raise DataPrepError(f"{tsv}: no usable rows out of {len(rows)} "
                            f"({_why_none(len(rows), counts, names, opts)})")

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    writer.writerows(out)
    csv_text = buffer.getvalue()
    meta_path.unlink(missing_ok=True)  # never pair an old sidecar with a new CSV
    _atomic_write(csv_path, csv_text)
    meta = {
        "fingerprint": fingerprint,
        "csv_sha256": hashlib.sha256(csv_text.encode("utf-8")).hexdigest(),
        "rows": len(out),
        "tsv": str(tsv.resolve()),
        **options,
    }
    _atomic_write(meta_path, json.dumps(meta, indent=2) + "\n")
    logger.info("%s: wrote %d rows from %s", csv_path, len(out), tsv)
    return len(out)


def prepare_common_voice(
    data_folder: str | Path,
    save_folder: str | Path,
    train_tsv_file: str | Path | None = None,
    dev_tsv_file: str | Path | None = None,
    test_tsv_file: str | Path | None = None,
    accented_letters: bool = False,
    language: str = "en",
    max_duration: float | None = None,
    min_duration: float | None = 0.0,
) -> dict[str, Path]:
    """Prepare ``<save_folder>/{train,dev,test}.csv`` for the TSVs given (None skips a split)."""
    written: dict[str, Path] = {}
    splits = (("train", train_tsv_file), ("dev", dev_tsv_file), ("test", test_tsv_file))
    for split, tsv in splits:
        if tsv is None:
            continue
        csv_path = Path(save_folder) / f"{split}.csv"
        prepare_tsv(
            tsv, csv_path, data_folder, language=language, accented_letters=accented_letters,
            max_duration=max_duration, min_duration=min_duration,
        )
        written[split] = csv_path
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", required=True, help="folder holding clips/")
    parser.add_argument("--tsv", required=True, help="Common Voice TSV file")
    parser.add_argument("--csv", required=True, help="output CSV file")
    parser.add_argument("--language", default="en")
    parser.add_argument("--accented_letters", action="store_true")
    parser.add_argument("--max_duration", type=float, default=None)
    parser.add_argument("--min_duration", type=float, default=0.0)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def run(args: argparse.Namespace) -> int:
    """Command line: prepare one TSV into one CSV."""
    rows = prepare_tsv(
        args.tsv, args.csv, args.data_path, language=args.language,
        accented_letters=args.accented_letters, max_duration=args.max_duration,
        min_duration=args.min_duration,
    )
    print(f"{rows} rows written to {args.csv}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_cli(build_parser(), run, list(argv) if argv is not None else None)


if __name__ == "__main__":
    sys.exit(main())
