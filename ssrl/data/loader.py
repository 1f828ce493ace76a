"""What the training loops read: per step, crops of the batch's utterances, augmented.

Every draw for item j of the global batch of (epoch, step) comes from its own generator
seeded by (seed, epoch, step, j). So the batches are identical whatever the number of
data-loader workers or `torchrun` processes (each process takes its slice of the global
batch), and a resumed run replays them exactly.

Augmentation runs either in the workers on CPU (one item at a time) or, when a GPU is present
and `augment.on_gpu` is set, on the whole batch on the GPU: the workers then only read the
crops and draw the augmentation plan, and `Augmenter.apply` does the arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ssrl.data.audio import SAMPLE_RATE
from ssrl.data.augment import Augmenter, AugPlan
from ssrl.data.stores import WaveStore
from ssrl.runtime import Dist


def batches_per_epoch(n_items: int, batch_size: int, steps: int | None) -> int:
    """Steps in one epoch: a fixed count when configured, else one pass (drop the last partial)."""
    return int(steps) if steps else max(n_items // batch_size, 1)


def epoch_order(n_items: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's utterance order, a function of (seed, epoch) only."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, 2**32 - 1])).permutation(
        n_items)


def step_indices(order: np.ndarray, step: int, batch_size: int) -> np.ndarray:
    """Utterances of one step; wraps around so fixed step counts can exceed one pass."""
    start = step * batch_size
    return order[np.arange(start, start + batch_size) % len(order)]


@dataclass(frozen=True)
class View:
    """A kind of crop taken from every utterance of the batch (e.g. DINO's 2 global crops)."""

    name: str
    n_crops: int
    seconds: float
    augment: bool

    @property
    def n_samples(self) -> int:
        return int(round(self.seconds * SAMPLE_RATE))


def open_store(path: str | Path | None) -> WaveStore | None:
    return None if path is None else WaveStore(Path(path))


def augmenter_from_config(cfg: dict, noise_store: str | Path | None,
                          rir_store: str | Path | None, p_reverb: float,
                          p_noise: float) -> Augmenter:
    """An Augmenter over the noise / RIR stores; a missing set turns its probability to 0."""
    noise, rir = open_store(noise_store), open_store(rir_store)
    return Augmenter(noise, rir, p_reverb=p_reverb if rir is not None else 0.0,
                     p_noise=p_noise if noise is not None else 0.0,
                     snr_db=tuple(cfg["augment"]["snr_db"]),
                     babble_speakers=tuple(cfg["augment"]["babble_speakers"]))


def item_rng(seed: int, epoch: int, step: int, item: int, view: int,
             crop: int) -> np.random.Generator:
    """Draws of crop `crop` of view `view` of item `item` of the global batch of (epoch, step)."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, step, item, view, crop]))


class _Steps(Dataset):
    """Item `s` is step `s` of one epoch, for this process's slice of the global batch."""

    def __init__(self, batches: CropBatches, epoch: int):
        self.b, self.epoch = batches, epoch
        self.order = epoch_order(len(batches.store), batches.seed, epoch)

    def __len__(self) -> int:
        return self.b.steps

    def __getitem__(self, step: int) -> dict:
        b = self.b
        idx = step_indices(self.order, step, b.batch_size)
        mine = np.arange(b.d.rank, b.batch_size, b.d.world)
        out: dict = {"step": step, "utts": torch.from_numpy(idx[mine])}
        for v, view in enumerate(b.views):
            crops, plans = [], []
            for k in range(view.n_crops):
                waves, item_plans = [], []
                for j in mine:
                    rng = item_rng(b.seed, self.epoch, step, int(j), v, k)
                    waves.append(b.store.crop(int(idx[j]), view.n_samples, rng))
                    if view.augment:
                        item_plans.append(b.augmenter.plan(1, view.n_samples, rng))
                wave = torch.from_numpy(np.stack(waves))
                plan = AugPlan.cat(item_plans) if view.augment else None
                if plan is not None and not b.augment_on_device:
                    wave, plan = b.augmenter.apply(wave, plan), None
                crops.append(wave)
                plans.append(plan)
            out[view.name] = (crops, plans)
        return out


class CropBatches:
    """Iterates the steps of an epoch; yields `{view name: [crop tensors on device]}`."""

    def __init__(self, store: WaveStore, views: list[View], batch_size: int, steps: int,
                 seed: int, d: Dist, augmenter: Augmenter | None, device: torch.device,
                 augment_on_gpu: bool = True, num_workers: int = 0):
        if batch_size % d.world:
            raise ValueError(f"batch size {batch_size} is not divisible by {d.world} processes")
        self.store, self.views, self.batch_size, self.steps = store, views, batch_size, steps
        self.seed, self.d, self.augmenter, self.device = seed, d, augmenter, device
        self.augment_on_device = augment_on_gpu and device.type == "cuda"
        self.num_workers = num_workers

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[int, dict]]:
        steps = _Steps(self, epoch)
        todo = torch.utils.data.Subset(steps, range(start_step, self.steps))
        loader = DataLoader(todo, batch_size=None, shuffle=False, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda",
                            persistent_workers=False)
        for item in loader:
            out = {"utts": item["utts"]}
            for view in self.views:
                crops, plans = item[view.name]
                moved = []
                for wave, plan in zip(crops, plans):
                    wave = wave.to(self.device, non_blocking=True)
                    if plan is not None:
                        wave = self.augmenter.apply(wave, plan)
                    moved.append(wave)
                out[view.name] = moved
            yield item["step"], out
