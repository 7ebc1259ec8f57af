#!/usr/bin/env python3
"""Round benchmark: a real federation's per-phase costs against the same compute without Flower.

First a real federation runs (``server.py`` + ``--num_clients`` ``client.py`` processes over gRPC
on 127.0.0.1, as ``scripts/launch.py`` starts them) on subsets of the bundled data; every round's
row of its ``history.json`` carries the phases' costs. Then the same work runs sequentially in
ONE process without Flower ("bare compute"): the same config, data, epochs and thread count, the
same :class:`local_training.LocalTrainer`, :class:`round_core.RoundCore` and
:class:`server_side.ServerModel` code, every client in turn. Federation overhead = a round's wall
time / that round's bare compute. Writes a Markdown report to stdout and ``--out`` (JSON) with a
``.md`` beside it.

    python scripts/bench.py --out results/bench/small_cpu.json
    python scripts/bench.py --config_file template.yaml --num_clients 1 --rounds 1 \\
        --local_epochs 1 --utts 50 --out results/bench/template.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedspeech.base.checks import check_at_least, check_file
from fedspeech.base.cli import ArgumentParser, run_cli
from fedspeech.base.errors import UsageError
from fedspeech.base.paths import ROOT
from fedspeech.core.row import RoundRow
from fedspeech.records.history import load_history, write_json_atomic
from fedspeech.speech.config import parse_overrides
from fedspeech.tools.flags import add_model_flags
from fedspeech.tools.launch import client_command, free_port, run_federation, server_command

Row = dict[str, Any]
WAIT_POLICIES = ("default", "PASSIVE", "ACTIVE")
MB = 1024 * 1024


# ---- pure parts: what a history says ---------------------------------------------------------
def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def round_costs(row: RoundRow) -> Row:
    """One history row's phase costs, with the derived ones the report shows.

    ``transfer_seconds`` = ``fit_wait_seconds`` − ``client_fit_seconds_max``: serialisation,
    gRPC transfer and waiting, beyond the slowest client's own training. ``utts_per_second`` is
    per client process: training utterances (``examples``, every epoch counted) over the sum of
    the clients' training-stage seconds.
    """
    clients = row.clients or []
    train_mean = row.client_train_seconds_mean
    train_sum = train_mean * len(clients) if train_mean is not None and clients else None
    phases = (row.fit_wait_seconds, row.aggregate_seconds, row.server_train_seconds,
              row.server_eval_seconds)
    copied = ("client_fit_seconds_max", "client_fit_seconds_mean", "client_train_seconds_max",
              "client_train_seconds_mean", "client_valid_seconds_max",
              "client_valid_seconds_mean", "fit_wait_seconds", "aggregate_seconds",
              "server_train_seconds", "server_eval_seconds", "client_eval_seconds_max",
              "client_eval_seconds_mean", "server_peak_rss_mb", "examples",
              "initial_eval_seconds", "final_test_seconds")
    return {
        "round": row.round,
        "clients": len(clients),
        "seconds": row.number("seconds"),
        **{k: row.number(k) for k in copied},
        "transfer_seconds": _sub(row.number("fit_wait_seconds"),
                                 row.number("client_fit_seconds_max")),
        # the rest of the round: federated evaluation (send, clients' dev sets, answer), records
        "after_eval_seconds": _sub(row.number("seconds"),
                                   sum(v for v in phases if v is not None)),
        "bytes_sent_per_client": row.number("bytes_sent_per_client"),
        "bytes_received": dict(row.bytes_received or {}),
        "client_peak_rss_mb": dict(row.client_peak_rss_mb or {}),
        "utts_per_second": (row.examples / train_sum
                            if row.examples is not None and train_sum else None),
    }


def bare_round_seconds(bare_round: Row) -> float:
    """Bare compute of one round: every phase the round performs, one after the other."""
    return (sum(bare_round["client_fit_seconds"]) + bare_round["aggregate_seconds"]
            + (bare_round.get("server_train_seconds") or 0.0) + bare_round["server_eval_seconds"]
            + sum(bare_round["client_eval_seconds"]))


def overheads(fed_rounds: Sequence[Row], bare_rounds: Sequence[Row]) -> list[float | None]:
    """Round wall time / bare compute, round by round."""
    out: list[float | None] = []
    for fed, bare in zip(fed_rounds, bare_rounds, strict=False):
        compute = bare_round_seconds(bare)
        out.append(fed["seconds"] / compute if fed.get("seconds") and compute > 0 else None)
    return out


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _mb(value: float | None) -> str:
    return "–" if value is None else f"{value / MB:.2f}"


def _per_client(values: dict[str, float], scale: float = 1.0, digits: int = 0) -> str:
    return " / ".join(f"{values[k] / scale:.{digits}f}" for k in sorted(values)) or "–"


def phase_table(rounds: Sequence[Row], bare: Sequence[Row] = ()) -> str:
    """The federation's per-round phases (seconds), with bare compute and overhead if given."""
    head = ["round", "round wall", "client fit max/mean", "client train max/mean",
            "client valid max/mean", "serialise + transfer", "aggregate", "server train",
            "server eval", "fed. eval + rest", "train utt/s per client"]
    if bare:
        head += ["bare compute", "overhead"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ratios = overheads(rounds, bare) if bare else []
    for i, r in enumerate(rounds):
        cells = [
            str(r["round"]), _f(r["seconds"]),
            f"{_f(r['client_fit_seconds_max'])} / {_f(r['client_fit_seconds_mean'])}",
            f"{_f(r['client_train_seconds_max'])} / {_f(r['client_train_seconds_mean'])}",
            f"{_f(r['client_valid_seconds_max'])} / {_f(r['client_valid_seconds_mean'])}",
            _f(r["transfer_seconds"], 2), _f(r["aggregate_seconds"], 2),
            _f(r["server_train_seconds"]), _f(r["server_eval_seconds"]),
            _f(r["after_eval_seconds"]), _f(r["utts_per_second"]),
        ]
        if bare:
            cells += [_f(bare_round_seconds(bare[i])) if i < len(bare) else "–",
                      _f(ratios[i], 2) if i < len(ratios) else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def resource_table(rounds: Sequence[Row]) -> str:
    """Bytes and peak memory per round (clients in name order)."""
    lines = ["| round | sent per client (MiB) | received per client (MiB) | server peak RSS (MiB) "
             "| client peak RSS (MiB) |", "|---|---|---|---|---|"]
    for r in rounds:
        lines.append(f"| {r['round']} | {_mb(r['bytes_sent_per_client'])} | "
                     f"{_per_client(r['bytes_received'], MB, 2)} | "
                     f"{_f(r['server_peak_rss_mb'], 0)} | "
                     f"{_per_client(r['client_peak_rss_mb'])} |")
    return "\n".join(lines)


def bare_table(bare: Row) -> str:
    """The bare run's phases, round by round (seconds; clients one after the other)."""
    lines = ["| round | client fit (each) | client train (each) | client valid (each) | "
             "aggregate | server train | server eval | client eval (each) | sum |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in bare["rounds"]:
        each = " / ".join
        lines.append(
            f"| {r['round']} | {each(_f(s) for s in r['client_fit_seconds'])} | "
            f"{each(_f(s) for s in r['client_train_seconds'])} | "
            f"{each(_f(s) for s in r['client_valid_seconds'])} | "
            f"{_f(r['aggregate_seconds'], 2)} | {_f(r.get('server_train_seconds'))} | "
            f"{_f(r['server_eval_seconds'])} | {each(_f(s) for s in r['client_eval_seconds'])} | "
            f"{_f(bare_round_seconds(r))} |")
    return "\n".join(lines)


def report(result: Row) -> str:
    """The whole Markdown report of one benchmark."""
    s, fed, bare = result["settings"], result["federation"], result.get("bare")
    rounds = fed["rounds"]
    first, last = (rounds[0], rounds[-1]) if rounds else ({}, {})
    parts = [
        f"## bench: {s['config_file']}, {s['num_clients']} client(s), {s['rounds']} round(s) x "
        f"{s['local_epochs']} local epoch(s)",
        "",
        f"Machine: {result['machine']}; load average before {result['load_before']}, after "
        f"{result['load_after']}. Threads per process: {s['num_threads'] or 'torch default'}; "
        f"OMP_WAIT_POLICY: {s['omp_wait_policy']}. Utterances: {s['utterances']}. Server-side "
        f"training: {'yes' if s['server_training'] else 'no'}. Overrides: "
        f"{', '.join(s['overrides']) or 'none'}.",
        "",
        f"Federation wall time (server start to every process exited, model builds and final "
        f"test included): **{fed['wall_seconds']:.1f} s**; initial (round-0) server evaluation "
        f"{_f(first.get('initial_eval_seconds'))} s; final wide-beam test "
        f"{_f(last.get('final_test_seconds'))} s.",
        "",
        phase_table(rounds, bare["rounds"] if bare else ()),
        "",
        resource_table(rounds),
    ]
    if bare:
        parts += [
            "",
            f"Bare compute (one process, no Flower, clients one after the other, "
            f"{s['num_threads'] or 'default'} thread(s)): model build {bare['build_seconds']:.1f} "
            f"s, initial evaluation {bare['initial_eval_seconds']:.1f} s, final test "
            f"{_f(bare.get('final_test_seconds'))} s, whole run {bare['total_seconds']:.1f} s.",
            "",
            bare_table(bare),
            "",
            f"**Federation overhead** (round wall time / bare compute of that round = Σ client "
            f"fit + aggregation + server train + server eval + Σ client dev-set eval, done "
            f"sequentially in one process; the federation's {s['num_clients']} client processes "
            f"run in parallel on {result['cores']} cores): "
            + ", ".join(f"round {r['round']} {_f(o, 2)}"
                        for r, o in zip(rounds, result["overhead"]["per_round"], strict=False))
            + f"; whole run {_f(result['overhead']['run'], 2)} (federation wall time / bare run).",
        ]
    return "\n".join(parts) + "\n"


# ---- data subsets ----------------------------------------------------------------------------
def subset_tsv(src: Path, dst: Path, n: int) -> int:
    """The header and the first ``n`` rows of ``src`` (all when ``n`` is 0); the rows kept."""
    lines = [line for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = lines[1:] if n <= 0 else lines[1:1 + n]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("\n".join([lines[0], *rows]) + "\n", encoding="utf-8")
    return len(rows)


def make_data(args: argparse.Namespace, folder: Path) -> tuple[dict[str, Path], dict[str, int]]:
    """The TSVs this benchmark uses, cut to the requested sizes, and how many rows each holds."""
    tr = Path(args.tr_path)
    sizes = {"train": args.train_utts, "dev": args.dev_utts, "test": args.test_utts,
             "train_add": args.train_add_utts}
    if args.utts is not None:
        sizes = {k: args.utts if v is None else v for k, v in sizes.items()}
    sizes = {k: v or 0 for k, v in sizes.items()}
    paths: dict[str, Path] = {}
    counts: dict[str, int] = {}
    for k in range(args.num_clients):
        src = tr / f"train_{k}.tsv"
        check_file(src, f"--tr_path (client {k})")
        paths[f"train_{k}"] = folder / f"train_{k}.tsv"
        counts[f"train_{k}"] = subset_tsv(src, paths[f"train_{k}"], sizes["train"])
    for split, src in (("dev", args.dev_path), ("test", args.test_path),
                       ("train_add", args.tr_add_path)):
        if not src:
            continue
        check_file(src, f"--{split.replace('train_add', 'tr_add')}_path")
        paths[split] = folder / f"{split}.tsv"
        counts[split] = subset_tsv(Path(src), paths[split], sizes[split])
    return paths, counts


# ---- the federation --------------------------------------------------------------------------
def process_env(num_threads: int, wait_policy: str) -> dict[str, str]:
    """The environment of every benchmarked process (threads, OpenMP's waiting policy)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("OMP_NUM_THREADS", None)
    env.pop("OMP_WAIT_POLICY", None)
    if num_threads > 0:
        env["OMP_NUM_THREADS"] = str(num_threads)
    if wait_policy != "default":
        env["OMP_WAIT_POLICY"] = wait_policy
    return env


def model_args(args: argparse.Namespace, tokenizer: str) -> list[str]:
    out = ["--config_path", args.config_path, "--config_file", args.config_file,
           "--tokenizer_path", tokenizer, "--num_threads", str(args.num_threads)]
    for item in args.override:
        out += ["--override", item]
    if args.seed is not None:
        out += ["--seed", str(args.seed)]
    if args.device:
        out += ["--device", args.device]
    return out


def time_federation(args: argparse.Namespace, data: dict[str, Path], save: Path,
                   env: dict[str, str]) -> tuple[float, list[RoundRow]]:
    """Start the server and the clients as processes; wall time and the server's history."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    shared = model_args(args, args.tokenizer_path)
    options = ["--local_epochs", str(args.local_epochs), *shared]
    if "train_add" in data:
        options += ["--tr_add_path", str(data["train_add"])]
    server_cmd = server_command(address, save, data_path=args.data_path,
                                test_path=str(data["test"]), clients=args.num_clients,
                                rounds=args.rounds, options=options)
    dev = ["--dev_path", str(data["dev"])] if "dev" in data else []
    client_cmds = [client_command(k, address, save, data_path=args.data_path,
                                  tr_path=data[f"train_{k}"], options=[*shared, *dev])
                   for k in range(args.num_clients)]
    started = time.monotonic()
    failed = run_federation(server_cmd, client_cmds, port, save / "logs", env,
                            start_timeout=600, echo=False)
    wall = time.monotonic() - started
    if failed:
        raise UsageError(f"federation failed ({', '.join(failed)}); logs in {save / 'logs'}")
    return wall, load_history(save / "history.json")


# ---- bare compute ----------------------------------------------------------------------------
def run_bare(args: argparse.Namespace, data: dict[str, Path], save: Path) -> Row:
    """The same rounds in this one process, without Flower, each phase timed.

    One Brain serves every client and the server in turn (each phase sets the weights it
    starts from, as the processes do); the clients' datasets are built apart, so audio caching
    costs what it costs each client process.
    """
    import torch  # after run() set the OpenMP environment

    from fedspeech.core.round import RoundCore, Update
    from fedspeech.roles.local_training import LocalTrainer
    from fedspeech.roles.server_model import ServerModel
    from fedspeech.speech.model import datasets_for, init_model, prepare_splits, set_threads

    set_threads(args.num_threads)
    run_started = time.monotonic()
    brain, server_sets = init_model(
        Path(args.config_path) / args.config_file, output_folder=save / "bare",
        data_folder=args.data_path, train_tsv=data.get("train_add"), test_tsv=data["test"],
        tokenizer_source=args.tokenizer_path, device=args.device,
        overrides=parse_overrides(args.override, args.seed),
    )
    trainers = []
    for k in range(args.num_clients):
        csvs = prepare_splits(
            vars(brain.hparams), args.data_path, {f"client_{k}": data[f"train_{k}"],
                                                      f"client_{k}_dev": data.get("dev")})
        sources = {"train": csvs[f"client_{k}"]}
        if f"client_{k}_dev" in csvs:
            sources["dev"] = csvs[f"client_{k}_dev"]
        trainers.append(LocalTrainer(str(k), brain, datasets_for(brain, sources)))
    model = ServerModel(brain, server_sets, lr=float(getattr(brain.hparams, "server_lr", 0.01)),
                        local_epochs=args.local_epochs)
    core = RoundCore(initial_weights=trainers[0].weights(),
                     server_train=model.train if "train_add" in data else None,
                     evaluate=model.evaluate)
    build = time.monotonic() - run_started
    started = time.monotonic()
    core.evaluate(0)
    initial_eval = time.monotonic() - started
    rounds = []
    for rnd in range(1, args.rounds + 1):
        updates, fit, train, valid = [], [], [], []
        for trainer in trainers:
            weights, samples, metrics = trainer.fit(core.weights, rnd, args.local_epochs)
            fit.append(metrics["fit_seconds"])
            train.append(metrics["train_seconds"])
            valid.append(metrics["valid_seconds"])
            updates.append(Update(client=trainer.cid, node=trainer.cid, num_examples=samples,
                                  metrics=metrics, decode=lambda w=weights: w))
        core.aggregate(rnd, updates)
        del updates
        core.evaluate(rnd)
        evals = []
        for trainer in trainers:
            if trainer.dev_data is None:
                continue
            started = time.monotonic()
            trainer.evaluate(core.weights)
            evals.append(time.monotonic() - started)
        row = core.history[-1]
        rounds.append({
            "round": rnd, "client_fit_seconds": fit, "client_train_seconds": train,
            "client_valid_seconds": valid, "aggregate_seconds": row.aggregate_seconds,
            "server_train_seconds": row.server_train_seconds,
            "server_eval_seconds": row.server_eval_seconds, "client_eval_seconds": evals,
            "examples": row.examples,
        })
    final = None
    if brain.final_decoding_differs:
        started = time.monotonic()
        model.evaluate(core.weights, 0, final=True)
        final = time.monotonic() - started
    return {"build_seconds": build, "initial_eval_seconds": initial_eval, "rounds": rounds,
            "final_test_seconds": final, "total_seconds": time.monotonic() - run_started,
            "torch_threads": torch.get_num_threads()}


# ---- the command line ------------------------------------------------------------------------
def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num_clients", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--local_epochs", type=int, default=2)
    p.add_argument("--data_path", default=str(ROOT / "temp_dataset"),
                   help="folder holding clips/")
    p.add_argument("--tr_path", default=str(ROOT / "temp_dataset"),
                   help="folder holding train_<k>.tsv for client k")
    p.add_argument("--dev_path", default=str(ROOT / "temp_dataset" / "dev.tsv"),
                   help="every client's dev set ('' for none: no validation, no federated "
                        "evaluation)")
    p.add_argument("--test_path", default=str(ROOT / "temp_dataset" / "test.tsv"))
    p.add_argument("--tr_add_path", default=str(ROOT / "temp_dataset" / "train_add.tsv"),
                   help="server-side training set ('' for no server-side training)")
    p.add_argument("--tokenizer_path", default=str(ROOT / "temp_dataset" / "train.tsv"))
    p.add_argument("--utts", type=int, default=None,
                   help="utterances taken from each set below that is not given (0: all); the "
                        "tutorial's flow is --utts 50")
    p.add_argument("--train_utts", type=int, default=None, help="utterances per client")
    p.add_argument("--dev_utts", type=int, default=None)
    p.add_argument("--test_utts", type=int, default=None)
    p.add_argument("--train_add_utts", type=int, default=None)
    p.add_argument("--omp_wait_policy", default="default", choices=WAIT_POLICIES,
                   help="OMP_WAIT_POLICY of every process (default: leave it unset)")
    p.add_argument("--no_bare", action="store_true",
                   help="skip the bare-compute run (no overhead ratio)")
    p.add_argument("--out", default="results/bench/bench.json",
                   help="JSON report; the Markdown goes beside it (.md)")
    p.add_argument("--save_path", default=None,
                   help="work folder (default: <out without .json>_run)")
    add_model_flags(p)
    p.set_defaults(num_threads=1)  # several processes share a few cores (see README, Speed)
    return p


def run(args: argparse.Namespace) -> Row:
    for flag in ("num_clients", "rounds", "local_epochs"):
        check_at_least(getattr(args, flag), 1, f"--{flag}")
    check_at_least(args.num_threads, 0, "--num_threads")
    for flag in ("utts", "train_utts", "dev_utts", "test_utts", "train_add_utts"):
        if getattr(args, flag) is not None:
            check_at_least(getattr(args, flag), 0, f"--{flag}")
    if not Path(args.data_path).is_dir():
        raise UsageError(f"--data_path {args.data_path}: no such folder")
    check_file(args.tokenizer_path, "--tokenizer_path")
    check_file(Path(args.config_path) / args.config_file, "--config_file")
    parse_overrides(args.override, args.seed)
    out = Path(args.out)
    if out.suffix != ".json":
        raise UsageError(f"--out {out}: expected a .json file name")
    save = Path(args.save_path) if args.save_path else out.with_name(out.stem + "_run")
    # Before torch is imported (the bare run imports it here): OpenMP reads these once.
    env = process_env(args.num_threads, args.omp_wait_policy)
    for key in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY"):
        if key in env:
            os.environ[key] = env[key]
        else:
            os.environ.pop(key, None)

    load_before = load_average()
    data, counts = make_data(args, save / "data")
    print(f"bench: load average {load_before}; federation in {save}", flush=True)
    wall, history = time_federation(args, data, save / "federation", env)
    rounds = [round_costs(row) for row in history]
    bare = None if args.no_bare else run_bare(args, data, save)
    result: Row = {
        "settings": {
            "config_file": args.config_file, "overrides": list(args.override),
            "num_clients": args.num_clients, "rounds": args.rounds,
            "local_epochs": args.local_epochs, "num_threads": args.num_threads,
            "omp_wait_policy": args.omp_wait_policy, "utterances": counts,
            "server_training": "train_add" in data, "seed": args.seed,
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "cores": os.cpu_count(),
        "load_before": load_before,
        "load_after": load_average(),
        "federation": {"wall_seconds": wall, "rounds": rounds,
                       "history": str(save / "federation" / "history.json")},
    }
    if bare is not None:
        per_round = overheads(rounds, bare["rounds"])
        result["bare"] = bare
        result["overhead"] = {"per_round": per_round, "run": wall / bare["total_seconds"]}
    text = report(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(result, out)
    out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
