#!/usr/bin/env python3
"""Run the same federation several ways and compare: weighting (num / loss / wer), with and
without server-side training, with and without pre-training, and with one bad client (its
transcripts shuffled). Writes ``<out>/comparison.md`` (final test WER, WER on the unseen voice,
wall time per run) and ``<out>/comparison.png`` (all runs overlaid); ``--update_docs`` also puts
both into docs/demo.md (between the comparison markers) and ``docs/comparison.png``.

    python scripts/compare_strategies.py --update_docs        # about 30 minutes on 2 cores
    python scripts/compare_strategies.py --runs fedavg,wer --rounds 3
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fedspeech.base.cli import ArgumentParser, run_cli
from fedspeech.base.errors import UsageError
from fedspeech.base.paths import ROOT
from fedspeech.records.history import load_history
from fedspeech.records.plots import plot_histories
from fedspeech.tools.docs_section import update_docs_section

# name -> (weighting, server-side training, pre-trained, bad client)
RUNS: dict[str, tuple[str, bool, bool, bool]] = {
    "fedavg": ("num", True, False, False),
    "loss": ("loss", True, False, False),
    "wer": ("wer", True, False, False),
    "fedavg_no_server_training": ("num", False, False, False),
    "fedavg_pretrained": ("num", True, True, False),
    "fedavg_bad_client": ("num", True, False, True),
    "loss_bad_client": ("loss", True, False, True),
    "wer_bad_client": ("wer", True, False, True),
}


def run_one(name: str, out: Path, rounds: int, local_epochs: int) -> dict:
    weighting, server_training, pretrained, bad = RUNS[name]
    cmd = [
        sys.executable, "scripts/launch.py", "--num_clients", "3", "--save_path", str(out / name),
        "--rounds", str(rounds), "--local_epochs", str(local_epochs),
        "--weight_strategy", weighting, "--extra_test", "unseen=temp_dataset/test_unseen.tsv",
        "--tr_path", str(out / "parts_bad") if bad else "temp_dataset",
    ]
    if not server_training:
        cmd += ["--tr_add_path", ""]
    if pretrained:
        cmd += ["--pre_train_model_path", str(out / "pretrain")]
    shutil.rmtree(out / name, ignore_errors=True)
    print(f"compare: {name}: {' '.join(cmd[2:])}", flush=True)
    started = time.monotonic()
    result = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"compare: run {name} failed:\n{result.stderr[-2000:]}")
    history = load_history(out / name / "history.json")
    last = history[-1]
    print(f"compare: {name}: test WER {last['test_wer']:.2f}, unseen "
          f"{last.get('test_unseen_wer', float('nan')):.2f}, {seconds:.0f}s", flush=True)
    return {"name": name, "weighting": weighting, "server_training": server_training,
            "pretrained": pretrained, "bad": bad, "history": history, "seconds": seconds}


def table(results: list[dict], rounds: int, local_epochs: int) -> str:
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {machine} (CPU only) by "
        f"`scripts/compare_strategies.py`: 3 clients (2 synthetic speakers each), "
        f"{rounds} rounds x {local_epochs} local epochs, `small_cpu.yaml`, seed 1234. "
        "WER in %, after the last round; the unseen voice is one no client or pre-training run "
        "hears. Bad client: client 2's transcripts shuffled among its clips.",
        "",
        "| run | weighting | server training | pre-trained | bad client | test WER | "
        "unseen-voice WER | best test WER (round) | wall time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        last = r["history"][-1]
        best = min(r["history"], key=lambda row: row.get("test_wer", float("inf")))
        yes = {True: "yes", False: "no"}
        lines.append(
            f"| {r['name']} | {r['weighting']} | {yes[r['server_training']]} | "
            f"{yes[r['pretrained']]} | {yes[r['bad']]} | {last['test_wer']:.2f} | "
            f"{last.get('test_unseen_wer', float('nan')):.2f} | "
            f"{best['test_wer']:.2f} ({best['round']}) | {r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--save_path", type=Path, default=Path("results/compare"),
                   help="output folder")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--local_epochs", type=int, default=2)
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma list from {', '.join(RUNS)}")
    p.add_argument("--update_docs", action="store_true")
    return p


def run(args: argparse.Namespace) -> None:
    names = [n for n in args.runs.split(",") if n]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise UsageError(f"--runs: unknown run(s) {', '.join(unknown)}")
    out = args.save_path if args.save_path.is_absolute() else ROOT / args.save_path
    out.mkdir(parents=True, exist_ok=True)
    if any(RUNS[n][3] for n in names):
        subprocess.run([sys.executable, "scripts/partition.py", "--tsv", "temp_dataset/train.tsv",
                        "--out_dir", str(out / "parts_bad"), "--num_clients", "3",
                        "--bad_client", "2", "--corruption", "shuffle"], cwd=ROOT, check=True)
    pretrain_seconds = None
    if any(RUNS[n][2] for n in names):  # pre-train once, outside the runs' wall times
        started = time.monotonic()
        subprocess.run([sys.executable, "scripts/pretrain.py", "--save_path", str(out / "pretrain"),
                        "--num_threads", "2"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        pretrain_seconds = time.monotonic() - started
    results = [run_one(name, out, args.rounds, args.local_epochs) for name in names]
    markdown = table(results, args.rounds, args.local_epochs)
    if pretrain_seconds is not None:
        markdown += (f"\nPre-training (`scripts/pretrain.py`, 15 epochs on the 160 utterances of "
                     f"two other voices) took {pretrain_seconds:.0f} s, not counted above.\n")
    (out / "comparison.md").write_text(markdown, encoding="utf-8")
    png = plot_histories({r["name"]: r["history"] for r in results}, out / "comparison.png",
                         title="server test WER per round (dashed: unseen voice)")
    print(markdown)
    if args.update_docs:
        update_docs_section("demo.md", "comparison", markdown, png, "comparison")


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
