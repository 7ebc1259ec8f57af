"""The run's picture: server test WER, test loss and client train loss per round (PNG)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from fedspeech.base.files import atomic_write
from fedspeech.core.row import RoundRow, extra_test_keys


def _series(history: Sequence[RoundRow], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in history:
        value = row.number(key)
        if value is not None:
            xs.append(row.round)
            ys.append(value)
    return xs, ys


def plot_histories(
    runs: Mapping[str, Sequence[RoundRow]], out_path: str | Path, title: str | None = None
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
        for key in extra_test_keys(history):
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
    return save_figure(fig, out_path)


def save_figure(fig, out_path: str | Path) -> Path:
    """Write a matplotlib figure as a PNG, atomically, and close it (every plot here)."""
    import matplotlib.pyplot as plt

    out_path = Path(out_path)
    try:
        with atomic_write(out_path) as f:
            fig.savefig(f, dpi=100, format="png")
    finally:
        plt.close(fig)
    return out_path
