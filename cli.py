"""What every command line here shares: one-line errors with exit status 2, shared flags, checks.

A user's mistake (a :class:`errors.UserError`: a missing file, a bad flag, a busy port, a bad
config, or an ``OSError`` naming its file) ends in ``error: <one line naming the file or flag>`` on
stderr and exit status 2; ``--debug`` prints the traceback before that line. Anything else is a
bug and keeps its traceback (exit status 1).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import process_setup  # noqa: F401  (before any torch import: passive OpenMP waiting)
from errors import UsageError, UserError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
GRPC_MAX_MESSAGE_LENGTH = 2_147_483_647  # gRPC's ceiling, Flower's default


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


def main(
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], object],
    argv: list[str] | None = None,
) -> int:
    """Entry point of a script: parse, set up logging, run; return the exit status."""
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "debug", False))
    return run_main(run, args)


def main_and_exit(
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], object],
    argv: list[str] | None = None,
) -> NoReturn:
    """Entry point of a federation process: :func:`main`, then leave at once.

    A bug prints its traceback and exits 1. Leaving with ``os._exit`` matters because Flower's
    gRPC threads would otherwise keep a finished or failed process alive.
    """
    try:
        code = main(parser, run, argv)
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 2
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def setup_logging(debug: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("flwr").propagate = False  # Flower prints through its own handler
    for noisy in ("speechbrain.utils.train_logger", "speechbrain.utils.checkpoints"):
        logging.getLogger(noisy).setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Flower's per-request lines


# ---- checks ---------------------------------------------------------------------------------
def check_writable_dir(path: str | Path, flag: str) -> Path:
    """Create ``path`` if needed and prove a file can be written there."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise UsageError(f"{flag} {path}: not writable ({err.strerror or err})") from None
    return path


def check_file(path: str | Path | None, flag: str) -> None:
    if path is not None and not Path(path).is_file():
        raise UsageError(f"{flag} {path}: no such file")


def check_at_least(value: float, minimum: float, flag: str) -> None:
    if value < minimum:
        raise UsageError(f"{flag} must be at least {minimum}, got {value}")


def check_fraction(value: float, flag: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"{flag} must be within [0, 1], got {value}")


def parse_address(address: str, flag: str = "--server_address") -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{flag} '{address}': expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)


def check_port_free(address: str, flag: str = "--server_address") -> None:
    """Fail early, with the flag named, if nothing can listen on ``address``."""
    host, port = parse_address(address, flag)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # Like gRPC: a port whose old connections linger in TIME_WAIT is free to listen on.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise UsageError(f"{flag} {address}: port {port} is already in use") from None
            raise UsageError(f"{flag} {address}: cannot listen there ({err.strerror})") from None


def read_bytes(path: str | Path, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise UsageError(f"{flag} {path}: {err.strerror or 'cannot read'}") from None


def parse_overrides(items: list[str], seed: int | None = None) -> dict[str, object]:
    """``--override KEY=VALUE`` (repeatable; VALUE is YAML) and ``--seed`` as config overrides."""
    from ruamel.yaml import YAML

    overrides: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--override '{item}': expected KEY=VALUE, e.g. batch_size=4")
        try:
            overrides[key.strip()] = YAML(typ="safe").load(value)
        except Exception as err:
            raise UsageError(f"--override '{item}': value is not valid YAML ({err})") from None
    if seed is not None:
        overrides["seed"] = seed
    return overrides


def parse_extra_tests(items: list[str]) -> dict[str, str]:
    extra = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.isidentifier() or not path:
            raise UsageError(f"--extra_test '{item}': expected NAME=TSV, e.g. unseen=test_b.tsv")
        extra[name] = path
    return extra


def config_dir(path: str) -> Path:
    """A config folder; "" is the project's (or an installed Flower App's) own ``configs/``."""
    return Path(path) if path else CONFIG_DIR


def set_threads(num_threads: int) -> None:
    """``--num_threads``: torch's CPU threads for this process (0 keeps torch's default)."""
    if num_threads > 0:
        import torch

        torch.set_num_threads(num_threads)


# ---- flags shared by several programs -------------------------------------------------------
def add_model_flags(p: argparse.ArgumentParser) -> None:
    """The flags of every program that builds the model: config, overrides, seed, device."""
    p.add_argument("--config_path", type=str, default=str(CONFIG_DIR),
                   help="folder of config files")
    p.add_argument("--config_file", type=str, default="small_cpu.yaml",
                   help="config file name inside --config_path")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override a top-level config value (repeatable; VALUE is YAML), e.g. "
                        "batch_size=4; model sizes must match on server and clients")
    p.add_argument("--seed", type=int, default=None,
                   help="random seed (default: the config's seed)")
    p.add_argument("--device", type=str, default=None,
                   help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--num_threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default); use 1 when several "
                        "processes share a few cores")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def add_data_flags(p: argparse.ArgumentParser, *, tokenizer_default: str,
                   data_path: str | None = None, save_path: str = "results") -> None:
    """``--data_path``, ``--tokenizer_path`` and ``--save_path``, the same in every program."""
    p.add_argument("--data_path", type=str, required=data_path is None, default=data_path,
                   help="Common Voice folder (holds clips/)")
    p.add_argument("--tokenizer_path", type=str, default=None,
                   help="shared tokenizer: a .model file, or transcripts (TSV/CSV) to train it "
                        f"from; default: {tokenizer_default}")
    p.add_argument("--save_path", type=str, default=save_path, help="output folder")


def add_grpc_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grpc_max_message_length", type=int, default=GRPC_MAX_MESSAGE_LENGTH,
                   help="largest gRPC message in bytes (the model travels in one; default: "
                        "gRPC's ceiling, 2 GiB)")


def check_data_flags(data_path: str, tokenizer_path: str | None, save_path: str) -> None:
    """The checks of :func:`add_data_flags`'s flags, before anything slow happens."""
    if not Path(data_path).is_dir():
        raise UsageError(f"--data_path {data_path}: no such folder")
    if tokenizer_path is not None and not Path(tokenizer_path).exists():
        raise UsageError(f"--tokenizer_path {tokenizer_path}: no such file or folder")
    check_writable_dir(save_path, "--save_path")


def check_grpc_max_message_length(value: int) -> None:
    if value < 1024:
        raise UsageError(f"--grpc_max_message_length too small: {value}")
