"""The federation really learns: a shortened demo (2 clients, 2 rounds) lowers the test WER."""

from __future__ import annotations

import json

import pytest
from conftest import launch, make_small_data

pytestmark = pytest.mark.slow


def test_wer_falls_between_rounds(tmp_path):
    data = make_small_data(tmp_path / "data", per_client=60, clients=2)
    save = tmp_path / "run"
    result = launch(
        data, save, "--local_epochs", "4",
        # smaller batches: more optimiser steps from the same few utterances
        "--server_args", "--override", "batch_size=4",
        "--client_args", "--override", "batch_size=4",
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    history = json.loads((save / "history.json").read_text())
    print([(r["round"], r["test_wer"], r["test_cer"], r["test_loss"]) for r in history])
    # Characters come before words: in two short rounds the CER falls clearly, while the WER
    # may still be near 100 % (every word needs all its letters right). Measured with these
    # settings: CER 91.7 % after round 1, 78.3 % after round 2 (100 utterances per client and 5
    # epochs: 92.5 -> 36.6 %, in 1.6x the time; 50 and 3: no fall at all).
    # (With the libraries of 2026-12-01 the WER went 100 -> 101.8 while the CER fell 93.7 ->
    # 71.3: near 100 % a few inserted words push the WER above it, so it gets a small margin.)
    first, last = history[0]["test_cer"], history[-1]["test_cer"]
    assert last < first - 5.0, (first, last)
    assert history[-1]["test_wer"] <= history[0]["test_wer"] + 5.0
    assert history[-1]["test_loss"] < history[0]["test_loss"]
