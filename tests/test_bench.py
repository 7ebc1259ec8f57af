"""scripts/bench.py: the report built from a history we write by hand, bad flags, one real run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedspeech.core.row import RoundRow
from fedspeech.tools import bench

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024


def history_row(rnd: int = 1) -> RoundRow:
    return RoundRow.from_dict({
        "round": rnd, "clients": ["0", "1"], "seconds": 20.0,
        "client_fit_seconds_max": 12.0, "client_fit_seconds_mean": 10.0,
        "client_train_seconds_max": 10.0, "client_train_seconds_mean": 8.0,
        "client_valid_seconds_max": 1.5, "client_valid_seconds_mean": 1.0,
        "fit_wait_seconds": 13.0, "aggregate_seconds": 0.5, "server_train_seconds": 3.0,
        "server_eval_seconds": 2.0, "client_eval_seconds_max": 1.0,
        "client_eval_seconds_mean": 0.8, "bytes_sent_per_client": 2 * MB,
        "bytes_received": {"1": 2 * MB, "0": 2 * MB}, "client_peak_rss_mb": {"0": 900.0,
                                                                            "1": 950.0},
        "server_peak_rss_mb": 1200.0, "examples": 160, "initial_eval_seconds": 1.7,
    })


def bare_round(rnd: int = 1) -> dict:
    return {"round": rnd, "client_fit_seconds": [9.0, 9.0], "client_train_seconds": [7.5, 7.5],
            "client_valid_seconds": [1.0, 1.0], "aggregate_seconds": 0.2,
            "server_train_seconds": 2.8, "server_eval_seconds": 1.8,
            "client_eval_seconds": [0.6, 0.6], "examples": 160}


def test_round_costs_derives_transfer_rest_and_throughput():
    costs = bench.round_costs(history_row())
    assert costs["transfer_seconds"] == pytest.approx(1.0)  # 13 s waited, slowest fit 12 s
    assert costs["after_eval_seconds"] == pytest.approx(20.0 - 13.0 - 0.5 - 3.0 - 2.0)
    assert costs["utts_per_second"] == pytest.approx(160 / (8.0 * 2))  # per client process
    assert costs["clients"] == 2 and costs["initial_eval_seconds"] == 1.7


def test_round_costs_of_a_row_without_costs_has_gaps_not_errors():
    costs = bench.round_costs(RoundRow(1))
    assert costs["transfer_seconds"] is None and costs["utts_per_second"] is None
    assert "| 1 |" in bench.phase_table([costs])


def test_overhead_is_round_wall_time_over_sequential_bare_compute():
    compute = 9.0 + 9.0 + 0.2 + 2.8 + 1.8 + 0.6 + 0.6
    assert bench.bare_round_seconds(bare_round()) == pytest.approx(compute)
    rounds = [bench.round_costs(history_row())]
    assert bench.overheads(rounds, [bare_round()]) == [pytest.approx(20.0 / compute)]


def test_report_holds_every_table():
    rounds = [bench.round_costs(history_row(1)), bench.round_costs(history_row(2))]
    rounds[-1]["final_test_seconds"] = 42.0
    bare = {"build_seconds": 1.0, "initial_eval_seconds": 1.5, "final_test_seconds": 40.0,
            "total_seconds": 50.0, "rounds": [bare_round(1), bare_round(2)]}
    result = {
        "settings": {"config_file": "small_cpu.yaml", "overrides": [], "num_clients": 2,
                     "rounds": 2, "local_epochs": 2, "num_threads": 1,
                     "omp_wait_policy": "default", "utterances": {"train_0": 8},
                     "server_training": True, "seed": None},
        "machine": "x86_64, 2 cores", "cores": 2, "load_before": "1.0 1.0 1.0",
        "load_after": "1.0 1.0 1.0",
        "federation": {"wall_seconds": 60.0, "rounds": rounds},
        "bare": bare,
        "overhead": {"per_round": bench.overheads(rounds, bare["rounds"]), "run": 1.2},
    }
    text = bench.report(result)
    assert "final wide-beam test 42.0 s" in text
    assert "initial (round-0) server evaluation 1.7" in text
    assert "| 2 | 2.00 | 2.00 / 2.00 | 1200 | 900 / 950 |" in text  # MiB, clients by name
    assert "whole run 1.20" in text and "bare compute" in text
    assert text.count("\n| 1 |") == 3  # phases, resources, bare


def test_subset_tsv_keeps_the_header_and_n_rows(tmp_path):
    src = ROOT / "temp_dataset" / "dev.tsv"
    assert bench.subset_tsv(src, tmp_path / "a.tsv", 5) == 5
    lines = (tmp_path / "a.tsv").read_text().splitlines()
    assert lines[0].startswith("client_id") and len(lines) == 6
    assert bench.subset_tsv(src, tmp_path / "b.tsv", 0) == 36  # 0: all


def test_process_env_sets_threads_and_wait_policy(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    env = bench.process_env(0, "default")
    assert "OMP_NUM_THREADS" not in env and "OMP_WAIT_POLICY" not in env
    env = bench.process_env(1, "PASSIVE")
    assert env["OMP_NUM_THREADS"] == "1" and env["OMP_WAIT_POLICY"] == "PASSIVE"


@pytest.mark.parametrize("flags, message", [
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--utts", "-1"], "--utts must be at least 0"),
    (["--out", "x.txt"], "expected a .json"),
    (["--num_clients", "4"], "train_3.tsv: no such file"),
])
def test_bad_flags_end_in_one_line(tmp_path, flags, message):
    out = ["--out", str(tmp_path / "b.json")] if "--out" not in flags else []
    proc = subprocess.run([sys.executable, "scripts/bench.py", *out, *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_bench_end_to_end_small_cpu(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "scripts/bench.py", "--num_clients", "1", "--rounds", "1",
         "--local_epochs", "1", "--utts", "6", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    (row,) = result["federation"]["rounds"]
    for key in ("seconds", "client_fit_seconds_max", "client_fit_seconds_mean",
                "client_train_seconds_max", "client_train_seconds_mean",
                "client_valid_seconds_max", "client_valid_seconds_mean", "fit_wait_seconds",
                "aggregate_seconds", "server_train_seconds", "server_eval_seconds",
                "client_eval_seconds_max", "bytes_sent_per_client", "server_peak_rss_mb",
                "examples", "initial_eval_seconds", "transfer_seconds", "utts_per_second"):
        assert row[key] is not None and row[key] >= 0, key
    assert row["bytes_received"]["0"] > 0 and row["client_peak_rss_mb"]["0"] > 0
    assert row["examples"] == 6
    assert result["settings"]["utterances"] == {"train_0": 6, "dev": 6, "test": 6,
                                                "train_add": 6}
    assert result["overhead"]["per_round"][0] > 0 and result["overhead"]["run"] > 0
    assert result["bare"]["rounds"][0]["client_fit_seconds"][0] > 0
    assert out.with_suffix(".md").read_text().startswith("## bench: small_cpu.yaml")
