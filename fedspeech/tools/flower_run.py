#!/usr/bin/env python3
"""Run the Flower App on Flower's own engines, on this machine, and wait for it.

    flower_run.py simulate --num_clients 100 --clients_per_round 10 --rounds 3
    flower_run.py deploy --num_supernodes 2 --tls --auth --rounds 2

``simulate``: the Simulation Engine (virtual clients in Ray actors; ``flwr run`` starts a local
simulation SuperLink). ``deploy``: the Deployment Engine, a ``flower-superlink`` and
``--num_supernodes`` ``flower-supernode`` processes on 127.0.0.1, each SuperNode with its own
node config (``cid``, ``data-path``, ``tr-path``, ``dev-path``), as real sites would have; with
``--tls`` (certificates from ``scripts/make_certs.sh``) and ``--auth`` (EC keys registered with
``flwr supernode register``; one extra, unregistered SuperNode must be refused). ``--tls --auth``
is the locked setup (``fedspeech/tools/deployment.py``): the SuperLink on 127.0.0.1 only, with
the SuperExec's shared secret, and the SuperNodes connecting through an nginx proxy that forwards
the Fleet API alone; ``<save_path>/deployment.json`` names both addresses.

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
from fedspeech.tools import deployment
from fedspeech.tools.flower_procs import Processes, environment, submit_and_wait
from fedspeech.tools.launch import free_port


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
    dep.add_argument("--auth", action="store_true",
                     help="SuperNode authentication (needs --tls); with --tls, the locked "
                          "setup: sites reach the SuperLink through an nginx proxy")
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
    dep = deployment.start(procs, save, tls=args.tls, auth=args.auth)
    if dep.locked:
        print(f"flower_run: locked: sites connect to the proxy at {dep.site_address} (Fleet API "
              f"only), the operator to the SuperLink at {dep.operator_address}", flush=True)
    tr_path = absolute(args.tr_path or "temp_dataset")
    sites = [{"cid": str(k), "data-path": absolute(args.data_path), "tr-path": tr_path,
              "dev-path": absolute(args.dev_path)} for k in range(args.num_supernodes + 1)]
    for k in range(args.num_supernodes):
        deployment.start_supernode(dep, procs, f"supernode_{k}", sites[k])
    if args.auth:  # one more SuperNode, whose key nobody registered: it must be refused
        refused = deployment.start_supernode(dep, procs, f"supernode_{args.num_supernodes}",
                                             sites[-1], register=False)
        try:
            code = refused.wait(120)
        except subprocess.TimeoutExpired:
            raise RuntimeError("the unregistered SuperNode was not refused within 120 s") from None
        print(f"flower_run: unregistered SuperNode refused (exit status {code})", flush=True)
    return submit_and_wait(dep.env, deployment.CONNECTION, [], run_config(args, tr_path),
                           save / "logs", args.timeout)


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
