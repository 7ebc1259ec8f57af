"""Shared fixtures: a small Common Voice-style data folder and helpers for real processes.

Tests import from here as ``from conftest import ...`` (pytest puts ``tests/`` on ``sys.path``);
``tests.conftest`` would load a second copy of this module.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedspeech.tools.launch import free_port as free_port
from fedspeech.tools.launch import wait_for_port

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def subset_tsv(src: Path, dst: Path, n: int, skip: int = 0) -> None:
    """The header and rows skip..skip+n of a TSV."""
    lines = src.read_text(encoding="utf-8").splitlines()
    dst.write_text("\n".join([lines[0], *lines[1 + skip: 1 + skip + n]]) + "\n", encoding="utf-8")


def make_small_data(folder: Path, per_client: int = 40, clients: int = 2) -> Path:
    """A few dozen utterances of temp_dataset in Common Voice layout (clips/ is a symlink).

    ``train_<k>.tsv`` for k < clients (each from a different pair of speakers while k < 3),
    ``dev.tsv``, ``test.tsv``, ``train_add.tsv``, and ``train.tsv`` (all transcripts, for the
    shared tokenizer).
    """
    src = ROOT / "temp_dataset"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "clips").symlink_to(src / "clips")
    for k in range(clients):
        subset_tsv(src / f"train_{k % 3}.tsv", folder / f"train_{k}.tsv", per_client,
                   skip=(k // 3) * per_client)
    subset_tsv(src / "dev.tsv", folder / "dev.tsv", 12)
    subset_tsv(src / "test.tsv", folder / "test.tsv", 16)
    subset_tsv(src / "train_add.tsv", folder / "train_add.tsv", 12)
    (folder / "train.tsv").write_text((src / "train.tsv").read_text(encoding="utf-8"))
    return folder


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    return make_small_data(tmp_path_factory.mktemp("data"))


def launch(data: Path, save: Path, *extra: str, rounds: int = 2, timeout: float = 400
           ) -> subprocess.CompletedProcess:
    """``scripts/launch.py`` with two clients on the small data set (the demo's flow)."""
    cmd = [
        PYTHON, "scripts/launch.py", "--num_clients", "2", "--data_path", str(data),
        "--tr_path", str(data), "--dev_path", str(data / "dev.tsv"),
        "--test_path", str(data / "test.tsv"), "--tr_add_path", str(data / "train_add.tsv"),
        "--tokenizer_path", str(data / "train.tsv"), "--rounds", str(rounds),
        "--save_path", str(save), *extra,
    ]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


SEEDED = ("--local_epochs", "1", "--server_args", "--seed", "7")  # the shared run's flags


@pytest.fixture(scope="session")
def seeded_run(small_data: Path, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """One 2-round FedAvg federation through the launcher (seed 7), shared by the end-to-end
    checks (test_e2e.py) and as the first of the two runs of test_reproducible.py."""
    save = tmp_path_factory.mktemp("seeded") / "run"
    return launch(small_data, save, *SEEDED), save


def server_cmd(data: Path, save: Path, port: int, *extra: str, clients: int = 2,
               rounds: int = 2) -> list[str]:
    """A server.py command line on the small data set."""
    return [
        PYTHON, "server.py", "--data_path", str(data), "--test_path", str(data / "test.tsv"),
        "--tr_add_path", str(data / "train_add.tsv"), "--tokenizer_path", str(data / "train.tsv"),
        "--min_fit_clients", str(clients), "--min_available_clients", str(clients),
        "--rounds", str(rounds), "--server_address", f"127.0.0.1:{port}",
        "--save_path", str(save), "--num_threads", "1", *extra,
    ]


def client_cmd(data: Path, save: Path, port: int, cid: int | str, *extra: str) -> list[str]:
    """A client.py command line on the small data set."""
    return [
        PYTHON, "client.py", "--cid", str(cid), "--data_path", str(data), "--tr_path", str(data),
        "--dev_path", str(data / "dev.tsv"), "--tokenizer_path", str(data / "train.tsv"),
        "--server_address", f"127.0.0.1:{port}", "--save_path", str(save),
        "--num_threads", "1", *extra,
    ]


def spawn(cmd: list[str], log: Path) -> subprocess.Popen:
    """Start a process in its own group, output to ``log``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    out = open(log, "w")  # noqa: SIM115 - closed with the process by the OS
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Block until the server listens on ``port`` (the launcher's own wait, same semantics)."""
    wait_for_port(port, proc, timeout)


def wait_for_text(path: Path, text: str, timeout: float, proc: subprocess.Popen | None = None):
    """Block until ``text`` appears in the file at ``path``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before '{text}' in {path}")
        time.sleep(0.3)
    raise AssertionError(f"'{text}' not in {path} after {timeout}s")


def kill(*procs: subprocess.Popen) -> None:
    """SIGKILL whole process groups (tests' cleanup)."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_cli(cmd: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


# The tests that take longest (each a minute or more of real federations) start first, so the two
# pytest-xdist workers of scripts/run_tests.sh end together instead of one waiting for the other.
LONGEST_FIRST = ("test_security.py", "test_flower_engines.py", "test_privacy.py",
                 "test_faults.py", "test_learning.py", "test_trust.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.nodeid.split("::")[0].endswith(LONGEST_FIRST) is False)
