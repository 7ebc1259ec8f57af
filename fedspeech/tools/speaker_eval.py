#!/usr/bin/env python3
"""Leave-one-speaker-out evaluation: federated against centralised training on real speech.

For each held-out speaker of a Common Voice folder (speakers are ``client_id`` values), a real
federation (``scripts/launch.py``: one client per remaining speaker, server-side training on
held-out takes of those speakers) and centralised training on their pooled takes with the same
schedule (:func:`fedspeech.roles.centralised.train_centralised`). Reports the WER on the held-out
speaker and on new takes of the training speakers, and wall times, per fold and on average:
``<save_path>/speaker_eval.{md,json,png}``; ``--update_docs`` also writes them into
docs/real-speech.md (between the real-speech markers) and ``docs/speaker_eval.png``.

    python scripts/speaker_eval.py ../shared/data/fsdd4 --update_docs
    python scripts/speaker_eval.py ../shared/data/fsdd4 --folds speaker_george --rounds 5
    python scripts/speaker_eval.py ../shared/data/fsdd4 --resume --update_docs  # kept folds
    python scripts/speaker_eval.py ../shared/data/fsdd4 --pretrained results/pretrain_real
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common_voice_prepare import read_tsv
from fedspeech.base.checks import check_at_least, check_file, check_fraction
from fedspeech.base.cli import ArgumentParser, run_cli
from fedspeech.base.errors import UsageError
from fedspeech.base.paths import ROOT
from fedspeech.records.history import load_history, write_json_atomic
from fedspeech.records.plots import save_figure
from fedspeech.roles.centralised import train_centralised
from fedspeech.speech.config import parse_overrides
from fedspeech.speech.folds import Fold, make_folds, write_fold
from fedspeech.speech.model import set_threads
from fedspeech.speech.text import normalize_sentence
from fedspeech.speech.tokenizer import Tokenizer
from fedspeech.tools.docs_section import update_docs_section
from fedspeech.tools.flags import add_model_flags

RUN_KINDS = ("federated", "centralised")


def run_federated(fold_dir: Path, files: dict[str, Path], args: argparse.Namespace,
                  n_clients: int) -> dict:
    """One federation over real processes; its last round's WERs and the wall time."""
    save = fold_dir / "federated"
    shutil.rmtree(save, ignore_errors=True)
    cmd = [
        sys.executable, "scripts/launch.py", "--num_clients", str(n_clients),
        "--data_path", str(args.data_dir), "--tr_path", str(fold_dir),
        "--dev_path", str(files["dev"]), "--test_path", str(files["test"]),
        "--tr_add_path", str(files["server"]) if args.server_training else "",
        "--extra_test", f"unseen={files['unseen']}", "--tokenizer_path", str(files["train"]),
        "--config_file", args.config_file, "--rounds", str(args.rounds),
        "--local_epochs", str(args.local_epochs), "--save_path", str(save),
        "--num_threads", str(args.num_threads or 1),
    ]
    extra = [x for item in args.override for x in ("--override", item)]
    if args.seed is not None:
        extra += ["--seed", str(args.seed)]
    if args.pretrained:
        cmd += ["--pre_train_model_path", str(args.pretrained)]
    if extra:
        cmd += ["--server_args", *extra, "--client_args", *extra]
    started = time.monotonic()
    result = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"speaker_eval: federation failed:\n{result.stderr[-2000:]}")
    last = load_history(save / "history.json")[-1]
    return {"test_wer": last["test_wer"], "unseen_wer": last["test_unseen_wer"],
            "seconds": seconds}


def settings(args: argparse.Namespace) -> dict:
    """What a fold's result depends on: a kept result is reused only if these match."""
    return {k: str(getattr(args, k)) for k in (
        "data_dir", "tsv", "rounds", "local_epochs", "dev_frac", "test_frac", "server_frac",
        "unseen_max", "server_training", "config_file", "override", "seed", "pretrained")}


def run_fold(fold: Fold, args: argparse.Namespace, kinds: list[str]) -> dict:
    fold_dir = args.save_path / fold.held_out
    kept = fold_dir / "result.json"
    result: dict = {"held_out": fold.held_out, "clients": len(fold.clients),
                    "sizes": {k: len(v) for k, v in fold.parts.items()} | {
                        "unseen": len(fold.unseen)}}
    if args.resume and kept.is_file():
        old = json.loads(kept.read_text(encoding="utf-8"))
        if old.get("settings") == settings(args):
            # Keep the runs already made with these settings; make only the missing ones (the
            # federated runs can be timed alone, the centralised ones made later).
            result |= {k: old[k] for k in RUN_KINDS if k in old}
            kinds = [k for k in kinds if k not in old]
            if not kinds:
                print(f"speaker_eval: {fold.held_out}: kept result from {kept}", flush=True)
                return result
    files = write_fold(fold, fold_dir)
    if "federated" in kinds:
        result["federated"] = run_federated(fold_dir, files, args, len(fold.clients))
        print(f"speaker_eval: {fold.held_out}: federated {result['federated']}", flush=True)
    if "centralised" in kinds:
        started = time.monotonic()
        out = fold_dir / "centralised"
        shutil.rmtree(out, ignore_errors=True)
        central = train_centralised(
            Path(args.config_path) / args.config_file, files, args.data_dir, out,
            rounds=args.rounds, local_epochs=args.local_epochs,
            server_training=args.server_training,
            overrides=parse_overrides(args.override, args.seed),
            pretrained=args.pretrained,
        )
        result["centralised"] = central | {"seconds": time.monotonic() - started}
        print(f"speaker_eval: {fold.held_out}: centralised {result['centralised']}", flush=True)
    write_json_atomic(result | {"settings": settings(args)}, kept)
    return result


def fmt(result: dict, kind: str, key: str, digits: int = 2) -> str:
    value = result.get(kind, {}).get(key)
    return "-" if value is None else f"{value:.{digits}f}"


def mean_row(results: list[dict]) -> dict:
    mean: dict = {"held_out": "**mean**"}
    for kind in RUN_KINDS:
        keys = {k for r in results for k in r.get(kind, {})}
        mean[kind] = {k: sum(r[kind][k] for r in results) / len(results)
                      for k in keys if all(k in r.get(kind, {}) for r in results)}
    return mean


def table(results: list[dict], args: argparse.Namespace) -> str:
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    sizes = results[0]["sizes"]
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {machine} (CPU only) by "
        f"`scripts/speaker_eval.py {args.data_dir.name}`: leave one speaker out; one client per "
        f"remaining speaker, {args.rounds} rounds x {args.local_epochs} local epochs, "
        f"`{args.config_file}`, seed {args.seed if args.seed is not None else 'of the config'}. "
        f"Per training speaker, its takes split into train / dev / new-takes test / server "
        f"held-out (fold 1: {sizes['train']} / {sizes['dev']} / {sizes['test']} / "
        f"{sizes['server']} pooled; {sizes['unseen']} takes of the held-out speaker). "
        "Centralised: the same schedule (same passes over the same utterances) on pooled data. "
        + (f"Both start from the pre-trained `{args.pretrained.name}` (`scripts/pretrain.py`, "
           "other speakers; not in the wall times). " if args.pretrained else "")
        + "WER in %, after the last round.",
        "",
        "| held-out speaker | federated WER, held-out speaker | centralised WER, held-out "
        "speaker | fed/central | federated WER, new takes | centralised WER, new takes | "
        "federated wall time (s) | centralised wall time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in [*results, mean_row(results)]:
        fed, cen = r.get("federated", {}), r.get("centralised", {})
        ratio = "-"
        if "unseen_wer" in fed and "unseen_wer" in cen and cen["unseen_wer"] > 0:
            ratio = f"{fed['unseen_wer'] / cen['unseen_wer']:.2f}"
        lines.append(
            f"| {r['held_out']} | {fmt(r, 'federated', 'unseen_wer')} | "
            f"{fmt(r, 'centralised', 'unseen_wer')} | {ratio} | "
            f"{fmt(r, 'federated', 'test_wer')} | {fmt(r, 'centralised', 'test_wer')} | "
            f"{fmt(r, 'federated', 'seconds', 0)} | {fmt(r, 'centralised', 'seconds', 0)} |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> Path:
    """Bars: held-out-speaker WER and new-takes WER per fold, federated beside centralised."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [*results, mean_row(results) | {"held_out": "mean"}]
    names = [r["held_out"].removeprefix("speaker_") for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    width = 0.38
    for ax, key, title in ((axes[0], "unseen_wer", "held-out speaker"),
                           (axes[1], "test_wer", "new takes of training speakers")):
        for i, kind in enumerate(RUN_KINDS):
            values = [r.get(kind, {}).get(key, 0.0) for r in rows]
            xs = [x + (i - 0.5) * width for x in range(len(rows))]
            ax.bar(xs, values, width, label=kind)
        ax.set_xticks(range(len(rows)), names)
        ax.set_ylabel("WER (%)")
        ax.set_title(title)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_dir", type=Path, help="Common Voice folder (clips/ and a TSV)")
    p.add_argument("--tsv", default="all.tsv", help="TSV inside data_dir with every speaker")
    p.add_argument("--folds", default="", help="comma list of held-out speakers (default: all)")
    p.add_argument("--runs", default=",".join(RUN_KINDS), help="federated, centralised or both")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--local_epochs", type=int, default=2)
    p.add_argument("--dev_frac", type=float, default=0.04)
    p.add_argument("--test_frac", type=float, default=0.1)
    p.add_argument("--server_frac", type=float, default=0.1)
    p.add_argument("--unseen_max", type=int, default=0,
                   help="evaluate on at most this many takes of the held-out speaker (0: all)")
    p.add_argument("--no_server_training", dest="server_training", action="store_false")
    p.add_argument("--save_path", type=Path, default=Path("results/speakers"))
    p.add_argument("--resume", action="store_true",
                   help="reuse a fold's kept runs (<save_path>/<speaker>/result.json) made "
                        "with the same settings and make only the missing ones: run folds one "
                        "by one, or the federated runs first and the centralised ones later, "
                        "then tabulate")
    p.add_argument("--pretrained", type=Path, default=None, metavar="DIR",
                   help="start both runs of every fold from DIR/model.ckpt with "
                        "DIR/tokenizer.model (scripts/pretrain.py, on other speakers)")
    p.add_argument("--update_docs", action="store_true")
    add_model_flags(p)
    p.set_defaults(config_file="real_cpu.yaml")
    return p


def check_pretrained(folder: Path, rows: list[dict[str, str]], tsv: Path) -> None:
    """A ``scripts/pretrain.py`` folder whose tokenizer can write every word of ``rows``."""
    for name in ("model.ckpt", "tokenizer.model"):
        check_file(folder / name, "--pretrained")
    lines = [normalize_sentence(row["sentence"]) for row in rows]
    unknown = Tokenizer(folder / "tokenizer.model").unknown_words(lines)
    if unknown:
        raise UsageError(f"--pretrained {folder}: its tokenizer has no tokens for "
                         f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} of {tsv}")


def run(args: argparse.Namespace) -> list[dict]:
    check_at_least(args.rounds, 1, "--rounds")
    check_at_least(args.local_epochs, 1, "--local_epochs")
    for flag in ("dev_frac", "test_frac", "server_frac"):
        check_fraction(getattr(args, flag), f"--{flag}")
    kinds = [k for k in args.runs.split(",") if k]
    if not kinds or any(k not in RUN_KINDS for k in kinds):
        raise UsageError(f"--runs: expected a comma list of {', '.join(RUN_KINDS)}")
    if not (args.data_dir / "clips").is_dir():
        raise UsageError(f"{args.data_dir}: no clips/ folder (not a Common Voice folder)")
    args.data_dir = args.data_dir.resolve()
    args.save_path = args.save_path if args.save_path.is_absolute() else ROOT / args.save_path
    rows = read_tsv(args.data_dir / args.tsv)
    if args.pretrained:
        args.pretrained = args.pretrained.resolve()
        check_pretrained(args.pretrained, rows, args.data_dir / args.tsv)
    fractions = {"dev": args.dev_frac, "test": args.test_frac, "server": args.server_frac}
    folds = make_folds(rows, seed=1234 if args.seed is None else args.seed,
                       fractions=fractions, unseen_max=args.unseen_max or None)
    wanted = [f for f in args.folds.split(",") if f]
    unknown = sorted(set(wanted) - {f.held_out for f in folds})
    if unknown:
        raise UsageError(f"--folds: unknown speaker(s) {', '.join(unknown)} (speakers: "
                         f"{', '.join(f.held_out for f in folds)})")
    folds = [f for f in folds if not wanted or f.held_out in wanted]
    set_threads(args.num_threads or 1)
    results = [run_fold(fold, args, kinds) for fold in folds]
    markdown = table(results, args)
    out = args.save_path
    (out / "speaker_eval.md").write_text(markdown, encoding="utf-8")
    write_json_atomic({"folds": results, "mean": mean_row(results), "args": {
        k: str(v) for k, v in vars(args).items()}}, out / "speaker_eval.json")
    png = plot(results, out / "speaker_eval.png")
    print(markdown)
    if args.update_docs:
        update_docs_section("real-speech.md", "real-speech", markdown, png, "speaker evaluation")
    return results


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
