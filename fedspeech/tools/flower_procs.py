"""Flower's own programs as processes: their environment, starting and stopping them, and the
``flwr`` CLI that submits a run and follows it (shared by both engines of ``flower_run.py``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fedspeech.base.paths import ROOT

BIN = Path(sys.executable).parent  # flwr, flower-superlink, flower-supernode of this venv


def environment(home: Path) -> dict[str, str]:
    """One ``FLWR_HOME`` per run; no telemetry, update checks or installs at run time."""
    return {
        **os.environ, "FLWR_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
        "RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES": "500000000", "RAY_DEDUP_LOGS": "0",
    }


class Processes:
    """Every process started here, each in its own session; all stopped by :meth:`stop_all`."""

    def __init__(self, logs: Path, env: dict[str, str]):
        self.logs, self.env, self.procs = logs, env, []

    def start(self, name: str, cmd: list[str], cwd: Path = ROOT,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        out = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - closed by the OS
        proc = subprocess.Popen(cmd, cwd=cwd, env=env or self.env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in self.procs:
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while any(p.poll() is None for p in self.procs) and time.monotonic() < deadline:
                time.sleep(0.2)


def flwr(env: dict[str, str], *argv: str, check: bool = True, cwd: Path = ROOT
         ) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / "flwr"), *argv], cwd=cwd, env=env, text=True,
                            capture_output=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"flwr {argv[0]} failed: {(result.stdout + result.stderr)[-2000:]}")
    return result


def submit(env: dict[str, str], connection: str, extra: list[str], config: list[str]) -> int:
    """``flwr run`` of this repository's App; returns the run id."""
    out = flwr(env, "run", ".", connection, "--format", "json", *extra, "-c", " ".join(config))
    reply = json.loads(out.stdout[out.stdout.index("{"):])
    if not reply.get("success"):
        raise RuntimeError(f"flwr run refused the app: {reply.get('error-message')}")
    print(f"flower_run: run {reply['run-id']} submitted to {connection}", flush=True)
    return int(reply["run-id"])


def wait_for_run(env: dict[str, str], connection: str, run_id: int, logs: Path,
                 timeout: float) -> str:
    """Follow the run's log until it finishes; returns its final status (``finished:...``)."""
    with open(logs / "run.log", "w") as log:
        follower = subprocess.Popen([str(BIN / "flwr"), "log", str(run_id), connection,
                                     "--stream"], cwd=ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        deadline, status = time.monotonic() + timeout, "unknown"
        try:
            while time.monotonic() < deadline:
                listing = flwr(env, "ls", connection, "--run-id", str(run_id), "--format",
                               "json", check=False)
                try:
                    status = json.loads(listing.stdout)["runs"][0]["status"]
                except (ValueError, KeyError, IndexError):
                    pass
                if status.startswith("finished:"):
                    break
                time.sleep(2)
        finally:
            time.sleep(2)
            if follower.poll() is None:
                os.killpg(follower.pid, signal.SIGKILL)
    full = flwr(env, "log", str(run_id), connection, "--show", check=False)
    (logs / "run.log").write_text(full.stdout + full.stderr)
    return status


def submit_and_wait(env: dict[str, str], connection: str, extra: list[str], config: list[str],
                    logs: Path, timeout: float) -> str:
    """``flwr run``, then follow the log until the run finishes; returns its final status."""
    return wait_for_run(env, connection, submit(env, connection, extra, config), logs, timeout)
