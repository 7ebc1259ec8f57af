"""Where the project's own files are, in a checkout and inside an installed Flower App alike."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the folder holding fedspeech/, configs/, scripts/
CONFIG_DIR = ROOT / "configs"


def config_dir(path: str | Path | None) -> Path:
    """A config folder; "" or None is the project's (or an installed Flower App's) ``configs/``."""
    return Path(path) if path else CONFIG_DIR
