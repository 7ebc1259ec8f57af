"""Checks of flag and setting values that need nothing but the standard library.

Each failed check is a :class:`~fedspeech.base.errors.UsageError` whose one line names the flag.
"""

from __future__ import annotations

import errno
import math
import socket
import tempfile
from pathlib import Path
from typing import Any

from fedspeech.base.errors import UsageError


def is_finite(value: Any) -> bool:
    """A real number (not a bool) that is neither NaN nor infinite: the one test every metric
    a client reports, and every history cell, must pass before it is used."""
    return (not isinstance(value, bool) and isinstance(value, int | float)
            and math.isfinite(value))


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float when :func:`is_finite`, else None."""
    return float(value) if is_finite(value) else None


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


def parse_extra_tests(items: list[str]) -> dict[str, str]:
    extra = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.isidentifier() or not path:
            raise UsageError(f"--extra_test '{item}': expected NAME=TSV, e.g. unseen=test_b.tsv")
        extra[name] = path
    return extra


def check_data_flags(data_path: str, tokenizer_path: str | None, save_path: str | Path) -> None:
    """``--data_path`` is a folder, ``--tokenizer_path`` exists, ``--save_path`` is writable."""
    if not Path(data_path).is_dir():
        raise UsageError(f"--data_path {data_path}: no such folder")
    if tokenizer_path is not None and not Path(tokenizer_path).exists():
        raise UsageError(f"--tokenizer_path {tokenizer_path}: no such file or folder")
    check_writable_dir(save_path, "--save_path")


def check_grpc_max_message_length(value: int) -> None:
    if value < 1024:
        raise UsageError(f"--grpc_max_message_length too small: {value}")
