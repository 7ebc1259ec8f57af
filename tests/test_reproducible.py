"""Same seed, same numbers: a federation run twice gives bit-identical models and metrics.

Updates are summed in a fixed order (by client name), every process seeds its random generators
from the config's seed, and each process trains with one thread, so the only differences left
between two runs are wall-clock times.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow

TIMES = ("seconds", "fit_seconds", "train_seconds", "valid_seconds", "eval_seconds",
         "peak_rss_mb", "versions")


def run_federation(data: Path, save: Path) -> list[dict]:
    cmd = [
        sys.executable, "scripts/launch.py", "--num_clients", "2", "--data_path", str(data),
        "--tr_path", str(data), "--dev_path", str(data / "dev.tsv"),
        "--test_path", str(data / "test.tsv"), "--tr_add_path", str(data / "train_add.tsv"),
        "--tokenizer_path", str(data / "train.tsv"), "--rounds", "2", "--local_epochs", "1",
        "--save_path", str(save), "--server_args", "--seed", "7",
    ]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((save / "history.json").read_text())


def without_times(row: dict) -> dict:
    return {k: v for k, v in row.items() if not any(t in k for t in TIMES)}


def test_same_seed_gives_identical_history(small_data: Path, tmp_path: Path) -> None:
    first = run_federation(small_data, tmp_path / "a")
    second = run_federation(small_data, tmp_path / "b")
    assert [without_times(r) for r in first] == [without_times(r) for r in second]
    assert first[-1]["model_sha256"] == second[-1]["model_sha256"]  # bit-identical models
    assert first[-1]["seed"] == 7
