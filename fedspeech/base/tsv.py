"""Writing Common Voice TSV files: the one writer for every folder of TSVs the project makes
(partitions, speaker folds, imported recordings, the bundled data set)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from fedspeech.base.files import atomic_write

CV_COLUMNS = ("client_id", "path", "sentence")


def write_tsv(path: Path, rows: Sequence[dict[str, str]],
              columns: Sequence[str] = CV_COLUMNS) -> Path:
    """``rows`` as a tab-separated file with a header, atomically; no quoting, so sentences keep
    their quotes as Common Voice writes them; a column a row lacks is left empty."""
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, list(columns), delimiter="\t", quoting=csv.QUOTE_NONE,
                                lineterminator="\n", extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path
