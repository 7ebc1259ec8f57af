"""End-to-end: real server and client processes over gRPC on 127.0.0.1, real audio, real models."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, free_port, launch

from fedspeech.speech.model import init_model
from weights import get_weights, load_model_file

# one worker runs every user of the session's shared seeded_run (conftest.py)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("seeded_run")]


def check_rounds(result: subprocess.CompletedProcess, save: Path, rounds: int) -> list[dict]:
    """The run ended well and every round of its history is complete and sane."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    history = json.loads((save / "history.json").read_text())
    assert [row["round"] for row in history] == list(range(1, rounds + 1))
    for row in history:
        assert math.isfinite(row["test_wer"]) and math.isfinite(row["test_loss"])
        assert math.isfinite(row["test_cer"]) and math.isfinite(row["train_loss"])
        assert set(row["coefficients"]) == {"0", "1"}
        assert sum(row["coefficients"].values()) == pytest.approx(1.0)
        assert row["server_train_delta"] > 0  # server-side training moved the weights
        assert row["client_eval_clients"] == 2  # federated evaluation ran on both clients
        assert row["seconds"] > 0
    return history


def test_federation_two_rounds(seeded_run) -> None:
    result, save = seeded_run
    history = check_rounds(result, save, rounds=2)
    assert history[0]["coefficients"]["0"] == pytest.approx(0.5)  # equal partitions: FedAvg
    assert "round | test WER" in result.stdout  # the server's summary table


def test_final_model_is_what_the_server_evaluated(seeded_run, small_data: Path,
                                                  tmp_path: Path) -> None:
    """The saved global model loads into a fresh Brain and scores the last round's test WER."""
    result, save = seeded_run
    assert result.returncode == 0, result.stderr[-3000:]
    history = json.loads((save / "history.json").read_text())
    state = torch.load(save / "final_model.ckpt", weights_only=True)
    assert isinstance(state, dict) and "normalize.glob_mean" in state
    brain, datasets = init_model(
        ROOT / "configs" / "small_cpu.yaml", output_folder=tmp_path / "fresh",
        data_folder=small_data, test_tsv=small_data / "test.tsv",
        tokenizer_source=small_data / "train.tsv", device="cpu",
    )
    before = get_weights(brain.modules)
    load_model_file(brain.modules, save / "final_model.ckpt")
    after = get_weights(brain.modules)
    assert any(not (a == b).all() for a, b in zip(before, after, strict=True))
    assert brain.test(datasets["test"])["wer"] == pytest.approx(history[-1]["test_wer"])


def test_launcher_fails_fast_when_a_client_fails(small_data: Path, tmp_path: Path) -> None:
    """A client that cannot start makes the launcher stop the server and exit non-zero."""
    started = time.monotonic()
    result = launch(small_data, tmp_path / "run", "--client_args", "--config_file", "nope.yaml",
                    timeout=200)
    assert result.returncode != 0
    # whichever client failed first named the file; the launcher may stop the other before it logs
    logs = sorted((tmp_path / "run" / "logs").glob("client_*.log"))
    assert any("nope.yaml" in log.read_text() for log in logs), [log.name for log in logs]
    assert time.monotonic() - started < 120


def test_tutorial_scripts_one_client_one_round(small_data: Path, tmp_path: Path) -> None:
    """The tutorial's flow: server.sh in the background, then clients.sh (1 client, 1 round)."""
    port = free_port()
    env = {
        **os.environ, "DATA_PATH": str(small_data), "SAVE_PATH": str(tmp_path / "tut"),
        "SERVER_ADDRESS": f"127.0.0.1:{port}", "NUM_CLIENTS": "1", "ROUNDS": "1",
        "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
    }
    server = subprocess.Popen(["bash", "scripts/server.sh"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        clients = subprocess.run(["bash", "scripts/clients.sh"], cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=300)
        out, _ = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
    assert clients.returncode == 0, clients.stdout[-2000:] + clients.stderr[-2000:]
    assert server.returncode == 0, out[-3000:]
    history = json.loads((tmp_path / "tut" / "history.json").read_text())
    assert len(history) == 1 and math.isfinite(history[0]["test_wer"])
    assert (tmp_path / "tut" / "final_model.ckpt").is_file()
