#!/usr/bin/env python3
"""Draw one or several runs' ``history.json`` into a PNG (server test WER and loss, client train
loss per round). Each argument is a history file or a run folder holding one; ``NAME=PATH`` sets
the legend label.

    python scripts/plot_history.py results/demo
    python scripts/plot_history.py fedavg=results/a wer=results/b --out compare.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedspeech.base.cli import ArgumentParser, run_cli
from fedspeech.base.errors import UsageError
from fedspeech.records.history import load_history
from fedspeech.records.plots import plot_histories


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="history.json or run folder, optionally NAME=PATH")
    p.add_argument("--out", type=Path, default=None,
                   help="PNG to write (default: history.png beside a single run's history)")
    p.add_argument("--title", default=None)
    return p


def run(args: argparse.Namespace) -> None:
    runs = {}
    for item in args.runs:
        name, sep, path = item.partition("=")
        path = Path(path if sep else item)
        if path.is_dir():
            path = path / "history.json"
        runs[name if sep else path.parent.name] = load_history(path)
    out = args.out
    if out is None:
        if len(runs) > 1:
            raise UsageError("--out is required when plotting several runs")
        out = path.parent / "history.png"
    print(plot_histories(runs, out, args.title))


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
