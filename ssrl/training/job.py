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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssrl.files import write_json
from ssrl.tracking.mlflow_run import NULL_TRACKER, Tracking
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


#: History keys that describe the pseudo labels (quality against the true speakers, cluster
#: count, changes, the noisy-label model): MLflow files them under `labels/` so a researcher
#: finds them together (`labels/clusters`, `labels/nmi`, ...).
LABEL_KEYS = ("n_clusters", "nmi", "purity", "inverse_purity", "hungarian_acc", "changed",
              "p_clean_mean")


def mlflow_key(key: str) -> str:
    """A history key's MLflow name: label metrics under `labels/`, the rest unchanged."""
    if key == "n_clusters":
        return "labels/clusters"
    if key in LABEL_KEYS or key.startswith("clean_"):
        return f"labels/{key}"
    return key


def mlflow_metrics(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of a history row under their MLflow names (the epoch is the step)."""
    return {mlflow_key(k): float(v) for k, v in row.items()
            if k != "epoch" and isinstance(v, int | float)}


class Progress:
    """Per-epoch bookkeeping: one log line with the epoch's numbers and an ETA, the same
    numbers to MLflow at the 1-based epoch (plus `step_offset`: the epochs of the rounds
    before, so a chain of rounds shares one running epoch axis), and the history row kept
    for history.json."""

    SHOWN = ("loss", "n_clusters", "nmi", "changed", "p_clean_mean", "dev/eer")

    def __init__(self, epochs: int, history: list[dict], tracker: Tracking = NULL_TRACKER,
                 step_offset: int = 0) -> None:
        self.epochs, self.history, self.tracker = epochs, history, tracker
        self.step_offset = step_offset
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
        self.tracker.log_metrics(mlflow_metrics(row), step=self.step_offset + row["epoch"])


def effective_params(cfg: dict, device: Any, section: str,
                     momentum_at: Any = None) -> dict[str, Any]:
    """What actually ran, logged as the run's params in place of the requested values (the
    requested config is the run's `config/job.json` artifact): the device, whether bf16
    autocast and GPU augmentation were active (both need CUDA), whether the encoders were
    compiled, and the EMA momentum schedule after `teacher_lag_epochs` (or "unused" without an
    EMA teacher)."""
    cuda = getattr(device, "type", str(device)) == "cuda"
    momentum: dict[str, Any] = {"momentum_start": "unused (no EMA teacher)",
                                "momentum_end": "unused (no EMA teacher)"}
    if momentum_at is not None and len(momentum_at):
        momentum = {"momentum_start": round(float(momentum_at[0]), 6),
                    "momentum_end": round(float(momentum_at[-1]), 6)}
    return {"runtime": {"device": str(device), "bf16": bool(cfg["runtime"].get("bf16")) and cuda,
                        "compile": bool(cfg["runtime"].get("compile"))},
            "augment": {"on_gpu": bool(cfg["augment"].get("on_gpu")) and cuda},
            section: momentum}


#: The requested keys `effective_params` replaces (not logged as params when the job starts).
EFFECTIVE_KEYS = {"runtime": ("device", "bf16", "compile"), "augment": ("on_gpu",),
                  "dino": ("momentum_start", "momentum_end"),
                  "ssrl": ("momentum_start", "momentum_end")}


def compute_record(history: list[dict], steps_per_epoch: int, batch_size: int,
                   n_utts: int) -> dict[str, float]:
    """What the stage cost: wall time of its epochs, steps, and passes over the training data
    (cumulative compute of DINO + SSRL vs DINO + five rounds is compared in these units)."""
    epochs = len(history)
    return {"wall_seconds": float(sum(row.get("seconds", 0.0) for row in history)),
            "epochs": epochs, "steps": epochs * steps_per_epoch,
            "utterance_passes": epochs * steps_per_epoch * batch_size / n_utts}


#: Draws a training history (`report.plots.plot_history`): `(history, png path, title)`. The
#: caller (the CLI) passes it in, so training never imports the report package.
PlotHistory = Callable[[list[dict], Path, str], None]


def write_records(out: Path, history: list[dict], compute: dict,
                  tracker: Tracking = NULL_TRACKER, plot: PlotHistory | None = None) -> None:
    """history.json and compute.json next to the model; both, and the model file, to the
    MLflow run; with `plot`, the per-epoch trajectory figure where there are labels to plot."""
    write_json(out / "history.json", history)
    write_json(out / "compute.json", compute)
    tracker.log_metrics({f"compute/{k}": v for k, v in compute.items()}, step=0)
    tracker.log_artifact(out / "history.json")
    tracker.log_artifact(out / "model.pt", "model")
    if plot is not None and any("n_clusters" in row for row in history):
        plot(history, out / "trajectory.png", out.name)
        tracker.log_artifact(out / "trajectory.png")
