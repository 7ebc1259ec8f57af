#!/usr/bin/env python3
"""The privacy bench: what user-level DP costs in WER, on the Simulation Engine.

Runs ``scripts/flower_run.py simulate`` (thousands of virtual clients drawn from ``temp_dataset``,
a cohort of ``--clients_per_round`` each round) once without DP and once per noise multiplier,
all else equal, and writes a table and a plot of the final test WER (seen and unseen voices), the
epsilon spent at the end and the wall time into ``<save_path>/privacy.md`` (``--update_docs``:
into docs/privacy.md). Then SecAgg+ against plain averaging on ``--secagg_clients`` clients.

Every run starts from the same model, pre-trained centrally on two voices no client has
(``scripts/pretrain.py``, run first into ``<save_path>/pretrain``): fine-tuning a public model
on private data is how DP training is used in practice, and it lets a few rounds on this CPU
show what the noise costs.

The clip norm: ``--clip_norm C``, or by default the median change norm the run without DP
measured (its history records every client's change norm), so that about half the changes are
clipped. Choosing C from a run on the clients' data is itself not private; a deployment fixes C
from a public or proxy run. Server-side training is off (``--tr_add_path ""``): the server's own
data would mask what the private updates cost.

    python scripts/privacy_eval.py --noise 0,0.003,0.03,0.1,0.3,1 --update_docs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fedspeech.base.cli import ArgumentParser, run_cli
from fedspeech.base.errors import UsageError
from fedspeech.base.paths import ROOT
from fedspeech.records.history import load_history, write_json_atomic
from fedspeech.tools.privacy_report import dp_runs, extrapolated_epsilon, plot, summary

DATA = "temp_dataset"
NEVER = 1e12  # a clip norm no change reaches: the run without DP only measures the norms


def start_args(args: argparse.Namespace) -> list[str]:
    """Every run's start: the pre-trained model and its tokenizer."""
    pre = args.save_path / "pretrain"
    return ["--tokenizer_path", str(pre / "tokenizer.model"),
            "--run_config", f'pre-train-model-path="{pre / "model.ckpt"}"']


def pretrain(args: argparse.Namespace) -> float | None:
    """Pre-train into ``<save_path>/pretrain`` unless it is there; its wall time, or None."""
    pre = args.save_path / "pretrain"
    if (pre / "model.ckpt").is_file() and (pre / "tokenizer.model").is_file():
        return None
    started = time.monotonic()
    code = subprocess.call([sys.executable, str(ROOT / "scripts" / "pretrain.py"),
                            "--save_path", str(pre), "--epochs", str(args.pretrain_epochs),
                            "--num_threads", "2"], cwd=ROOT, stdout=subprocess.DEVNULL)
    if code != 0:
        raise UsageError(f"scripts/pretrain.py failed (exit {code}); its log is in {pre}/logs")
    return time.monotonic() - started


def _simulate(args: argparse.Namespace, save: Path, clients: int, per_round: int,
              rounds: int) -> list[str]:
    """What every run shares: the pre-trained start, no server training, the unseen voice."""
    return [sys.executable, str(ROOT / "scripts" / "flower_run.py"), "simulate",
            *start_args(args), "--save_path", str(save), "--num_clients", str(clients),
            "--clients_per_round", str(per_round), "--rounds", str(rounds),
            "--local_epochs", str(args.local_epochs), "--seed", str(args.seed),
            "--tr_add_path", "", "--timeout", str(args.timeout),
            "--extra_test", f"unseen={DATA}/test_unseen.tsv", "--run_config", "fraction-evaluate=0"]


def simulate_command(args: argparse.Namespace, save: Path, sigma: float,
                     clip: float | None) -> list[str]:
    """One ``flower_run.py simulate`` run: DP with ``sigma`` and ``clip``, or none (sigma 0)."""
    cmd = _simulate(args, save, args.num_clients, args.clients_per_round, args.rounds)
    cmd += ["--samples_per_client", str(args.samples_per_client)]
    if sigma > 0:
        return cmd + ["--run_config", f"dp-noise-multiplier={sigma}",
                      "--run_config", f'dp-clip-norm="{clip:g}"',
                      "--run_config", f"dp-delta={float(args.delta)!r}"]
    # no DP, plain FedAvg; clipping at a norm nothing reaches records each change's norm
    return cmd + ["--run_config", f'clip-update-norm="{NEVER:g}"']


def secagg_command(args: argparse.Namespace, save: Path, secure: bool) -> list[str]:
    """Plain averaging or SecAgg+, every one of ``--secagg_clients`` clients trained each round
    (the same clients in both, so the models differ only by SecAgg+'s quantisation)."""
    cmd = _simulate(args, save, args.secagg_clients, 0, args.secagg_rounds)
    return cmd + (["--run_config", "secure-aggregation=true"] if secure else [])


def run_one(args: argparse.Namespace, sigma: float, clip: float | None,
            secure: bool | None = None) -> dict:
    """One simulation; its final WERs, epsilon, the change norms it saw and its wall time
    (``secure`` not None: the SecAgg+ comparison's plain or secure run)."""
    if secure is None:
        save = args.save_path / (f"sigma_{sigma:g}" if sigma > 0 else "no_dp")
        cmd = simulate_command(args, save, sigma, clip)
    else:
        save = args.save_path / ("secagg" if secure else "plain")
        cmd = secagg_command(args, save, secure)
    started = time.monotonic()
    log = save.parent / f"{save.name}.log"
    with open(log, "w", encoding="utf-8") as out:
        code = subprocess.call(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.monotonic() - started
    if code != 0:
        raise UsageError(f"privacy run {save.name} failed (exit {code}); log: {log}")
    history = load_history(save / "history.json")
    last = history[-1]
    norms = [n for row in history for n in (row.update_norms or {}).values()]
    result = {"sigma": sigma, "clip_norm": clip, "secure": secure, "test_wer": last.test_wer,
              "unseen_wer": last.number("test_unseen_wer"),
              "epsilon": last.dp_epsilon, "delta": last.dp_delta, "sampling": last.dp_sampling,
              "noise_std": last.dp_noise_std, "rounds": len(history),
              "median_change_norm": statistics.median(norms) if norms else None,
              "model": str(save / "final_model.ckpt"), "seconds": round(seconds, 1)}
    print(f"privacy_eval: {save.name}: test WER {last.test_wer:.2f}, epsilon "
          f"{result['epsilon']}, {seconds:.0f}s", flush=True)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--noise", default="0,0.003,0.03,0.1,0.3,1",
                   help="comma-separated noise multipliers; 0 is the run without DP")
    p.add_argument("--clip_norm", type=float, default=None,
                   help="C (default: the median change norm of the run without DP)")
    p.add_argument("--num_clients", type=int, default=2000)
    p.add_argument("--clients_per_round", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--local_epochs", type=int, default=1)
    p.add_argument("--pretrain_epochs", type=int, default=15)
    p.add_argument("--samples_per_client", type=int, default=20)
    p.add_argument("--delta", type=float, default=0.0, help="0: 1/N")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    p.add_argument("--save_path", type=Path, default=Path("results/privacy"))
    p.add_argument("--secagg_clients", type=int, default=3,
                   help="SecAgg+ against plain averaging on this many clients (0: skip)")
    p.add_argument("--secagg_rounds", type=int, default=1,
                   help="1: the two models differ by the quantisation alone (later rounds also "
                        "train from the slightly different models)")
    p.add_argument("--big_cohort", type=int, default=1000,
                   help="the extrapolation: a cohort this large ...")
    p.add_argument("--big_population", type=int, default=1_000_000,
                   help="... drawn from this many clients, with the same noise on the mean")
    p.add_argument("--resume", action="store_true",
                   help="keep the runs already in <save_path>/privacy.json")
    p.add_argument("--update_docs", action="store_true")
    return p


def parse_noise(spec: str) -> list[float]:
    """The noise multipliers, 0 (no DP) first: its change norms give the default C."""
    try:
        values = sorted({float(s) for s in spec.split(",") if s.strip()})
    except ValueError:
        raise UsageError(f"--noise '{spec}': expected comma-separated numbers") from None
    if not values or values[0] < 0:
        raise UsageError(f"--noise '{spec}': expected numbers >= 0")
    return values


def check(args: argparse.Namespace, noise: list[float]) -> None:
    if args.clip_norm is None and noise[0] != 0:
        raise UsageError("--noise without 0 needs --clip_norm (the default C comes from the "
                         "run without DP)")
    if args.clip_norm is not None and args.clip_norm <= 0:
        raise UsageError(f"--clip_norm {args.clip_norm}: must be > 0")
    if not 2 <= args.clients_per_round <= args.num_clients:
        raise UsageError(f"--clients_per_round {args.clients_per_round}: between 2 and "
                         f"--num_clients {args.num_clients}")
    if args.secagg_clients == 1 or args.secagg_clients < 0:
        raise UsageError(f"--secagg_clients {args.secagg_clients}: 0 (skip) or at least 2")
    for flag in ("rounds", "local_epochs", "samples_per_client", "pretrain_epochs",
                 "secagg_rounds"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} {getattr(args, flag)}: must be >= 1")


def run(args: argparse.Namespace) -> None:
    noise = parse_noise(args.noise)
    check(args, noise)
    if not args.save_path.is_absolute():
        args.save_path = ROOT / args.save_path
    args.save_path.mkdir(parents=True, exist_ok=True)
    store = args.save_path / "privacy.json"
    results = json.loads(store.read_text()) if args.resume and store.is_file() else []
    pretrain_seconds = pretrain(args)
    if pretrain_seconds is not None:
        print(f"privacy_eval: pre-trained in {pretrain_seconds:.0f} s", flush=True)
    clip = args.clip_norm
    for sigma in noise:
        done = next((r for r in dp_runs(results) if r["sigma"] == sigma), None)
        if done is None:
            done = run_one(args, sigma, None if sigma == 0 else clip)
            results.append(done)
            write_json_atomic(results, store)  # a stopped bench keeps its runs
        if sigma == 0 and clip is None:
            clip = done["median_change_norm"]
            if not clip:
                raise UsageError(f"the run without DP in {args.save_path} recorded no change "
                                 "norms; give --clip_norm")
    for secure in (False, True) if args.secagg_clients else ():
        results = [r for r in results if r.get("secure") is not secure  # another schedule's
                   or r["rounds"] == args.secagg_rounds]
        if not any(r.get("secure") is secure for r in results):
            results.append(run_one(args, 0.0, None, secure=secure))
            write_json_atomic(results, store)
    for r in dp_runs(results):  # what the measured noise level means at a larger scale
        if r["sigma"] > 0 and r.get("big_sigma") is None:
            r["big_sigma"], r["big_epsilon"] = extrapolated_epsilon(
                r["sigma"], args.clients_per_round, r["rounds"], args.big_cohort,
                args.big_population)
            write_json_atomic(results, store)
    markdown = summary(results, args)
    (args.save_path / "privacy.md").write_text(markdown, encoding="utf-8")
    png = plot(results, args.save_path / "privacy.png")
    print(markdown)
    if args.update_docs:
        from fedspeech.tools.docs_section import update_docs_section

        update_docs_section("privacy.md", "privacy", markdown, png, "WER against epsilon")


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
