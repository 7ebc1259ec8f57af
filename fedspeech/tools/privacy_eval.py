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
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fedspeech.base.cli import ArgumentParser, run_cli
from fedspeech.base.errors import UsageError
from fedspeech.base.paths import ROOT
from fedspeech.records.history import load_history, write_json_atomic
from fedspeech.records.plots import save_figure

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


def simulate_command(args: argparse.Namespace, save: Path, sigma: float,
                     clip: float | None) -> list[str]:
    """One ``flower_run.py simulate`` run: DP with ``sigma`` and ``clip``, or none (sigma 0)."""
    cmd = [sys.executable, str(ROOT / "scripts" / "flower_run.py"), "simulate", *start_args(args),
           "--save_path", str(save), "--num_clients", str(args.num_clients),
           "--clients_per_round", str(args.clients_per_round), "--rounds", str(args.rounds),
           "--local_epochs", str(args.local_epochs),
           "--samples_per_client", str(args.samples_per_client),
           "--seed", str(args.seed), "--tr_add_path", "", "--timeout", str(args.timeout),
           "--extra_test", f"unseen={DATA}/test_unseen.tsv",
           "--run_config", "fraction-evaluate=0"]
    if sigma > 0:
        cmd += ["--run_config", f"dp-noise-multiplier={sigma}",
                "--run_config", f'dp-clip-norm="{clip:g}"',
                "--run_config", f"dp-delta={float(args.delta)!r}"]
    else:  # no DP, plain FedAvg; clipping at a norm nothing reaches records each change's norm
        cmd += ["--run_config", f'clip-update-norm="{NEVER:g}"']
    return cmd


def secagg_command(args: argparse.Namespace, save: Path, secure: bool) -> list[str]:
    """Plain averaging or SecAgg+, every one of ``--secagg_clients`` clients trained each round
    (the same clients in both, so the models differ only by SecAgg+'s quantisation)."""
    cmd = [sys.executable, str(ROOT / "scripts" / "flower_run.py"), "simulate", *start_args(args),
           "--save_path", str(save), "--num_clients", str(args.secagg_clients),
           "--clients_per_round", "0", "--rounds", str(args.secagg_rounds),
           "--local_epochs", str(args.local_epochs), "--seed", str(args.seed),
           "--tr_add_path", "", "--timeout", str(args.timeout),
           "--extra_test", f"unseen={DATA}/test_unseen.tsv",
           "--run_config", "fraction-evaluate=0"]
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


def summary(results: list[dict], args: argparse.Namespace) -> str:
    """The table, one row per run, the run without DP first."""
    machine = f"{platform.machine()}, {os.cpu_count()} cores (CPU only)"
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {machine} by `scripts/privacy_eval.py "
        f"--num_clients {args.num_clients} --clients_per_round {args.clients_per_round} "
        f"--rounds {args.rounds}`: the Simulation Engine, {args.num_clients} virtual clients "
        f"({args.samples_per_client} utterances of one voice each, drawn from "
        f"`{DATA}/train.tsv`), {args.clients_per_round} sampled per round, {args.rounds} rounds "
        f"x {args.local_epochs} local epochs, `small_cpu.yaml`, from the same pre-trained model "
        f"({args.pretrain_epochs} epochs on two voices no client has), no server-side training, "
        f"seed {args.seed}. WER in % after the last round; \"unseen\" is a voice no client has. "
        "Epsilon: Flower's RDP accountant, user level, sampling without replacement of "
        f"{args.num_clients}.",
        "",
        "| noise multiplier | clip norm C | noise std of the mean (sigma C / m) | epsilon | delta "
        f"| test WER | unseen-voice WER | wall time (s) | the same noise at {args.big_cohort:,} of "
        f"{args.big_population:,} clients: sigma, epsilon |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(dp_runs(results), key=lambda r: r["sigma"]):
        if r["sigma"] == 0:
            lines.append(f"| no DP | - | - | - | - | {r['test_wer']:.2f} | "
                         f"{_pct(r['unseen_wer'])} | {r['seconds']:.0f} | - |")
            continue
        lines.append(f"| {r['sigma']:g} | {r['clip_norm']:.3g} | {r['noise_std']:.3g} | "
                     f"{_eps(r['epsilon'])} | {r['delta']:.2g} | {r['test_wer']:.2f} | "
                     f"{_pct(r['unseen_wer'])} | {r['seconds']:.0f} | {_extrapolated(r)} |")
    base = next((r for r in results if r["sigma"] == 0 and r.get("secure") is None), None)
    if base and base["median_change_norm"]:
        lines += ["", f"The run without DP measured a median change norm of "
                  f"{base['median_change_norm']:.3g} (L2, all clients and rounds), the clip "
                  "norm of the others. The last column keeps sigma C / m, the noise on the "
                  f"averaged change, at a cohort of {args.big_cohort:,} drawn from "
                  f"{args.big_population:,} clients (delta 1/N): what the same WER would cost "
                  "there if the clipped changes averaged alike (an extrapolation, not a run); "
                  "below 0.01 the accountant's bound is its own floor."]
    return "\n".join(lines + secagg_table(results, args)) + "\n"


def extrapolated_epsilon(sigma: float, cohort: int, rounds: int, big_cohort: int,
                         population: int) -> tuple[float, float]:
    """The same noise on the averaged change (sigma C / m) at a cohort of ``big_cohort`` drawn
    from ``population``: its noise multiplier, and the epsilon (at delta 1/population) of
    ``rounds`` such rounds, from Flower's accountant."""
    from fedspeech.math.privacy import Accountant

    big_sigma = sigma * big_cohort / cohort
    accountant = Accountant(population=population, delta=1 / population, max_epsilon=None,
                            sampled_all=False)
    for _ in range(rounds):
        accountant.spend(big_sigma, big_cohort)
    return big_sigma, accountant.epsilon


def dp_runs(results: list[dict]) -> list[dict]:
    return [r for r in results if r.get("secure") is None]


def secagg_table(results: list[dict], args: argparse.Namespace) -> list[str]:
    """Plain averaging against SecAgg+ on the same clients: WER, the models' largest difference,
    wall time."""
    runs = {r["secure"]: r for r in results if r.get("secure") is not None}
    if set(runs) != {False, True}:
        return []
    difference = max_difference(runs[False]["model"], runs[True]["model"])
    lines = ["", f"Secure aggregation (SecAgg+, `secure-aggregation = true`) against plain "
             f"averaging: {args.secagg_clients} virtual clients (the voices split among them), "
             f"all trained every round, {args.secagg_rounds} rounds x {args.local_epochs} local "
             "epochs, "
             "the same seed and the same pre-trained start (client training is deterministic, "
             "so after one round the models differ only by SecAgg+'s quantisation of the "
             "changes: clipping range 8, 2^22 levels).", "",
             "| aggregation | test WER | unseen-voice WER | wall time (s) |", "|---|---|---|---|"]
    for secure, name in ((False, "plain (FedAvg)"), (True, "SecAgg+")):
        r = runs[secure]
        lines.append(f"| {name} | {r['test_wer']:.4f} | {_pct(r['unseen_wer'])} | "
                     f"{r['seconds']:.0f} |")
    lines += ["", f"Largest difference between the two final models' weights: {difference:.3g}."]
    return lines


def max_difference(a: str, b: str) -> float:
    """The largest absolute difference between two checkpoints' floating-point tensors."""
    from weights import load_checkpoint

    first, second = load_checkpoint(a), load_checkpoint(b)
    return max((float((first[k].double() - second[k].double()).abs().max())
                for k in first if first[k].is_floating_point() and first[k].numel()),
               default=0.0)


def _extrapolated(r: dict) -> str:
    if r.get("big_sigma") is None:
        return "-"
    return f"{r['big_sigma']:.3g}, {_eps(r['big_epsilon'])}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _eps(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 0.01:  # the RDP conversion's own floor, log(1/delta) / (largest order - 1)
        return "< 0.01"
    return f"{value:.3g}" if value < 1e4 else f"{value:.2e}"


def plot(results: list[dict], path: Path) -> Path:
    """Final WER against epsilon (log scale); the run without DP as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    private = sorted((r for r in dp_runs(results) if r["sigma"] > 0),
                     key=lambda r: r["epsilon"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    eps = [r["epsilon"] for r in private]
    ax.plot(eps, [r["test_wer"] for r in private], "o-", label="test WER, DP")
    ax.plot(eps, [r["unseen_wer"] for r in private], "s--", label="unseen-voice WER, DP")
    for r in private:
        ax.annotate(f"sigma {r['sigma']:g}", (r["epsilon"], r["test_wer"]), fontsize=7,
                    textcoords="offset points", xytext=(4, 4))
    base = next((r for r in dp_runs(results) if r["sigma"] == 0), None)
    if base:
        ax.axhline(base["test_wer"], color="C0", lw=0.8, label="test WER, no DP")
        if base["unseen_wer"] is not None:
            ax.axhline(base["unseen_wer"], color="C1", lw=0.8, ls=":",
                       label="unseen-voice WER, no DP")
    ax.set_xscale("log")
    ax.set_xlabel("epsilon after the last round (log)")
    ax.set_ylabel("final WER (%)")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


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
