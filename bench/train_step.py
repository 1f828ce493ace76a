"""Benchmark: one SSRL training step and one DINO step, per phase, fp32 eager vs optimised.

Default sizes are the VoxCeleb recipe (SSRL-NOTES): ECAPA c1024; SSRL with a 2 s augmented
student crop and a 6 s clean teacher crop, global batch 480 (accumulated over micro-batches),
K = 8000 pseudo speakers; DINO with 2 x 4 s + 4 x 2 s augmented crops, batch 240, 65,536
prototypes. Audio, noise and impulse responses are synthetic (random), so no data is needed.

Phases of an SSRL step (CUDA-synchronised when on a GPU): data (crops + augmentation, moved to
the device), teacher (front end + forward + relabelling), student (front end + forward +
backward), optimiser, EMA. The reference is the same step in fp32 eager; the optimised path is
bf16 autocast on CUDA plus `--compile`. On CPU both paths run fp32 (bf16 is not used there).

Run from the repo root:  python bench/train_step.py [--smoke] [--compile] [--micro-batch 60]
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssrl.data.augment import ArraySource, Augmenter, random_crop  # noqa: E402
from ssrl.models.frontend import Frontend  # noqa: E402
from ssrl.models.heads import DINOHead  # noqa: E402
from ssrl.models.encoders import build_encoder, count_parameters  # noqa: E402
from ssrl.training.dino import DINOModel, dino_loss, updated_center  # noqa: E402
from ssrl.training.ssrl import SpeakerClassifier, teacher_relabel  # noqa: E402
from ssrl.training.runtime import autocast, ema_update, frozen_copy, maybe_compile, param_groups  # noqa: E402

SR = 16000
PHASES = ("data", "teacher", "student", "optim", "ema")
BASELINE_RSS_MIB = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # torch imported


# --- synthetic audio -------------------------------------------------------------------------

def synthetic_sources(rng: np.random.Generator, n_utts: int, seconds: float
                      ) -> tuple[list[np.ndarray], Augmenter]:
    """Random "utterances", and an augmenter over random noise / music / babble and RIRs."""
    utts = [(rng.standard_normal(int(seconds * SR)) * 0.1).astype(np.float32)
            for _ in range(n_utts)]
    cats = ["noise", "music", "speech"] * 4
    noise = ArraySource([(rng.standard_normal(5 * SR) * 0.1).astype(np.float32) for _ in cats],
                        cats)
    decay = np.exp(-np.arange(SR // 4) / (0.05 * SR))  # 250 ms RIRs, 50 ms decay constant
    rirs = ArraySource([(rng.standard_normal(len(decay)) * decay).astype(np.float32)
                        for _ in range(4)])
    return utts, Augmenter(noise, rirs, p_reverb=1 / 3, p_noise=1 / 3)


def crops(utts: list[np.ndarray], batch: int, seconds: float, rng: np.random.Generator,
          augmenter: Augmenter | None, device: torch.device) -> torch.Tensor:
    """`batch` random crops on the device, augmented as the loader does (batch-wise on GPU)."""
    n = int(seconds * SR)
    wave = torch.from_numpy(np.stack([random_crop(utts[int(i)], n, rng)
                                      for i in rng.integers(0, len(utts), batch)]))
    if augmenter is None:
        return wave.to(device)
    plan = augmenter.plan(batch, n, rng)
    if device.type == "cuda":
        return augmenter.apply(wave.to(device, non_blocking=True), plan)
    return augmenter.apply(wave, plan)


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


# --- the two steps ---------------------------------------------------------------------------

@dataclass
class Sizes:
    model: dict
    batch: int
    micro: int
    classes: int
    student_s: float
    teacher_s: float
    dino_batch: int
    dino_micro: int
    global_s: float
    local_s: float
    dino_out: int
    dino_hidden: int
    dino_bottleneck: int


def _student_teacher(s: Sizes, device: torch.device, compile_: bool, seed: int,
                     wrap) -> tuple[Frontend, torch.nn.Module, torch.nn.Module]:
    """Front end, student `wrap(encoder)` and its frozen EMA copy, as the training loops build
    them (seeded; encoders compiled when asked)."""
    torch.manual_seed(seed)
    frontend = Frontend("logmel", n_mels=80).to(device)
    student = wrap(build_encoder({**s.model, "n_mels": 80})).to(device)
    teacher = frozen_copy(student).to(device)
    maybe_compile({"compile": compile_}, student.encoder, teacher.encoder)
    return frontend, student, teacher


class SSRLStep:
    """Student, EMA teacher, Adam, AAM-softmax over K classes: one step of `train_ssrl`."""

    def __init__(self, s: Sizes, device: torch.device, optimised: bool, compile_: bool,
                 seed: int = 0):
        self.s, self.device, self.optimised = s, device, optimised
        self.frontend, self.student, self.teacher = _student_teacher(
            s, device, compile_, seed, lambda enc: SpeakerClassifier(enc, s.classes, 32.0, 0.2))
        self.optimizer = torch.optim.Adam(param_groups(self.student, 5e-5), lr=5e-4,
                                          fused=device.type == "cuda")
        self.active = torch.ones(s.classes, dtype=torch.bool, device=device)

    def micro_batches(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                      weights: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
        for i in range(0, self.s.batch, self.s.micro):
            j = slice(i, i + self.s.micro)
            yield student[j], teacher[j], labels[j], weights[j]

    def forward_backward(self, timer: PhaseTimer | None, st: torch.Tensor, te: torch.Tensor,
                         y: torch.Tensor, w: torch.Tensor) -> None:
        phase = timer or (lambda _: contextlib.nullcontext())
        with phase("teacher"), autocast(self.device, self.optimised):
            teacher_relabel(self.teacher, self.frontend(te), y, self.active, False)
        with phase("student"):
            with autocast(self.device, self.optimised):
                per_utt = self.student(self.frontend(st), y, self.active)
            loss = (w * per_utt).sum() / w.sum() * (len(y) / self.s.batch)
            loss.backward()

    def step(self, rng: np.random.Generator, data: tuple, timer: PhaseTimer) -> None:
        utts, augmenter = data
        with timer("data"):
            st = crops(utts, self.s.batch, self.s.student_s, rng, augmenter, self.device)
            te = crops(utts, self.s.batch, self.s.teacher_s, rng, None, self.device)
            y = torch.from_numpy(rng.integers(0, self.s.classes, self.s.batch)).to(self.device)
            w = torch.from_numpy(rng.random(self.s.batch).astype(np.float32)).to(self.device)
        for mb in self.micro_batches(st, te, y, w):
            self.forward_backward(timer, *mb)
        with timer("optim"):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        with timer("ema"):
            ema_update(self.teacher, self.student, 0.999)

    def flops(self, rng: np.random.Generator, data: tuple) -> int:
        """FLOPs of one global step, counted on one micro-batch and scaled (linear in batch)."""
        utts, augmenter = data
        st = crops(utts, self.s.micro, self.s.student_s, rng, augmenter, self.device)
        te = crops(utts, self.s.micro, self.s.teacher_s, rng, None, self.device)
        y = torch.from_numpy(rng.integers(0, self.s.classes, self.s.micro)).to(self.device)
        w = torch.ones(self.s.micro, device=self.device)
        n = count_flops(lambda: self.forward_backward(None, st, te, y, w))
        self.optimizer.zero_grad(set_to_none=True)
        return n * (self.s.batch // self.s.micro)


class DINOStep:
    """DINO student / EMA teacher with the projection head: one step of `train_dino`."""

    def __init__(self, s: Sizes, device: torch.device, optimised: bool, compile_: bool,
                 seed: int = 0):
        self.s, self.device, self.optimised = s, device, optimised
        self.frontend, self.student, self.teacher = _student_teacher(
            s, device, compile_, seed, lambda enc: DINOModel(
                enc, DINOHead(enc.embed_dim, s.dino_out, s.dino_hidden, s.dino_bottleneck)))
        self.teacher.train()  # DINO's teacher BatchNorm uses batch statistics, as in training
        self.optimizer = torch.optim.SGD(param_groups(self.student, 5e-5), lr=0.01,
                                         momentum=0.9)
        self.center = torch.zeros(1, s.dino_out, device=device)

    def forward_backward(self, timer: PhaseTimer | None, glob: list[torch.Tensor],
                         local: list[torch.Tensor]) -> None:
        phase = timer or (lambda _: contextlib.nullcontext())
        with phase("teacher"), autocast(self.device, self.optimised), torch.no_grad():
            feats_global = self.frontend(torch.cat(glob))
            teacher_out = list(self.teacher(feats_global).chunk(len(glob)))
        with phase("student"):
            with autocast(self.device, self.optimised):
                student_out = list(self.student(feats_global).chunk(len(glob)))
                student_out += list(self.student(self.frontend(torch.cat(local)))
                                    .chunk(len(local)))
                loss = dino_loss(student_out, teacher_out, self.center, 0.1, 0.04)
            (loss * (len(glob[0]) / self.s.dino_batch)).backward()
            self.center = updated_center(self.center, teacher_out, 0.9)

    def _crops(self, rng: np.random.Generator, data: tuple, batch: int
               ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        utts, augmenter = data
        glob = [crops(utts, batch, self.s.global_s, rng, augmenter, self.device)
                for _ in range(2)]
        local = [crops(utts, batch, self.s.local_s, rng, augmenter, self.device)
                 for _ in range(4)]
        return glob, local

    def step(self, rng: np.random.Generator, data: tuple, timer: PhaseTimer) -> None:
        with timer("data"):
            glob, local = self._crops(rng, data, self.s.dino_batch)
        for i in range(0, self.s.dino_batch, self.s.dino_micro):
            j = slice(i, i + self.s.dino_micro)
            self.forward_backward(timer, [g[j] for g in glob], [x[j] for x in local])
        with timer("optim"):
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), 3.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        with timer("ema"):
            ema_update(self.teacher, self.student, 0.999)

    def flops(self, rng: np.random.Generator, data: tuple) -> int:
        glob, local = self._crops(rng, data, self.s.dino_micro)
        n = count_flops(lambda: self.forward_backward(None, glob, local))
        self.optimizer.zero_grad(set_to_none=True)
        return n * (self.s.dino_batch // self.s.dino_micro)


# --- driver ----------------------------------------------------------------------------------

def run_path(make: Callable[[], SSRLStep | DINOStep], batch: int, data: tuple, steps: int,
             warmup: int, device: torch.device, seed: int) -> dict:
    """Warm up (compilation, allocator), then time `steps` steps; per-step seconds per phase."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    bench = make()
    rng = np.random.default_rng(seed)
    for _ in range(warmup):
        bench.step(rng, data, PhaseTimer(device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timer = PhaseTimer(device)
    for _ in range(steps):
        bench.step(rng, data, timer)
    per_step = {k: v / steps for k, v in timer.seconds.items()}
    total = sum(per_step.values())
    mem, mem_kind = peak_memory_mib(device)
    return {"phases": per_step, "total": total, "utt_per_s": batch / total, "mem": mem,
            "mem_kind": mem_kind}


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
    p.add_argument("--batch", type=int, default=480, help="SSRL global batch")
    p.add_argument("--micro-batch", type=int, default=None,
                   help="SSRL micro-batch (gradient accumulation); default: the whole batch")
    p.add_argument("--classes", type=int, default=8000, help="K pseudo speakers")
    p.add_argument("--student-seconds", type=float, default=2.0)
    p.add_argument("--teacher-seconds", type=float, default=6.0)
    p.add_argument("--dino-batch", type=int, default=240)
    p.add_argument("--dino-micro-batch", type=int, default=None)
    p.add_argument("--global-seconds", type=float, default=4.0)
    p.add_argument("--local-seconds", type=float, default=2.0)
    p.add_argument("--dino-out", type=int, default=65536)
    p.add_argument("--dino-hidden", type=int, default=2048)
    p.add_argument("--dino-bottleneck", type=int, default=256)
    p.add_argument("--skip-dino", action="store_true")
    p.add_argument("--steps", type=int, default=5, help="timed steps per path")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per path")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoders")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="device peak for MFU (H100 SXM bf16 dense: 989)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.smoke:
        a.model, a.batch, a.micro_batch, a.classes = "ecapa_tiny", 8, 4, 50
        a.student_seconds, a.teacher_seconds = 1.0, 2.0
        a.dino_batch, a.dino_micro_batch, a.global_seconds, a.local_seconds = 8, 8, 2.0, 1.0
        a.dino_out, a.dino_hidden, a.dino_bottleneck = 1024, 128, 32
        a.steps, a.warmup = 3, 1
    micro = a.micro_batch or a.batch
    dino_micro = a.dino_micro_batch or a.dino_batch
    if a.batch % micro or a.dino_batch % dino_micro:
        p.error("batch sizes must be multiples of their micro-batch sizes")
    if a.threads:
        torch.set_num_threads(a.threads)
    want_cuda = a.device != "cpu" and torch.cuda.is_available()
    device = torch.device((a.device if a.device.startswith("cuda") else "cuda") if want_cuda
                          else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    s = Sizes({"preset": a.model}, a.batch, micro, a.classes, a.student_seconds,
              a.teacher_seconds, a.dino_batch, dino_micro, a.global_seconds, a.local_seconds,
              a.dino_out, a.dino_hidden, a.dino_bottleneck)
    rng = np.random.default_rng(a.seed)
    longest = max(a.teacher_seconds, a.global_seconds) + 2.0
    data = synthetic_sources(rng, 64, longest)
    n_params = count_parameters(build_encoder({**s.model, "n_mels": 80}))
    optimised = "bf16 autocast" if device.type == "cuda" else "fp32 (CPU: no bf16)"
    print(f"device {device} ({torch.get_num_threads()} CPU threads), encoder {a.model} "
          f"({n_params / 1e6:.2f} M params); optimised path = {optimised}"
          f"{' + torch.compile' if a.compile else ''}")

    benches = [("SSRL step", SSRLStep, a.batch,
                f"batch {a.batch} ({a.batch // micro} x {micro}), K {a.classes}, student "
                f"{a.student_seconds:g} s augmented / teacher {a.teacher_seconds:g} s clean")]
    if not a.skip_dino:
        benches.append(("DINO step", DINOStep, a.dino_batch,
                        f"batch {a.dino_batch} ({a.dino_batch // dino_micro} x {dino_micro}), "
                        f"2 x {a.global_seconds:g} s + 4 x {a.local_seconds:g} s augmented, "
                        f"head {a.dino_out}"))
    for name, cls, batch, desc in benches:
        results = {}
        for path, opt, comp in (("fp32", False, False), ("optimised", True, a.compile)):
            results[path] = run_path(lambda c=cls, o=opt, k=comp: c(s, device, o, k), batch,
                                     data, a.steps, a.warmup, device, a.seed)
        flops = cls(s, device, False, False).flops(np.random.default_rng(a.seed), data)
        report(f"{name}: {a.model}, {desc}, {device}", results, flops, batch, a.peak_tflops,
               device)


if __name__ == "__main__":
    main()
