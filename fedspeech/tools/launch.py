#!/usr/bin/env python3
"""Run a whole federation on this machine: one server process, then N client processes.

Starts ``server.py``, waits until its port accepts connections (no fixed sleep), starts the
clients, and waits for every process. Exits non-zero if any process fails; on Ctrl+C, SIGTERM or a
failure it stops all its children. Logs go to ``<save_path>/logs/``; the server's progress lines
are echoed here.

Client k trains on ``<tr_path>/train_<k>.tsv``. Arguments after ``--server_args`` /
``--client_args`` are passed through to every server / client command line (the hyphenated
``--server-args`` / ``--client-args`` are old names, kept for one release).
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
    p.add_argument("--num_threads", "--threads", dest="num_threads", type=int, default=1,
                   help="torch threads per process (old name --threads, kept for one release)")
    p.add_argument("--pre_train_model_path", "--pretrained", dest="pre_train_model_path",
                   default=None, metavar="DIR",
                   help="start from DIR/model.ckpt with DIR/tokenizer.model (from "
                        "scripts/pretrain.py; run first if DIR has no model.ckpt; old name "
                        "--pretrained, kept for one release)")
    p.add_argument("--start_timeout", type=float, default=300.0,
                   help="seconds to wait for the server to listen")
    p.add_argument("--server_args", "--server-args", dest="server_args",
                   nargs=argparse.REMAINDER, default=[],
                   help="the rest goes to server.py (before any --client_args)")
    return p


def split_client_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split off ``--client_args ...`` (or the old ``--client-args``): those go to every client."""
    for flag in ("--client_args", "--client-args"):
        if flag in argv:
            i = argv.index(flag)
            return argv[:i], argv[i + 1:]
    return argv, []


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, client_extra = split_client_args(argv)
    args = build_parser().parse_args(argv)
    save = Path(args.save_path)
    (save / "logs").mkdir(parents=True, exist_ok=True)
    port = args.port or free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.num_threads > 0:  # 0: torch's default (OMP_NUM_THREADS=0 would be invalid)
        env["OMP_NUM_THREADS"] = str(args.num_threads)
    py = sys.executable
    shared: list[str] = []  # arguments for the server and every client
    if args.pre_train_model_path:
        pre = Path(args.pre_train_model_path)
        if not (pre / "model.ckpt").is_file():
            print(f"launch: no {pre / 'model.ckpt'}; running scripts/pretrain.py first", flush=True)
            subprocess.run([py, "scripts/pretrain.py", "--save_path", str(pre), "--config_file",
                            args.config_file, "--num_threads", "2"], cwd=ROOT, check=True)
        args.tokenizer_path = str(pre / "tokenizer.model")
        shared = ["--pre_train_model_path", str(pre / "model.ckpt")]
    server_cmd = [
        py, "server.py", "--data_path", args.data_path, "--test_path", args.test_path,
        "--tokenizer_path", args.tokenizer_path, "--config_file", args.config_file,
        "--rounds", str(args.rounds),
        "--min_fit_clients", str(args.num_clients),
        "--min_available_clients", str(args.num_clients),
        "--weight_strategy", args.weight_strategy, "--server_address", address,
        "--save_path", str(save), "--num_threads", str(args.num_threads),
    ]
    if args.local_epochs is not None:
        server_cmd += ["--local_epochs", str(args.local_epochs)]
    if args.tr_add_path:
        server_cmd += ["--tr_add_path", args.tr_add_path]
    for item in args.extra_test:
        server_cmd += ["--extra_test", item]
    server_cmd += shared + args.server_args

    procs: list[subprocess.Popen] = []
    threads: list[threading.Thread] = []

    def on_signal(signum, frame):  # noqa: ARG001
        print(f"\nlaunch: signal {signum}, stopping all processes", file=sys.stderr)
        stop_all(procs)
        sys.exit(130 if signum == signal.SIGINT else 143)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    try:
        server = start(server_cmd, env)
        procs.append(server)
        threads.append(pump(server, save / "logs" / "server.log", ""))
        wait_for_port(port, server, args.start_timeout)
        print(f"launch: server listening on {address}; starting {args.num_clients} clients",
              flush=True)
        for k in range(args.num_clients):
            cmd = [
                py, "client.py", "--cid", str(k), "--data_path", args.data_path,
                "--tr_path", args.tr_path, "--dev_path", args.dev_path,
                "--tokenizer_path", args.tokenizer_path, "--config_file", args.config_file,
                "--server_address", address, "--save_path", str(save),
                "--num_threads", str(args.num_threads), *shared, *client_extra,
            ]
            client = start(cmd, env)
            procs.append(client)
            threads.append(pump(client, save / "logs" / f"client_{k}.log", None))
        failed = wait_all(procs)
    except RuntimeError as err:
        print(f"launch: error: {err}", file=sys.stderr)
        stop_all(procs)
        failed = ["server"]
    for thread in threads:
        thread.join(timeout=5)
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
