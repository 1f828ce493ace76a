"""Benchmark: the SSRL input pipeline alone (wave store -> crops -> augmentation -> features).

Builds a wave store from synthetic audio in a temporary folder (wav files + wav.scp, read with
`ssrl.kaldi.read_kaldi_dir`, written by `ssrl.store.build_wave_store`), then times one epoch
of `ssrl.loader.CropBatches` with the SSRL views (2 s augmented student crop, 6 s clean teacher
crop): with 0 data-loader workers (the reference) and with `--workers`; with augmentation in
the workers on CPU and, when a GPU is present, planned in the workers and applied batch-wise on
the GPU. Then the front end (`ssrl.frontend.Frontend`, log-mel) on the same crop sizes.

Compare the figures with the training step's utterances/s (bench/train_step.py): the loader
must deliver more than the model consumes, or the GPU waits.

Run from the repo root:  python bench/dataload.py [--smoke] [--workers 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import synthetic_augmenter  # noqa: E402

from ssrl.data.kaldi import read_kaldi_dir  # noqa: E402
from ssrl.data.loader import CropBatches, View  # noqa: E402
from ssrl.data.stores import WaveStore, build_wave_store  # noqa: E402
from ssrl.models.frontend import Frontend  # noqa: E402
from ssrl.runtime import Dist  # noqa: E402

SR = 16000


def synthetic_store(folder: Path, n_utts: int, rng: np.random.Generator) -> WaveStore:
    """A Kaldi folder of random 16 kHz utterances (4-10 s, like VoxCeleb2) -> a wave store."""
    data = folder / "data"
    (data / "wav").mkdir(parents=True)
    lines = []
    for i in range(n_utts):
        seconds = rng.uniform(4.0, 10.0)
        wave = (rng.standard_normal(int(seconds * SR)) * 0.1).clip(-1, 1)
        sf.write(data / "wav" / f"u{i:06d}.wav", wave.astype(np.float32), SR, subtype="PCM_16")
        lines.append(f"u{i:06d} wav/u{i:06d}.wav\n")
    (data / "wav.scp").write_text("".join(lines))
    build_wave_store(read_kaldi_dir(data), folder / "store", progress=False)
    return WaveStore(folder / "store")


def time_epoch(batches: CropBatches, device: torch.device) -> float:
    """Utterances per second of one epoch (waiting for the device at the end)."""
    t0 = time.perf_counter()
    n = 0
    for _, out in batches.epoch(0):
        n += len(out["utts"])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n / (time.perf_counter() - t0)


def time_frontend(frontend: Frontend, batch: int, seconds: float, device: torch.device,
                  repeats: int) -> float:
    """Utterances per second of the log-mel front end on `[batch, seconds * 16000]` waves."""
    wave = torch.randn(batch, int(seconds * SR), device=device) * 0.1
    frontend(wave)  # warm-up (cuFFT plans, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(repeats):
            frontend(wave)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batch * repeats / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for tests")
    p.add_argument("--utts", type=int, default=2000, help="utterances in the synthetic store")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=8, help="data-loader workers to compare")
    p.add_argument("--student-seconds", type=float, default=2.0)
    p.add_argument("--teacher-seconds", type=float, default=6.0)
    p.add_argument("--frontend-repeats", type=int, default=10)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.smoke:
        a.utts, a.batch, a.workers, a.frontend_repeats = 24, 8, 1, 2
    want_cuda = a.device != "cpu" and torch.cuda.is_available()
    device = torch.device((a.device if a.device.startswith("cuda") else "cuda") if want_cuda
                          else "cpu")
    rng = np.random.default_rng(a.seed)
    views = [View("student", 1, a.student_seconds, augment=True),
             View("teacher", 1, a.teacher_seconds, augment=False)]
    steps = max(a.utts // a.batch, 1)
    print(f"device {device}; {a.utts} synthetic utterances (4-10 s), batch {a.batch}, "
          f"{steps} steps; views: student {a.student_seconds:g} s augmented, "
          f"teacher {a.teacher_seconds:g} s clean")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        store = synthetic_store(Path(tmp), a.utts, rng)
        total_s = store.lengths.sum() / SR
        print(f"store built: {total_s / 3600:.2f} h of audio in "
              f"{time.perf_counter() - t0:.1f} s (wav writing + build_wave_store)")
        augmenter = synthetic_augmenter(rng)

        def loader(workers: int, on_gpu: bool) -> CropBatches:
            return CropBatches(store, views, a.batch, steps, a.seed, Dist(), augmenter, device,
                               augment_on_gpu=on_gpu, num_workers=workers)

        rates: dict[str, float] = {}
        for workers in (0, a.workers):
            rates[f"cpu aug, {workers} workers"] = time_epoch(loader(workers, False), device)
            if device.type == "cuda":
                rates[f"gpu aug, {workers} workers"] = time_epoch(loader(workers, True), device)

    frontend = Frontend("logmel", n_mels=80).to(device)
    fe_student = time_frontend(frontend, a.batch, a.student_seconds, device, a.frontend_repeats)
    fe_teacher = time_frontend(frontend, a.batch, a.teacher_seconds, device, a.frontend_repeats)
    rates[f"log-mel front end, {a.student_seconds:g} s crops"] = fe_student
    rates[f"log-mel front end, {a.teacher_seconds:g} s crops"] = fe_teacher
    fe_both = 1 / (1 / fe_student + 1 / fe_teacher)  # both views of each utterance

    print(f"\n{'pipeline':<40}{'utt/s':>10}")
    for name, rate in rates.items():
        print(f"{name:<40}{rate:10.1f}")
    base = rates["cpu aug, 0 workers"]
    cpu_n = rates[f"cpu aug, {a.workers} workers"]
    print(f"ratio: {a.workers} workers / 0 workers (cpu aug) = {cpu_n / base:.2f}")
    if device.type == "cuda":
        gpu_n = rates[f"gpu aug, {a.workers} workers"]
        print(f"ratio: gpu aug / cpu aug ({a.workers} workers) = {gpu_n / cpu_n:.2f}")
    else:
        print("ratio: gpu aug / cpu aug = n/a (no GPU)")
    print(f"ratio: front end (both views) / loader (0 workers) = {fe_both / base:.2f}")


if __name__ == "__main__":
    main()
