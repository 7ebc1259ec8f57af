"""A run's per-round record: ``history.json`` (atomic writes), its summary table and its plot."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from atomic_file import atomic_write

Row = dict[str, Any]


def write_json_atomic(data: Any, path: str | Path) -> None:
    """Write JSON to a temp file beside ``path``, fsync, then rename over it."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)


def load_history(path: str | Path) -> list[Row]:
    """Rows of a ``history.json`` (a JSON list with one object per round)."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such history file") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "round" in r for r in rows):
        raise ValueError(f"{path}: expected a JSON list of round objects")
    return rows


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


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _extra_test_keys(history: Sequence[Row]) -> list[str]:
    """``test_<name>_wer`` of the extra test sets (``--extra_test``), sorted."""
    return sorted({k for row in history for k in row
                   if k.startswith("test_") and k.endswith("_wer") and k != "test_wer"})


def summary_table(history: Sequence[Row]) -> str:
    """A plain-text table of the rounds (printed by the server at the end of a run)."""
    cols = [("round", "round", "{:.0f}"), ("test_wer", "test WER", "{:.2f}"),
            ("test_cer", "test CER", "{:.2f}"), ("test_loss", "test loss", "{:.4f}"),
            ("train_loss", "train loss", "{:.4f}"), ("valid_wer", "client valid WER", "{:.2f}"),
            ("seconds", "seconds", "{:.1f}")]
    cols += [(k, k.replace("_", " ").replace("test ", "test WER ").removesuffix(" wer"), "{:.2f}")
             for k in _extra_test_keys(history)]
    lines = [" | ".join(title for _, title, _ in cols)]
    for row in history:
        cells = []
        for key, _, fmt in cols:
            value = _number(row.get(key))
            cells.append("-" if value is None else fmt.format(value))
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def _series(history: Sequence[Row], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in history:
        value = _number(row.get(key))
        if value is not None:
            xs.append(int(row["round"]))
            ys.append(value)
    return xs, ys


def plot_histories(
    runs: Mapping[str, Sequence[Row]], out_path: str | Path, title: str | None = None
) -> Path:
    """Draw server test WER (solid; extra test sets dashed), test loss and client train loss per
    round for one or several runs into a PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_wer, ax_loss, ax_train) = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, history) in enumerate(runs.items()):
        colour = colours[i % len(colours)]
        ax_wer.plot(*_series(history, "test_wer"), "o-", color=colour, label=name)
        for key in _extra_test_keys(history):
            label = f"{name}: {key.removeprefix('test_').removesuffix('_wer')}"
            ax_wer.plot(*_series(history, key), "x--", color=colour, alpha=0.7, label=label)
        ax_loss.plot(*_series(history, "test_loss"), "o-", color=colour, label=name)
        ax_train.plot(*_series(history, "train_loss"), "o-", color=colour, label=name)
    for ax, label in ((ax_wer, "server test WER (%)"), (ax_loss, "server test loss"),
                      (ax_train, "client train loss (weighted mean)")):
        ax.set_xlabel("round")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    if len(runs) == 1:
        ax_wer.legend(fontsize=8)
        fig.tight_layout()
    else:  # many lines: the legend goes under the panels, not over the curves
        handles, labels = ax_wer.get_legend_handles_labels()
        ncol = 4
        rows = -(-len(labels) // ncol)
        fig.set_size_inches(15, 4.2 + 0.25 * rows)
        fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.25 * rows / (4.2 + 0.25 * rows) + 0.02, 1, 1))
    out_path = Path(out_path)
    try:
        with atomic_write(out_path) as f:
            fig.savefig(f, dpi=100, format="png")
    finally:
        plt.close(fig)
    return out_path


class RunStore:
    """A run folder: ``history.json`` plus the global model of the last completed round.

    Order of writes after a round, each one atomic: ``checkpoints/round_NNNN.ckpt``, then
    ``history.json`` (whose row names that file and its SHA-256), then ``global_model.ckpt`` (a
    hard link to it), then older round files are removed. A kill at any moment leaves a history
    whose last row points at an intact checkpoint, which is what ``--resume`` loads.
    """

    def __init__(self, save_path: str | Path, keys: Sequence[str]):
        self.path = Path(save_path)
        self.keys = list(keys)
        self.checkpoints = self.path / "checkpoints"

    @property
    def history_file(self) -> Path:
        return self.path / "history.json"

    def save_round(self, rnd: int, weights: Sequence[Any] | None, history: list[Row]) -> None:
        """Record round ``rnd``: its model (when given) and the whole history."""
        from tokenizer import file_sha256
        from weights import save_checkpoint, weights_to_state_dict

        ckpt = None
        if weights is not None:
            ckpt = self.checkpoints / f"round_{rnd:04d}.ckpt"
            save_checkpoint(weights_to_state_dict(weights, self.keys), ckpt)
            row = next(r for r in history if r["round"] == rnd)
            row["model_checkpoint"] = str(ckpt.relative_to(self.path))
            row["model_sha256"] = file_sha256(ckpt)
        write_json_atomic(history, self.history_file)
        if ckpt is not None:
            _link_or_copy(ckpt, self.path / "global_model.ckpt")
            for old in self.checkpoints.glob("round_*.ckpt"):
                if old != ckpt:
                    old.unlink(missing_ok=True)

    def load_latest(self) -> tuple[list[Row], dict[str, Any]]:
        """History and model state of the last completed round, checked against each other."""
        from tokenizer import file_sha256
        from weights import load_checkpoint

        if not self.history_file.is_file():
            raise ValueError(f"--resume: no {self.history_file} to resume from")
        history = load_history(self.history_file)
        if not history:
            raise ValueError(f"--resume: {self.history_file} has no completed round")
        last = history[-1]
        ckpt = self.path / str(last.get("model_checkpoint", ""))
        if not last.get("model_checkpoint") or not ckpt.is_file():
            raise ValueError(f"--resume: checkpoint of round {last['round']} missing ({ckpt})")
        if file_sha256(ckpt) != last.get("model_sha256"):
            raise ValueError(f"--resume: {ckpt} does not match the history's SHA-256")
        return history, load_checkpoint(ckpt)


def _link_or_copy(source: Path, target: Path) -> None:
    """Atomically make ``target`` the same file as ``source`` (hard link, else a copy)."""
    import shutil

    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)
