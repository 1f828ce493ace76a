"""Benchmark: one SSRL training step and one DINO step, as the workflow runs them
(`ssrl.training.ssrl.ssrl_step`, `ssrl.training.dino.dino_step`), per phase, fp32 eager vs
optimised.

Default sizes are the VoxCeleb recipe (SSRL-NOTES): ECAPA c1024; SSRL with a 2 s augmented
student crop and a 6 s clean teacher crop, batch 480, K = 8000 pseudo speakers, teacher
re-labelling every step; DINO with 2 x 4 s + 4 x 2 s augmented crops, batch 240, 65,536
prototypes. Audio, noise and impulse responses are synthetic (random), held in memory, and go
through the real data loader (`CropBatches`).

Phases of a step (CUDA-synchronised when on a GPU): data (the loader: crops, augmentation plan,
transfer; augmentation arithmetic on the GPU when there is one), teacher (front end + forward +
relabelling), student (front end + forward + backward), optim, ema. The reference is the same
step in fp32 eager; the optimised path is bf16 autocast on CUDA plus `--compile`. On CPU both
paths run fp32 (bf16 is not used there).

Run from the repo root:  python bench/train_step.py [--smoke] [--compile] [--workers 8]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import resource
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import synthetic_augmenter  # noqa: E402

from ssrl.config import load_config  # noqa: E402
from ssrl.data.augment import Augmenter  # noqa: E402
from ssrl.data.stores import MemoryWaves  # noqa: E402
from ssrl.models.encoders import build_encoder, count_parameters  # noqa: E402
from ssrl.runtime import Dist  # noqa: E402
from ssrl.training.dino import build_dino_run, dino_step  # noqa: E402
from ssrl.training.ssrl import build_ssrl_run, ssrl_step  # noqa: E402

SR = 16000
PHASES = ("data", "teacher", "student", "optim", "ema")
BASELINE_RSS_MIB = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # torch imported


# --- synthetic audio -------------------------------------------------------------------------

def synthetic_sources(rng: np.random.Generator, n_utts: int, seconds: float
                      ) -> tuple[MemoryWaves, Augmenter]:
    """Random "utterances" in memory, and an augmenter over random noise / music / babble and
    RIRs (the shapes, not the content, are what is measured)."""
    utts = [(rng.standard_normal(int(seconds * SR)) * 0.1).astype(np.float32)
            for _ in range(n_utts)]
    return MemoryWaves([f"u{i}" for i in range(n_utts)], utts), synthetic_augmenter(rng)


# --- timing ----------------------------------------------------------------------------------

class PhaseTimer:
    """Wall seconds per phase; synchronises the GPU at phase boundaries so time is attributed."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        self._sync()
        t0 = time.perf_counter()
        yield
        self._sync()
        self.seconds[phase] += time.perf_counter() - t0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def peak_memory_mib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "GPU alloc"
    # ru_maxrss is KiB on Linux; it is the process's peak so far, not this path's alone.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process RSS"


def count_flops(fn: Callable[[], None]) -> int:
    """Model FLOPs of `fn` (forward and backward matmuls / convolutions; the STFT is not
    counted) as torch's FlopCounterMode sees them."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# --- the two steps, through the training code's own builders ---------------------------------

def bench_config(a: argparse.Namespace, device: torch.device, optimised: bool) -> dict:
    """The schema's defaults with the benchmark's sizes: what a job config would hold."""
    cfg = load_config(overrides={"experiment": "bench", "model": {"preset": a.model}})
    cfg["seed"] = a.seed
    cfg["runtime"].update({"device": str(device), "threads": torch.get_num_threads(),
                           "num_workers": a.workers, "bf16": optimised,
                           "compile": optimised and a.compile, "checkpoint_every_steps": 0})
    steps = a.steps + a.warmup
    cfg["ssrl"].update({"batch_size": a.batch, "steps_per_epoch": steps, "epochs": 1,
                        "student_seconds": a.student_seconds,
                        "teacher_seconds": a.teacher_seconds, "queue_len": 1, "hold_epochs": 1,
                        "record_from_epoch": None})  # the teacher re-labels from step one
    cfg["dino"].update({"batch_size": a.dino_batch, "steps_per_epoch": steps, "epochs": 1,
                        "global_seconds": a.global_seconds, "local_seconds": a.local_seconds,
                        "out_dim": a.dino_out, "hidden_dim": a.dino_hidden,
                        "bottleneck_dim": a.dino_bottleneck, "warmup_epochs": 0})
    return cfg


def make_ssrl(cfg: dict, store: MemoryWaves, augmenter: Augmenter, classes: int,
              device: torch.device) -> tuple[object, Callable]:
    rng = np.random.default_rng(cfg["seed"])
    labels = rng.integers(0, classes, len(store))
    centroids = rng.standard_normal((classes, 512)).astype(np.float32)
    embed_dim = build_encoder({**cfg["model"], "n_mels": 80}).embed_dim
    run = build_ssrl_run(cfg, store, augmenter, labels, centroids[:, :embed_dim], epochs=1,
                         init_encoder=None, device=device, d=Dist())
    return run, ssrl_step


def make_dino(cfg: dict, store: MemoryWaves, augmenter: Augmenter, classes: int,
              device: torch.device) -> tuple[object, Callable]:
    return build_dino_run(cfg, store, augmenter, device, Dist()), dino_step


def run_path(make: Callable[[], tuple[object, Callable]], batch: int, steps: int, warmup: int,
             device: torch.device) -> dict:
    """Warm up (compilation, allocator), then time `steps` steps; per-step seconds per phase."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    run, step_fn = make()
    batches = iter(run.batches.epoch(0))
    timer = PhaseTimer(device)
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            timer = PhaseTimer(device)
        run.phase = timer
        with timer("data"):
            step, crops = next(batches)
        step_fn(run, crops, 0, step)
    per_step = {k: v / steps for k, v in timer.seconds.items()}
    total = sum(per_step.values())
    mem, mem_kind = peak_memory_mib(device)
    return {"phases": per_step, "total": total, "utt_per_s": batch / total, "mem": mem,
            "mem_kind": mem_kind}


def step_flops(make: Callable[[], tuple[object, Callable]]) -> int:
    """Model FLOPs of one step (forward and backward matmuls / convolutions, the teacher's
    forward included; the STFT is not counted)."""
    run, step_fn = make()
    step, crops = next(iter(run.batches.epoch(0)))
    return count_flops(lambda: step_fn(run, crops, 0, step))


# --- driver ----------------------------------------------------------------------------------

def report(title: str, results: dict[str, dict], flops: int, batch: int, peak_tflops: float,
           device: torch.device) -> None:
    print(f"\n== {title}")
    print(f"{'path':<10}" + "".join(f"{p:>9}" for p in PHASES)
          + f"{'total s':>9}{'utt/s':>9}{'peak MiB':>10}{'TFLOP/s':>9}{'MFU':>8}")
    for name, r in results.items():
        achieved = flops / r["total"] / 1e12
        mfu = f"{100 * achieved / peak_tflops:.1f}%" if device.type == "cuda" else "n/a"
        print(f"{name:<10}" + "".join(f"{r['phases'][p]:9.3f}" for p in PHASES)
              + f"{r['total']:9.3f}{r['utt_per_s']:9.1f}{r['mem']:10.0f}{achieved:9.3f}"
              + f"{mfu:>8}")
    print(f"peak memory: {results['fp32']['mem_kind']} ({BASELINE_RSS_MIB:.0f} MiB before any "
          "step)" if device.type == "cpu" else "peak memory: GPU max_memory_allocated")
    print(f"model FLOPs per step "
          f"{flops / 1e12:.3f} TFLOP = {flops / batch / 1e9:.2f} GFLOP per utterance "
          "(FlopCounterMode: matmul/conv forward+backward, STFT not counted)")
    ratio = results["optimised"]["utt_per_s"] / results["fp32"]["utt_per_s"]
    print(f"ratio: optimised/fp32 = {ratio:.2f} (utterances/s, >1 is faster)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU, for tests")
    p.add_argument("--model", default="ecapa_c1024", help="model preset")
    p.add_argument("--batch", type=int, default=480, help="SSRL batch")
    p.add_argument("--classes", type=int, default=8000, help="K pseudo speakers")
    p.add_argument("--student-seconds", type=float, default=2.0)
    p.add_argument("--teacher-seconds", type=float, default=6.0)
    p.add_argument("--dino-batch", type=int, default=240)
    p.add_argument("--global-seconds", type=float, default=4.0)
    p.add_argument("--local-seconds", type=float, default=2.0)
    p.add_argument("--dino-out", type=int, default=65536)
    p.add_argument("--dino-hidden", type=int, default=2048)
    p.add_argument("--dino-bottleneck", type=int, default=256)
    p.add_argument("--skip-dino", action="store_true")
    p.add_argument("--steps", type=int, default=5, help="timed steps per path")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per path")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoders")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="device peak for MFU (H100/H200 SXM bf16 dense: 989)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.smoke:
        a.model, a.batch, a.classes = "ecapa_tiny", 8, 50
        a.student_seconds, a.teacher_seconds = 1.0, 2.0
        a.dino_batch, a.global_seconds, a.local_seconds = 8, 2.0, 1.0
        a.dino_out, a.dino_hidden, a.dino_bottleneck = 1024, 128, 32
        a.steps, a.warmup = 3, 1
    if a.threads:
        torch.set_num_threads(a.threads)
    want_cuda = a.device != "cpu" and torch.cuda.is_available()
    device = torch.device((a.device if a.device.startswith("cuda") else "cuda") if want_cuda
                          else "cpu")
    rng = np.random.default_rng(a.seed)
    longest = max(a.teacher_seconds, a.global_seconds) + 2.0
    store, augmenter = synthetic_sources(rng, max(64, a.batch), longest)
    n_params = count_parameters(build_encoder({"preset": a.model, "n_mels": 80}))
    optimised = "bf16 autocast" if device.type == "cuda" else "fp32 (CPU: no bf16)"
    print(f"device {device} ({torch.get_num_threads()} CPU threads), encoder {a.model} "
          f"({n_params / 1e6:.2f} M params); optimised path = {optimised}"
          f"{' + torch.compile' if a.compile else ''}; {a.workers} loader workers")

    benches = [("SSRL step", make_ssrl, a.batch,
                f"batch {a.batch}, K {a.classes}, student {a.student_seconds:g} s augmented / "
                f"teacher {a.teacher_seconds:g} s clean")]
    if not a.skip_dino:
        benches.append(("DINO step", make_dino, a.dino_batch,
                        f"batch {a.dino_batch}, 2 x {a.global_seconds:g} s + 4 x "
                        f"{a.local_seconds:g} s augmented, head {a.dino_out}"))
    configs = {opt: bench_config(a, device, opt) for opt in (False, True)}
    for name, make, batch, desc in benches:
        results = {}
        for path, opt in (("fp32", False), ("optimised", True)):
            cfg = copy.deepcopy(configs[opt])
            results[path] = run_path(lambda c=cfg, m=make: m(c, store, augmenter, a.classes,
                                                             device),
                                     batch, a.steps, a.warmup, device)
        cfg = copy.deepcopy(configs[False])
        flops = step_flops(lambda c=cfg, m=make: m(c, store, augmenter, a.classes, device))
        report(f"{name}: {a.model}, {desc}, {device}", results, flops, batch, a.peak_tflops,
               device)


if __name__ == "__main__":
    main()
