"""The one training loop: DINO, SSRL, the iterative rounds and the topline all run through it.

    resume from the job's own checkpoint (or start at step 0)
    for each epoch: for each step: the method's step; every 10 steps the loss, lr and EMA
        momentum to the tracker; every `checkpoint_every_steps` a mid-epoch checkpoint
      the epoch's row (mean loss, what the method adds, seconds) -> log line, tracker, history
      a checkpoint at the epoch boundary
    a finished checkpoint (no optimiser), kept until the job runs again

A method is an object with the attributes and methods of `Method` below; each method's file
holds only the method (its step, its end-of-epoch work, what its checkpoint holds).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from ssrl.data.loader import CropBatches
from ssrl.tracking.mlflow_run import NULL_TRACKER, Tracking
from ssrl.training.checkpoints import Checkpoints
from ssrl.training.job import Progress

log = logging.getLogger("ssrl.train")

#: How often (in steps) the step's loss, lr and momentum go to the tracker.
LOG_EVERY_STEPS = 10

Phase = Callable[[str], contextlib.AbstractContextManager]


def no_phase(name: str) -> contextlib.AbstractContextManager:
    """The default `phase` of a method: steps name their phases so a benchmark can time them."""
    return contextlib.nullcontext()


class Method(Protocol):
    """What the loop needs of a method's run."""

    name: str  # for log lines ("DINO", "ssrl", "iterative", "supervised")
    cfg: dict  # the job's config (runtime.checkpoint_every_steps)
    steps: int  # steps per epoch
    batches: CropBatches
    lr_at: np.ndarray  # learning rate at each step of the whole run
    momentum_at: np.ndarray  # EMA momentum at each step (logged even where no teacher uses it)

    def step(self, crops: dict, epoch: int, step: int) -> float:
        """One optimiser step; the global batch's loss."""

    def end_of_epoch(self, epoch: int) -> dict[str, Any]:
        """What the method adds to the epoch's row (labels, dev EER), after its last step."""

    def state_dict(self) -> dict[str, Any]:
        """Everything the method needs to resume (the loop adds epoch, step and history)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Back to `state`; a finished checkpoint has no "optimizer"."""

    def starting(self, tracker: Tracking) -> None:
        """Called once when the job starts at step 0 (not on resume): SSRL logs its k-means
        start as epoch 0."""


def run_epoch(method: Method, epoch: int, start_step: int, losses: list[float],
              checkpoint: Callable[[int, int, list[float]], None] | None = None,
              tracker: Tracking = NULL_TRACKER) -> None:
    """The steps of one epoch (from `start_step` when resuming), each loss appended to `losses`;
    mid-epoch checkpoints through `checkpoint(epoch, next step, losses)`."""
    every = method.cfg["runtime"]["checkpoint_every_steps"]
    for step, crops in method.batches.epoch(epoch, start_step):
        losses.append(method.step(crops, epoch, step))
        it = epoch * method.steps + step
        if it % LOG_EVERY_STEPS == 0:
            tracker.log_metrics({"step/loss": losses[-1], "step/lr": float(method.lr_at[it]),
                                 "step/teacher_momentum": float(method.momentum_at[it])},
                                step=it + 1)
        if checkpoint is not None and every and (it + 1) % every == 0 and step + 1 < method.steps:
            checkpoint(epoch, step + 1, losses)


def train(method: Method, ckpt: Checkpoints, epochs: int, tracker: Tracking = NULL_TRACKER,
          step_offset: int = 0) -> list[dict]:
    """Train `method` for `epochs` epochs, resuming from `ckpt` when it holds this job's state;
    returns the history (one row per epoch). `step_offset`: where this job's epochs start on
    the tracker's axis (a chain of iterative rounds shares one)."""
    history: list[dict] = []
    epoch0, step0, resumed_losses = 0, 0, []
    saved = ckpt.load()
    if saved is not None:
        method.load_state_dict(saved)
        epoch0, step0, history = saved["epoch"], saved["step"], saved["history"]
        resumed_losses = list(saved.get("epoch_losses", []))  # this epoch's steps so far
        if saved.get("finished"):
            log.info("%s finished training in an earlier run (epoch %d, %s): writing its "
                     "outputs again, no training", method.name, epoch0, ckpt.path)
        else:
            log.info("resuming %s at epoch %d step %d", method.name, epoch0, step0)
    else:
        method.starting(tracker)

    def checkpoint(epoch: int, step: int, losses: list[float], finished: bool = False) -> None:
        state = {**method.state_dict(), "epoch": epoch, "step": step, "history": history,
                 "epoch_losses": losses if step else []}
        ckpt.finish(state) if finished else ckpt.save(state)

    progress = Progress(epochs, history, tracker, step_offset=step_offset)
    for epoch in range(epoch0, epochs):
        t_epoch = time.time()
        losses = resumed_losses if epoch == epoch0 else []
        run_epoch(method, epoch, step0 if epoch == epoch0 else 0, losses, checkpoint, tracker)
        row = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan"),
               **method.end_of_epoch(epoch)}
        row["seconds"] = time.time() - t_epoch
        progress.epoch(row)
        if epoch + 1 < epochs:
            checkpoint(epoch + 1, 0, [])
    # Kept (finished, no optimiser) until the job runs again: a job stopped after this point,
    # before its outputs were accepted, writes them again from here without training.
    checkpoint(epochs, 0, [], finished=True)
    return history
