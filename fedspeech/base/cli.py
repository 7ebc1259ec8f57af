"""What every command line here shares: one-line errors with exit status 2, and logging.

A user's mistake (a :class:`errors.UserError`: a missing file, a bad flag, a busy port, a bad
config, or an ``OSError`` naming its file) ends in ``error: <one line naming the file or flag>`` on
stderr and exit status 2; ``--debug`` prints the traceback before that line. Anything else is a
bug and keeps its traceback (exit status 1).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from fedspeech.base import env  # noqa: F401  (before any torch import: passive OpenMP waiting)
from fedspeech.base.errors import UserError


def is_user_error(err: BaseException) -> bool:
    """Ours to report in one line: the project's own errors, and OS errors that name a file."""
    return isinstance(err, UserError) or (
        isinstance(err, OSError) and err.filename is not None
    )


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def one_line(err: BaseException) -> str:
    text = str(err)
    if isinstance(err, OSError) and err.strerror:  # "<file>: <reason>", without "[Errno N]"
        names = [str(f) for f in (err.filename, err.filename2) if f is not None]
        text = f"{' -> '.join(names)}: {err.strerror}" if names else err.strerror
    return " ".join(text.split()) or type(err).__name__


def run_main(run: Callable[[argparse.Namespace], object], args: argparse.Namespace) -> int:
    """Call ``run(args)``; user errors become one line on stderr and exit status 2.

    With ``--debug`` the traceback comes first; the exit status stays 2. Other exceptions
    propagate with their traceback.
    """
    try:
        run(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if not is_user_error(err):
            raise
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0


def run_cli(
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], object],
    argv: list[str] | None = None,
) -> int:
    """Entry point of a script: parse, set up logging, run; return the exit status."""
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "debug", False), getattr(args, "verbose", False))
    return run_main(run, args)


def main_and_exit(
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], object],
    argv: list[str] | None = None,
) -> NoReturn:
    """Entry point of a federation process: :func:`run_cli`, then leave at once.

    A bug prints its traceback and exits 1. Leaving with ``os._exit`` matters because Flower's
    gRPC threads would otherwise keep a finished or failed process alive.
    """
    try:
        code = run_cli(parser, run, argv)
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 2
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _QuietLibraries(logging.Filter):
    """Keeps SpeechBrain's INFO chatter (model statistics, loader notes) off the terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith("speechbrain")


def setup_logging(debug: bool = False, verbose: bool = False) -> None:
    """Our own INFO lines on the terminal; SpeechBrain's only with ``verbose`` (they always go
    to the log file of :func:`log_to_file`)."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if not (verbose or debug):
        for handler in logging.getLogger().handlers:
            handler.addFilter(_QuietLibraries())
    logging.getLogger("flwr").propagate = False  # Flower prints through its own handler
    for noisy in ("speechbrain.utils.train_logger", "speechbrain.utils.checkpoints"):
        logging.getLogger(noisy).setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Flower's per-request lines


def log_to_file(path: Path, verbose: bool = False) -> None:
    """Every log line of this process, SpeechBrain's included, also into ``path`` (appended)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    if not verbose:
        logging.getLogger(__name__).debug("SpeechBrain's INFO lines go to %s only", path)
