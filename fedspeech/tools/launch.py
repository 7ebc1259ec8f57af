#!/usr/bin/env python3
"""Run a whole federation on this machine: one server process, then N client processes.

Starts ``server.py``, waits until its port accepts connections (no fixed sleep), starts the
clients, and waits for every process. Exits non-zero if any process fails; on Ctrl+C, SIGTERM or a
failure it stops all its children. Logs go to ``<save_path>/logs/``; the server's progress lines
are echoed here.

Client k trains on ``<tr_path>/train_<k>.tsv``. Arguments after ``--server_args`` /
``--client_args`` are passed through to every server / client command line.
:func:`server_command`, :func:`client_command` and :func:`run_federation` are the one place that
writes the federation's command lines and runs its processes (``scripts/bench.py`` uses them too).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from fedspeech.base.paths import ROOT

ECHO = (" server INFO", " WARNING ", "error", "Error", " | ")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    """Return once 127.0.0.1:port accepts connections; fail if the server dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"server did not listen on port {port} within {timeout:.0f}s")


def pump(proc: subprocess.Popen, log_path: Path, echo_prefix: str | None) -> threading.Thread:
    """Copy a child's output to its log file, echoing the interesting lines."""

    def run() -> None:
        with open(log_path, "w", encoding="utf-8") as log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if echo_prefix is not None and any(key in line for key in ECHO):
                    print(f"{echo_prefix}{line}", end="", flush=True)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
        start_new_session=True,  # own process group: we can stop it and its children together
    )


def stop_all(procs: list[subprocess.Popen], grace: float = 5.0) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num_clients", type=int, default=3)
    p.add_argument("--data_path", default="temp_dataset")
    p.add_argument("--tr_path", default="temp_dataset",
                   help="folder holding train_<k>.tsv for client k")
    p.add_argument("--dev_path", default="temp_dataset/dev.tsv")
    p.add_argument("--test_path", default="temp_dataset/test.tsv")
    p.add_argument("--tr_add_path", default="temp_dataset/train_add.tsv",
                   help="server held-out set ('' to turn server-side training off)")
    p.add_argument("--extra_test", action="append", default=[], metavar="NAME=TSV",
                   help="extra server test set (repeatable), e.g. unseen=test_unseen.tsv")
    p.add_argument("--tokenizer_path", default="temp_dataset/train.tsv")
    p.add_argument("--config_file", default="small_cpu.yaml")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--local_epochs", type=int, default=None,
                   help="default: the config's number_of_epochs")
    p.add_argument("--weight_strategy", default="num")
    p.add_argument("--save_path", default="results/demo")
    p.add_argument("--port", type=int, default=0, help="0: pick a free port")
    p.add_argument("--num_threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--pre_train_model_path", default=None, metavar="DIR",
                   help="start from DIR/model.ckpt with DIR/tokenizer.model (from "
                        "scripts/pretrain.py; run first if DIR has no model.ckpt)")
    p.add_argument("--start_timeout", type=float, default=300.0,
                   help="seconds to wait for the server to listen")
    p.add_argument("--server_args", nargs=argparse.REMAINDER, default=[],
                   help="the rest goes to server.py (before any --client_args)")
    return p


def split_client_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split off ``--client_args ...``: those go to every client."""
    if "--client_args" in argv:
        i = argv.index("--client_args")
        return argv[:i], argv[i + 1:]
    return argv, []


def server_command(address: str, save_path: str | Path, *, data_path: str, test_path: str,
                   clients: int, rounds: int, options: Sequence[str] = ()) -> list[str]:
    """A ``server.py`` command line on 127.0.0.1 expecting ``clients`` clients every round."""
    return [sys.executable, "server.py", "--data_path", data_path, "--test_path", test_path,
            "--rounds", str(rounds), "--min_fit_clients", str(clients),
            "--min_available_clients", str(clients), "--server_address", address,
            "--save_path", str(save_path), *options]


def client_command(cid: int | str, address: str, save_path: str | Path, *, data_path: str,
                   tr_path: str | Path, options: Sequence[str] = ()) -> list[str]:
    """A ``client.py`` command line for client ``cid``."""
    return [sys.executable, "client.py", "--cid", str(cid), "--data_path", data_path,
            "--tr_path", str(tr_path), "--server_address", address,
            "--save_path", str(save_path), *options]


def run_federation(server_cmd: list[str], client_cmds: Sequence[list[str]], port: int,
                   logs: Path, env: dict[str, str], *, start_timeout: float = 300.0,
                   echo: bool = True, procs: list[subprocess.Popen] | None = None) -> list[str]:
    """Start the server, wait until it listens, start the clients, wait for all; the names of
    the processes that failed (the others are stopped at the first failure). Output goes to
    ``logs/server.log`` and ``logs/client_<k>.log``; ``echo`` prints the server's progress."""
    logs.mkdir(parents=True, exist_ok=True)
    procs = [] if procs is None else procs
    threads: list[threading.Thread] = []
    try:
        server = start(server_cmd, env)
        procs.append(server)
        threads.append(pump(server, logs / "server.log", "" if echo else None))
        wait_for_port(port, server, start_timeout)
        if echo:
            print(f"launch: server listening on 127.0.0.1:{port}; starting "
                  f"{len(client_cmds)} clients", flush=True)
        for k, cmd in enumerate(client_cmds):
            procs.append(start(cmd, env))
            threads.append(pump(procs[-1], logs / f"client_{k}.log", None))
        return wait_all(procs)
    except BaseException:
        stop_all(procs)
        raise
    finally:
        for thread in threads:
            thread.join(timeout=5)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, client_extra = split_client_args(argv)
    args = build_parser().parse_args(argv)
    save = Path(args.save_path)
    port = args.port or free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.num_threads > 0:  # 0: torch's default (OMP_NUM_THREADS=0 would be invalid)
        env["OMP_NUM_THREADS"] = str(args.num_threads)
    shared: list[str] = []  # arguments for the server and every client
    if args.pre_train_model_path:
        pre = Path(args.pre_train_model_path)
        if not (pre / "model.ckpt").is_file():
            print(f"launch: no {pre / 'model.ckpt'}; running scripts/pretrain.py first", flush=True)
            subprocess.run([sys.executable, "scripts/pretrain.py", "--save_path", str(pre),
                            "--config_file", args.config_file, "--num_threads", "2"],
                           cwd=ROOT, check=True)
        args.tokenizer_path = str(pre / "tokenizer.model")
        shared = ["--pre_train_model_path", str(pre / "model.ckpt")]
    shared = ["--tokenizer_path", args.tokenizer_path, "--config_file", args.config_file,
              "--num_threads", str(args.num_threads), *shared]
    options = ["--weight_strategy", args.weight_strategy, *shared]
    if args.local_epochs is not None:
        options += ["--local_epochs", str(args.local_epochs)]
    if args.tr_add_path:
        options += ["--tr_add_path", args.tr_add_path]
    for item in args.extra_test:
        options += ["--extra_test", item]
    server_cmd = server_command(address, save, data_path=args.data_path,
                                test_path=args.test_path, clients=args.num_clients,
                                rounds=args.rounds, options=[*options, *args.server_args])
    client_cmds = [client_command(k, address, save, data_path=args.data_path,
                                  tr_path=args.tr_path,
                                  options=["--dev_path", args.dev_path, *shared, *client_extra])
                   for k in range(args.num_clients)]
    procs: list[subprocess.Popen] = []

    def on_signal(signum, frame):  # noqa: ARG001
        print(f"\nlaunch: signal {signum}, stopping all processes", file=sys.stderr)
        stop_all(procs)
        sys.exit(130 if signum == signal.SIGINT else 143)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    try:
        failed = run_federation(server_cmd, client_cmds, port, save / "logs", env,
                                start_timeout=args.start_timeout, procs=procs)
    except RuntimeError as err:
        print(f"launch: error: {err}", file=sys.stderr)
        failed = ["server"]
    elapsed = time.monotonic() - started
    if failed:
        print(f"launch: FAILED ({', '.join(failed)}) after {elapsed:.0f}s; logs in "
              f"{save / 'logs'}", file=sys.stderr)
        return 1
    print(f"launch: done in {elapsed:.0f}s; results in {save}", flush=True)
    return 0


def wait_all(procs: list[subprocess.Popen]) -> list[str]:
    """Wait for every process; on the first failure stop the rest. Returns the failed names."""
    names = ["server"] + [f"client {k}" for k in range(len(procs) - 1)]
    pending = dict(zip(names, procs, strict=True))
    while pending:
        for name, proc in list(pending.items()):
            code = proc.poll()
            if code is None:
                continue
            del pending[name]
            if code != 0:
                print(f"launch: {name} exited with status {code}", file=sys.stderr)
                stop_all(list(pending.values()))
                return [name]
        time.sleep(0.5)
    return []


if __name__ == "__main__":
    sys.exit(main())
