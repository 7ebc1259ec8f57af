"""The privacy bench's report: the table, the SecAgg+ comparison and the plot of
``scripts/privacy_eval.py`` (:mod:`fedspeech.tools.privacy_eval` runs the federations)."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
from pathlib import Path

from fedspeech.records.plots import save_figure

DATA = "temp_dataset"


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
