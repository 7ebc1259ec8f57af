"""Same seed, same numbers: a federation run twice gives bit-identical models and metrics.

Updates are summed in a fixed order (by client name), every process seeds its random generators
from the config's seed, and each process trains with one thread, so the only differences left
between two runs are wall-clock times. The first run is the session's shared ``seeded_run``
(conftest.py); this test launches the second with the same flags.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SEEDED, launch

# one worker runs every user of the session's shared seeded_run (conftest.py)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("seeded_run")]

TIMES = ("seconds", "fit_seconds", "train_seconds", "valid_seconds", "eval_seconds",
         "peak_rss_mb", "versions")


def history_of(result, save: Path) -> list[dict]:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((save / "history.json").read_text())


def without_times(row: dict) -> dict:
    return {k: v for k, v in row.items() if not any(t in k for t in TIMES)}


def test_same_seed_gives_identical_history(seeded_run, small_data: Path, tmp_path: Path) -> None:
    first = history_of(*seeded_run)
    second = history_of(launch(small_data, tmp_path / "b", *SEEDED), tmp_path / "b")
    assert [without_times(r) for r in first] == [without_times(r) for r in second]
    assert first[-1]["model_sha256"] == second[-1]["model_sha256"]  # bit-identical models
    assert first[-1]["seed"] == 7
