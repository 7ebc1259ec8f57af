#!/usr/bin/env python3
"""Run the Flower App on Flower's own engines, on this machine, and wait for it.

    flower_run.py simulate --num_clients 100 --clients_per_round 10 --rounds 3
    flower_run.py deploy --num_supernodes 2 --tls --auth --rounds 2

``simulate``: the Simulation Engine (virtual clients in Ray actors; ``flwr run`` starts a local
simulation SuperLink). ``deploy``: the Deployment Engine, a ``flower-superlink`` and
``--num_supernodes`` ``flower-supernode`` processes on 127.0.0.1, each SuperNode with its own
node config (``cid``, ``data-path``, ``tr-path``, ``dev-path``), as real sites would have; with
``--tls`` (certificates from ``scripts/make_certs.sh``) and ``--auth`` (EC keys registered with
``flwr supernode register``; one extra, unregistered SuperNode must be refused).

Submits with ``flwr run``, follows the run's log, waits for ``finished:*``, leaves the outputs
(``history.json``, models, ``logs/``) under ``--save_path`` and stops every process it started,
also on Ctrl+C or failure. Exit status 0 only when the run finished ``completed``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from fedspeech.base.checks import check_at_least
from fedspeech.base.cli import ArgumentParser, run_cli
from fedspeech.base.errors import UsageError
from fedspeech.base.paths import ROOT
from fedspeech.tools.flower_keys import write_ec_keypair
from fedspeech.tools.launch import free_port, wait_for_port

BIN = Path(sys.executable).parent  # flwr, flower-superlink, flower-supernode of this venv


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="engine", required=True)
    sim = sub.add_parser("simulate", help="Simulation Engine (Ray)")
    sim.add_argument("--num_clients", type=int, default=20, help="virtual clients")
    sim.add_argument("--cpus", type=int, default=os.cpu_count() or 1,
                     help="CPUs Ray may use (one ClientApp per CPU at a time)")
    sim.add_argument("--partition_by", choices=("speaker", "iid"), default="speaker")
    sim.add_argument("--samples_per_client", type=int, default=20,
                     help="utterances per client when clients outnumber speakers/utterances")
    dep = sub.add_parser("deploy", help="Deployment Engine (SuperLink + SuperNodes)")
    dep.add_argument("--num_supernodes", type=int, default=2)
    dep.add_argument("--tls", action="store_true", help="TLS with a private CA")
    dep.add_argument("--auth", action="store_true", help="SuperNode authentication (needs --tls)")
    for q in (sim, dep):
        q.add_argument("--save_path", default="results/app")
        q.add_argument("--rounds", type=int, default=3)
        q.add_argument("--local_epochs", type=int, default=1)
        q.add_argument("--clients_per_round", type=int, default=0,
                       help="clients trained each round (0: all connected)")
        q.add_argument("--weight_strategy", choices=("num", "loss", "wer"), default="num")
        q.add_argument("--config_file", default="small_cpu.yaml")
        q.add_argument("--data_path", default="temp_dataset")
        q.add_argument("--tr_path", default=None,
                       help="simulate: the corpus TSV (default temp_dataset/train.tsv); "
                            "deploy: a folder of train_<cid>.tsv (default temp_dataset)")
        q.add_argument("--dev_path", default="temp_dataset/dev.tsv")
        q.add_argument("--test_path", default="temp_dataset/test.tsv")
        q.add_argument("--tr_add_path", default="temp_dataset/train_add.tsv")
        q.add_argument("--tokenizer_path", default="temp_dataset/train.tsv")
        q.add_argument("--extra_test", default="", help="NAME=TSV[,NAME=TSV]")
        q.add_argument("--seed", type=int, default=1234)
        q.add_argument("--timeout", type=float, default=3600, help="seconds for the whole run")
        q.add_argument("--run_config", action="append", default=[], metavar="KEY=VALUE",
                       help="any other run config value (TOML), e.g. fraction-evaluate=0")
    return p


def absolute(path: str) -> str:
    return str((ROOT / path).resolve()) if path else ""


def toml_value(value: object) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value).lower() \
        if isinstance(value, bool) else str(value)


def run_config(args: argparse.Namespace, tr_path: str) -> list[str]:
    values = {
        "rounds": args.rounds, "local-epochs": args.local_epochs,
        "weight-strategy": args.weight_strategy, "config-file": args.config_file,
        "seed": args.seed, "data-path": absolute(args.data_path), "tr-path": absolute(tr_path),
        "dev-path": absolute(args.dev_path), "test-path": absolute(args.test_path),
        "tr-add-path": absolute(args.tr_add_path),
        "tokenizer-path": absolute(args.tokenizer_path),
        "extra-test": ",".join(f"{n}={absolute(p)}" for n, _, p in
                               (i.partition("=") for i in args.extra_test.split(",") if i)),
        "save-path": str(Path(args.save_path).resolve()),
        "clients-per-round": args.clients_per_round,
    }
    if args.engine == "simulate":
        values.update({"partition-by": args.partition_by,
                       "samples-per-client": args.samples_per_client,
                       "min-available-clients": args.num_clients})
    else:
        values["min-available-clients"] = args.num_supernodes
    items = [f"{k}={toml_value(v)}" for k, v in values.items()]
    return items + list(args.run_config)


class Processes:
    """Every process started here, each in its own session; all stopped by :meth:`stop_all`."""

    def __init__(self, logs: Path, env: dict[str, str]):
        self.logs, self.env, self.procs = logs, env, []

    def start(self, name: str, cmd: list[str], cwd: Path = ROOT) -> subprocess.Popen:
        out = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - closed by the OS
        proc = subprocess.Popen(cmd, cwd=cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
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


def flwr(env: dict[str, str], *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / "flwr"), *argv], cwd=ROOT, env=env, text=True,
                            capture_output=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"flwr {argv[0]} failed: {(result.stdout + result.stderr)[-2000:]}")
    return result


def submit_and_wait(env: dict[str, str], connection: str, extra: list[str], config: list[str],
                    logs: Path, timeout: float) -> str:
    """``flwr run``, then follow the log until the run finishes; returns its final status."""
    out = flwr(env, "run", ".", connection, "--format", "json", *extra, "-c", " ".join(config))
    reply = json.loads(out.stdout[out.stdout.index("{"):])
    if not reply.get("success"):
        raise RuntimeError(f"flwr run refused the app: {reply.get('error-message')}")
    run_id = reply["run-id"]
    print(f"flower_run: run {run_id} submitted to {connection}", flush=True)
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


class PeakMemory(threading.Thread):
    """Peak memory of Flower's and Ray's processes on this machine, sampled twice a second.

    ``peak_pss`` splits shared pages (torch's libraries, mapped by every process) among the
    processes that share them, so it is what they really take together; ``peak_rss`` counts
    shared pages once per process.
    """

    MARKERS = ("flower-superlink", "flower-supernode", "flwr-", "flower-superexec", "ray::",
               "raylet", "gcs_server", "/ray/")

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_rss = self.peak_pss = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            rss = pss = 0
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    if not any(m in cmd for m in self.MARKERS):
                        continue
                    for line in (proc / "smaps_rollup").read_text().splitlines():
                        if line.startswith(("Rss:", "Pss:")):
                            kib = int(line.split()[1]) * 1024
                            rss += kib if line.startswith("Rss:") else 0
                            pss += kib if line.startswith("Pss:") else 0
                except (OSError, ValueError, IndexError):
                    continue
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)


def environment(home: Path) -> dict[str, str]:
    return {
        **os.environ, "FLWR_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
        "RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES": "500000000", "RAY_DEDUP_LOGS": "0",
    }


def simulate(args: argparse.Namespace, save: Path, procs: Processes) -> str:
    home = save / "flwr_home"
    env = environment(home)
    port, control = free_port(), free_port()
    env.update(FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(port),
               FLWR_LOCAL_CONTROL_API_PORT=str(control))
    (home / "config.toml").write_text('[superlink]\ndefault = "local"\n\n'
                                      '[superlink.local]\naddress = ":local:"\n')
    federation = (f"num-supernodes={args.num_clients} client-resources-num-cpus=1 "
                  "client-resources-num-gpus=0.0")
    if not os.environ.get("RAY_ADDRESS"):  # on a Ray cluster, the cluster has the CPU count
        federation += f" init-args-num-cpus={args.cpus} init-args-num-gpus=0"
    try:
        return submit_and_wait(env, "local", ["--federation-config", federation],
                               run_config(args, args.tr_path or "temp_dataset/train.tsv"),
                               save / "logs", args.timeout)
    finally:  # the local SuperLink runs detached: stop it, and the Ray processes it started
        stop_detached(f"--port {port}")


def stop_detached(marker: str) -> None:
    """Stop ``flower-superlink`` processes whose command line holds ``marker`` (their groups)."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "flower-superlink" in cmd and marker in cmd:
            pid = int(proc.name)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(os.getpgid(pid), sig)
                    time.sleep(3)
                except ProcessLookupError:
                    break


def deploy(args: argparse.Namespace, save: Path, procs: Processes) -> str:
    if args.auth and not args.tls:
        raise UsageError("--auth needs --tls (Flower authenticates SuperNodes over TLS only)")
    home, logs = save / "flwr_home", save / "logs"
    env = environment(home)
    port = free_port()
    certs = save / "certificates"
    link = ["--host", "127.0.0.1", "--port", str(port), "--database", str(save / "superlink.db")]
    node_tls = ["--insecure"]
    connection = f'[superlink.deploy]\naddress = "127.0.0.1:{port}"\n'
    if args.tls:
        subprocess.run(["bash", str(ROOT / "scripts" / "make_certs.sh"), str(certs),
                        "localhost,127.0.0.1"], check=True, stdout=subprocess.DEVNULL)
        link += ["--ssl-ca-certfile", str(certs / "ca.crt"), "--ssl-certfile",
                 str(certs / "server.crt"), "--ssl-keyfile", str(certs / "server.key")]
        node_tls = ["--root-certificates", str(certs / "ca.crt")]
        connection += f'root-certificates = "{certs / "ca.crt"}"\n'
    else:
        link.append("--insecure")
        connection += "insecure = true\n"
    if args.auth:
        link.append("--enable-supernode-auth")
    (home / "config.toml").write_text('[superlink]\ndefault = "deploy"\n\n' + connection)
    superlink = procs.start("superlink", [str(BIN / "flower-superlink"), *link])
    wait_for_port(port, superlink, 120)

    tr_path = absolute(args.tr_path or "temp_dataset")
    for k in range(args.num_supernodes + (1 if args.auth else 0)):
        name = f"supernode_{k}"
        extra: list[str] = []
        if args.auth:
            private, public = write_ec_keypair(save / "keys" / name)
            if k < args.num_supernodes:  # the last one stays unregistered: it must be refused
                flwr(env, "supernode", "register", str(public), "deploy")
            extra = ["--auth-supernode-private-key", str(private)]
        node_config = " ".join(f'{key}="{value}"' for key, value in {
            "cid": str(k), "data-path": absolute(args.data_path), "tr-path": tr_path,
            "dev-path": absolute(args.dev_path)}.items())
        procs.start(name, [str(BIN / "flower-supernode"), *node_tls, *extra,
                           "--superlink", f"127.0.0.1:{port}", "--port", str(free_port()),
                           "--node-config", node_config])
    if args.auth:
        refused = procs.procs[-1]
        try:
            code = refused.wait(120)
        except subprocess.TimeoutExpired:
            raise RuntimeError("the unregistered SuperNode was not refused within 120 s") from None
        print(f"flower_run: unregistered SuperNode refused (exit status {code})", flush=True)
    return submit_and_wait(env, "deploy", [], run_config(args, tr_path), logs, args.timeout)


def run(args: argparse.Namespace) -> None:
    check_at_least(args.rounds, 1, "--rounds")
    count = args.num_clients if args.engine == "simulate" else args.num_supernodes
    check_at_least(count, 1, "--num_clients" if args.engine == "simulate" else "--num_supernodes")
    save = Path(args.save_path).resolve()
    (save / "logs").mkdir(parents=True, exist_ok=True)
    (save / "flwr_home").mkdir(parents=True, exist_ok=True)
    procs = Processes(save / "logs", environment(save / "flwr_home"))
    started = time.monotonic()

    def on_signal(signum, frame):  # noqa: ARG001
        procs.stop_all()
        sys.exit(130 if signum == signal.SIGINT else 143)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    memory = PeakMemory()
    memory.start()
    try:
        status = (simulate if args.engine == "simulate" else deploy)(args, save, procs)
    finally:
        memory.stopped.set()
        procs.stop_all()
    seconds = time.monotonic() - started
    summary = {"status": status, "seconds": round(seconds, 1),
               "peak_rss_mb": round(memory.peak_rss / 2**20),
               "peak_pss_mb": round(memory.peak_pss / 2**20), "engine": args.engine,
               "clients": count, "clients_per_round": args.clients_per_round,
               "rounds": args.rounds}
    (save / "flower_run.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"flower_run: run {status} in {seconds:.0f}s; Flower's and Ray's processes peaked at "
          f"{summary['peak_pss_mb']} MB (PSS; {summary['peak_rss_mb']} MB summed RSS); outputs "
          f"in {save}", flush=True)
    if status != "finished:completed":
        tail = (save / "logs" / "run.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the run ended {status}; its log ends:\n{tail}")


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
