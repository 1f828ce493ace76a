"""What every training job does around its loop: its inputs, the fingerprint that decides
whether it may resume, the per-epoch progress line (with an ETA) and MLflow metrics, and the
compute record it leaves next to its model.

A job's config is the JSON file the workflow wrote for it (`results/<exp>/jobs/...`): the
config sections it reads, its `seed`, and a `job` section naming the run (MLflow run name,
stage, variant, seed, the k and epochs it uses) that is identity, not result.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssrl.files import write_json
from ssrl.training.checkpoints import fingerprint

log = logging.getLogger("ssrl.train")


@dataclass(frozen=True)
class Inputs:
    """The files a training job reads (None where a stage has no such input)."""

    train: Path
    noise: Path | None = None
    rir: Path | None = None
    dev: Path | None = None
    init: Path | None = None
    labels: Path | None = None

    def fingerprint(self, cfg: dict) -> str:
        # The dev set only feeds the per-epoch curves, not the weights; it still names the run.
        return fingerprint(cfg, {"train": self.train, "noise": self.noise, "rir": self.rir,
                                 "dev": self.dev, "init": self.init, "labels": self.labels})


def _fmt_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """Per-epoch bookkeeping: one log line with the epoch's numbers and an ETA, the same
    numbers to MLflow at the 1-based epoch, and the history row kept for history.json."""

    SHOWN = ("loss", "n_clusters", "nmi", "changed", "p_clean_mean", "dev/eer")

    def __init__(self, epochs: int, history: list[dict], tracker: Any = None) -> None:
        self.epochs, self.history, self.tracker = epochs, history, tracker
        self._t0 = time.time()
        self._done_here = 0  # epochs run by this process (a resumed run starts mid-way)

    def epoch(self, row: dict[str, Any]) -> None:
        self._done_here += 1
        self.history.append(row)
        per_epoch = (time.time() - self._t0) / self._done_here
        left = per_epoch * (self.epochs - row["epoch"])
        shown = "  ".join(f"{k.removeprefix('dev/')} {row[k]:.4g}" if k != "dev/eer"
                          else f"dev EER {row[k]:.2f}%" for k in self.SHOWN if k in row)
        log.info("epoch %d/%d  %s  (%s, ETA %s)", row["epoch"], self.epochs, shown,
                 _fmt_seconds(row["seconds"]), _fmt_seconds(left))
        if self.tracker is not None:
            self.tracker.log_metrics({k: float(v) for k, v in row.items()
                                      if k != "epoch" and isinstance(v, int | float)},
                                     step=row["epoch"])


def compute_record(history: list[dict], steps_per_epoch: int, batch_size: int,
                   n_utts: int) -> dict[str, float]:
    """What the stage cost: wall time of its epochs, steps, and passes over the training data
    (cumulative compute of DINO + SSRL vs DINO + five rounds is compared in these units)."""
    epochs = len(history)
    return {"wall_seconds": float(sum(row.get("seconds", 0.0) for row in history)),
            "epochs": epochs, "steps": epochs * steps_per_epoch,
            "utterance_passes": epochs * steps_per_epoch * batch_size / n_utts}


def write_records(out: Path, history: list[dict], compute: dict, tracker: Any = None) -> None:
    """history.json and compute.json next to the model; both, and the model file, to the
    MLflow run (with the per-epoch trajectory figure where there are labels to plot)."""
    write_json(out / "history.json", history)
    write_json(out / "compute.json", compute)
    if tracker is not None:
        tracker.log_metrics({f"compute/{k}": v for k, v in compute.items()}, step=0)
        tracker.log_artifact(out / "history.json")
        tracker.log_artifact(out / "model.pt", "model")
        if any("n_clusters" in row for row in history):
            from ssrl.report.plots import plot_history

            plot_history(history, out / "trajectory.png", title=out.name)
            tracker.log_artifact(out / "trajectory.png")
