"""Atomic file writes: a temp file beside the target, fsync, then rename over it.

Every file this project writes for later use (checkpoints, ``history.json``, prepared CSVs, the
tokenizer, plots) goes through :func:`atomic_write`, so a crash or a full disk at any moment leaves
the previous version intact and no temp file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """Yield a file for the new content of ``path``; it replaces ``path`` only if all went well."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
