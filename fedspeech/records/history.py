"""A run's per-round record: ``history.json`` (atomic writes), round checkpoints, the summary table.

The plot lives in :mod:`fedspeech.records.plots`; the row type in :mod:`fedspeech.core.row`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedspeech.base.errors import UserError
from fedspeech.base.files import atomic_write, file_sha256, fsync_dir
from fedspeech.core.round import RoundSink
from fedspeech.core.row import RoundRow, extra_test_keys

logger = logging.getLogger("history")


class HistoryError(UserError):
    """A ``history.json`` that cannot be read, or a run that cannot be resumed from it."""


def write_json_atomic(data: Any, path: str | Path) -> None:
    """Write JSON to a temp file beside ``path``, fsync, then rename over it."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)


def load_history(path: str | Path) -> list[RoundRow]:
    """Rows of a ``history.json`` (a JSON list with one object per round)."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HistoryError(f"{path}: no such history file") from None
    except json.JSONDecodeError as err:
        raise HistoryError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "round" in r for r in rows):
        raise HistoryError(f"{path}: expected a JSON list of round objects")
    return [RoundRow.from_dict(r) for r in rows]


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries a run's numbers depend on."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("torch", "torchaudio", "speechbrain", "flwr", "numpy", "sentencepiece"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def summary_table(history: Sequence[RoundRow]) -> str:
    """A plain-text table of the rounds (printed by the server at the end of a run)."""
    cols = [("round", "round", "{:.0f}"), ("test_wer", "test WER", "{:.2f}"),
            ("test_cer", "test CER", "{:.2f}"), ("test_loss", "test loss", "{:.4f}"),
            ("train_loss", "train loss", "{:.4f}"), ("valid_wer", "client valid WER", "{:.2f}"),
            ("seconds", "seconds", "{:.1f}")]
    cols += [(k, k.replace("_", " ").replace("test ", "test WER ").removesuffix(" wer"), "{:.2f}")
             for k in extra_test_keys(history)]
    lines = [" | ".join(title for _, title, _ in cols)]
    for row in history:
        cells = []
        for key, _, fmt in cols:
            value = row.number(key)
            cells.append("-" if value is None else fmt.format(value))
        best = [r.round for r in history if r.best]
        mark = "  <- best (federated validation WER)" if best and row.round == best[-1] else ""
        lines.append(" | ".join(cells) + mark)
    return "\n".join(lines)


class RunStore(RoundSink):
    """A run folder: ``history.json``, the global model of the last completed round, the best one.

    Order of writes after a round, each one atomic: ``checkpoints/round_NNNN.ckpt``, then
    ``history.json`` (whose row names that file and its SHA-256), then ``global_model.ckpt`` (a
    hard link to it), then older round files are removed. A kill at any moment leaves a history
    whose last row points at an intact checkpoint, which is what ``--resume`` loads. After every
    history write the plot ``history.png`` is redrawn (a failed plot only logs a warning).
    ``best_model.ckpt`` is the model of the round with the lowest federated validation WER.
    """

    def __init__(self, save_path: str | Path, keys: Sequence[str], plot: bool = True):
        self.path = Path(save_path)
        self.keys = list(keys)
        self.checkpoints = self.path / "checkpoints"
        self.plot = plot

    @property
    def history_file(self) -> Path:
        return self.path / "history.json"

    def save_round(self, rnd: int, weights: Sequence[Any] | None,
                   history: list[RoundRow]) -> None:
        """Record round ``rnd``: its model (when given) and the whole history."""
        from weights import save_checkpoint, weights_to_state_dict

        ckpt = None
        if weights is not None:
            ckpt = self.checkpoints / f"round_{rnd:04d}.ckpt"
            save_checkpoint(weights_to_state_dict(weights, self.keys), ckpt)
            row = next(r for r in history if r.round == rnd)
            row.model_checkpoint = str(ckpt.relative_to(self.path))
            row.model_sha256 = file_sha256(ckpt)
        write_json_atomic([row.to_dict() for row in history], self.history_file)
        if ckpt is not None:
            _link_or_copy(ckpt, self.path / "global_model.ckpt")
            for old in self.checkpoints.glob("round_*.ckpt"):
                if old != ckpt:
                    old.unlink(missing_ok=True)
        if self.plot:
            self._draw(history)

    def save_best(self, rnd: int, weights: Sequence[Any]) -> None:
        from weights import save_checkpoint, weights_to_state_dict

        save_checkpoint(weights_to_state_dict(weights, self.keys), self.path / "best_model.ckpt")
        logger.info("round %d: best federated validation WER so far, saved %s", rnd,
                    self.path / "best_model.ckpt")

    def _draw(self, history: list[RoundRow]) -> None:
        from fedspeech.records.plots import plot_histories

        try:
            plot_histories({self.path.name: history}, self.path / "history.png")
        except Exception as err:  # a plot must never stop a federation
            logger.warning("could not draw %s: %s", self.path / "history.png", err)

    def load_latest(self) -> tuple[list[RoundRow], dict[str, Any]]:
        """History and model state of the last completed round, checked against each other."""
        from weights import load_checkpoint

        if not self.history_file.is_file():
            raise HistoryError(f"--resume: no {self.history_file} to resume from")
        history = load_history(self.history_file)
        if not history:
            raise HistoryError(f"--resume: {self.history_file} has no completed round")
        last = history[-1]
        ckpt = self.path / str(last.model_checkpoint or "")
        if not last.model_checkpoint or not ckpt.is_file():
            raise HistoryError(f"--resume: checkpoint of round {last.round} missing ({ckpt})")
        if file_sha256(ckpt) != last.model_sha256:
            raise HistoryError(f"--resume: {ckpt} does not match the history's SHA-256")
        return history, load_checkpoint(ckpt)


def _link_or_copy(source: Path, target: Path) -> None:
    """Atomically make ``target`` the same file as ``source`` (hard link, else a fsynced copy)."""
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        with atomic_write(target) as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out)
        return
    os.replace(tmp, target)
    fsync_dir(target.parent)
