"""The Flower App on the Simulation Engine (Ray), with real processes. The Deployment Engine's
run (flower-superlink + flower-supernode over TLS with SuperNode authentication, behind the
proxy, with an unregistered SuperNode refused) is tests/test_security.py's, whose operator run
checks the same outputs (``check_outputs``)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow

# What every round of history.json holds on the CLI path too (tests/test_e2e.py).
ROW_KEYS = {"round", "test_wer", "test_cer", "test_loss", "train_loss", "coefficients", "clients",
            "rejected", "failures", "client_eval_wer", "client_eval_loss", "server_train_delta",
            "seconds", "model_checkpoint", "model_sha256", "seed", "config_sha256",
            "tokenizer_sha256", "versions"}


def flower_run(engine: str, data: Path, save: Path, *extra: str, rounds: int
               ) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "scripts/flower_run.py", engine, "--save_path", str(save),
        "--rounds", str(rounds), "--data_path", str(data), "--dev_path", str(data / "dev.tsv"),
        "--test_path", str(data / "test.tsv"), "--tr_add_path", str(data / "train_add.tsv"),
        "--tokenizer_path", str(data / "train.tsv"), *extra,
    ]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def check_outputs(save: Path, result: subprocess.CompletedProcess, clients: int, rounds: int
                  ) -> list[dict]:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "finished:completed" in result.stdout
    history = json.loads((save / "history.json").read_text())
    assert [row["round"] for row in history] == list(range(1, rounds + 1))
    for row in history:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert math.isfinite(row["test_wer"]) and math.isfinite(row["train_loss"])
        assert len(row["coefficients"]) == clients
        assert sum(row["coefficients"].values()) == pytest.approx(1.0)
        assert row["server_train_delta"] > 0 and row["failures"] == 0
    for name in ("global_model.ckpt", "final_model.ckpt", "best_model.ckpt", "history.png"):
        assert (save / name).is_file(), name
    assert "round | test WER" in (save / "logs" / "run.log").read_text()  # the summary table
    return history


def test_simulation_engine(small_data: Path, tmp_path: Path) -> None:
    """Six virtual clients drawing IID shards of one TSV, three trained per round, weighted by
    their validation WER (the one weighting no other real federation in the suite uses)."""
    save = tmp_path / "sim"
    result = flower_run("simulate", small_data, save, "--num_clients", "6",
                        "--clients_per_round", "3", "--partition_by", "iid",
                        "--weight_strategy", "wer",
                        "--tr_path", str(small_data / "train_0.tsv"), "--cpus", "2", rounds=2)
    history = check_outputs(save, result, clients=3, rounds=2)
    assert all(row["weight_strategy"] == "wer" for row in history)
    # Cross-device sampling: the trained clients are partition ids out of six.
    assert all(set(row["coefficients"]) <= {str(k) for k in range(6)} for row in history)
    summary = json.loads((save / "flower_run.json").read_text())
    assert summary["status"] == "finished:completed" and summary["peak_rss_mb"] > 0
