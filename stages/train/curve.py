"""The training curve: one row per optimizer step (loss, learning rate, training time) and one per
validation, recorded without stalling the GPU and written as training_curve.csv and training_curve.png."""

from __future__ import annotations

import csv
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("eft.train")

# train_seconds: training time (steps only) when the step finished; throughput over any window of steps.
CURVE_FIELDS = ("step", "epoch", "loss", "lr", "val_loss", "val_ndcg@10", "train_seconds")
REPORT_SECONDS = 30  # a progress line at most this often (and for the last step)


class StepLog:
    """Appends each step's row to ``state.curve`` and counts ``state.train_seconds`` (time in steps only).

    Reading a loss back makes the host wait for the GPU, so each step's loss is read after the next step
    has been queued (``record`` flushes the previous step): the GPU never idles for the read, and the host
    never runs more than one step ahead, so train_seconds stays true to within a step."""

    def __init__(self, state, *, total_steps: int, epochs: int, progress: Callable[[str], None]):
        self.state = state
        self.total_steps = total_steps
        self.epochs = epochs
        self.progress = progress
        self.pending: tuple[dict[str, Any], Any] | None = None  # a row and its loss, still on the device
        self.clock = time.perf_counter()
        self.last_report = time.monotonic()

    def record(self, row: dict[str, Any], loss) -> None:
        """A step just queued: flush the previous one and keep this one pending."""
        self.flush()
        self.pending = (row, loss)

    def restart_clock(self) -> None:
        """After work that is not training (checkpoints, validation): that time is not train_seconds."""
        self.clock = time.perf_counter()

    def flush(self) -> None:
        """Record the pending step, if any: its loss (waits for the GPU to finish it) and the time it finished."""
        row = None
        if self.pending is not None:
            (row, loss_t), self.pending = self.pending, None
            row["loss"] = round(float(loss_t), 6)
        now = time.perf_counter()
        self.state.train_seconds += now - self.clock
        self.clock = now
        if row is None:
            return
        row["train_seconds"] = round(self.state.train_seconds, 3)
        self.state.curve.append(row)
        if time.monotonic() - self.last_report > REPORT_SECONDS or row["step"] == self.total_steps:
            self.last_report = time.monotonic()
            self.progress(f"step {row['step']}/{self.total_steps} epoch {math.ceil(row['epoch'])}/{self.epochs} "
                          f"loss {row['loss']:.4f} lr {row['lr']:.2e} "
                          f"{self.state.rows_seen / max(self.state.train_seconds, 1e-9):.1f} rows/s")


def write_curve(out: Path, curve: list[dict[str, Any]]) -> None:
    with open(out / "training_curve.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CURVE_FIELDS)
        w.writeheader()
        for row in curve:
            w.writerow({k: row.get(k, "") for k in CURVE_FIELDS})
    try:
        plot_curve(out / "training_curve.png", curve)
    except Exception as exc:  # a plot is a nicety; never fail the stage for it
        log.warning("could not draw the training curve: %s", exc)


def plot_curve(path: Path, curve: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    _plot_loss(ax1, curve)
    _plot_validation(ax2, curve)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_loss(ax, curve: list[dict[str, Any]]) -> None:
    steps = [c["step"] for c in curve if c["loss"] != ""]
    losses = [c["loss"] for c in curve if c["loss"] != ""]
    if steps:
        ax.plot(steps, losses, lw=0.8, alpha=0.5, label="train loss")
        w = max(1, len(losses) // 20)
        if w > 1:
            windows = [losses[max(0, i - w + 1) : i + 1] for i in range(len(losses))]
            smooth = [sum(x) / len(x) for x in windows]
            ax.plot(steps, smooth, lw=1.5, label=f"train loss (mean of {w})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    ax.legend(loc="upper right")


def _plot_validation(ax, curve: list[dict[str, Any]]) -> None:
    import matplotlib.ticker

    val = [c for c in curve if c["val_ndcg@10"] != ""]
    if not val:
        ax.text(0.5, 0.5, "no dev split: no validation", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    ep = [c["epoch"] for c in val]
    ax.plot(ep, [c["val_ndcg@10"] for c in val], "o-", color="tab:green", label="val nDCG@10")
    ax.set_xlabel("epoch (0 = base model)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("nDCG@10", color="tab:green")
    ax3 = ax.twinx()
    ax3.plot(ep, [c["val_loss"] for c in val], "s--", color="tab:red", label="val loss")
    ax3.set_ylabel("val loss", color="tab:red")
    ax.set_title("validation (dev split)")
