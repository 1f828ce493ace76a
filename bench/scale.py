"""Benchmark: every CPU-side stage of the VoxCeleb2 recipe, per CPU core, in one run, and the
wall time each would take on the full corpus (1,092,009 utterances, 2,360 h, K = 8000).

What is measured (all on synthetic data; it is the throughput that counts, not the content):
- prepare + store: a VoxCeleb-layout tree of WAV, FLAC and m4a files (noise + tones of
  VoxCeleb2-like lengths, hard-linked from a few encoded clips so tens of thousands of files
  take seconds to lay out: disk reads are not measured) is indexed by `prepare_voxceleb` and
  stored by `build_wave_store`, against the store's previous decoding paths (one ffmpeg
  process per m4a file in one process; a process pool) measured in the same run;
- the training input pipeline (SSRL views: 2 s augmented + 6 s clean crops; DINO views:
  2 x 4 s + 4 x 2 s augmented; `CropBatches` then the log-mel `Frontend`), also drawing the
  augmentation plans only (the GPU path's CPU share), against a per-utterance reference of
  the usual kind (soundfile read -> numpy noise / scipy reverberation -> torchaudio's Kaldi
  fbank);
- the per-utterance SSRL state (labels, label queue, recorded losses, p_clean) at 1.09 M
  utterances, and the end-of-epoch work on it;
- k-means 1.09 M x 512 -> 8000 on CPU: `ssrl.training.kmeans.kmeans` against
  `faiss.Kmeans` and scikit-learn, on a subsample, extrapolated linearly in n;
- embedding extraction (ECAPA c1024, full utterances) and scoring with speaker-bootstrap
  intervals at the sizes of VoxCeleb1-E and -H.
Per-core figures come from CPU time (this process and its reaped children, e.g. ffmpeg), which
a shared machine disturbs far less than wall time; parts meant to run on one core run with one
thread. The projection assumes linear scaling in cores (stated where a part cannot scale);
GPU rows assume 30 % of 989 bf16 TFLOP/s on the encoder's FLOPs (the issue's goal, not a
measurement).

Run from the repo root:  python bench/scale.py [--smoke] [--json results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (  # noqa: E402
    bootstrap_intervals,
    synthetic_augmenter,
    synthetic_embeddings,
    synthetic_trials,
)
from projection import (  # noqa: E402
    TRIALS,
    VOX1_TRIAL_UTTS,
    VOX2,
    K,
    fmt_s,
    print_projection,
    projection,
    recipe_views,
)

from ssrl.data.audio import load_audio, to_int16  # noqa: E402
from ssrl.data.augment import Augmenter, AugPlan  # noqa: E402
from ssrl.data.kaldi import KaldiDir, read_kaldi_dir  # noqa: E402
from ssrl.data.loader import CropBatches, View  # noqa: E402
from ssrl.data.prepare import prepare_voxceleb  # noqa: E402
from ssrl.data.stores import MemoryWaves, WaveStore, build_wave_store  # noqa: E402
from ssrl.evaluation.embed import embed_waves  # noqa: E402
from ssrl.evaluation.metrics import evaluate  # noqa: E402
from ssrl.evaluation.scoring import cosine_scores  # noqa: E402
from ssrl.models.encoders import build_encoder  # noqa: E402
from ssrl.models.frontend import Frontend  # noqa: E402
from ssrl.runtime import Dist  # noqa: E402
from ssrl.training.kmeans import kmeans  # noqa: E402
from ssrl.training.noisy_labels import clean_posterior  # noqa: E402
from ssrl.training.ssrl import LabelState, refresh_labels  # noqa: E402

SR = 16000
FORMATS = ("wav", "flac", "m4a")

# --- measuring ---------------------------------------------------------------------------------

def cpu_seconds() -> tuple[float, float]:
    """User + system CPU seconds of this process, and of its children that have exited."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


@contextlib.contextmanager
def measured() -> Iterator[dict[str, float]]:
    """Fills the yielded dict with `wall` and `cpu` seconds of the block, `cpu` split into
    `cpu_self` (this process) and `cpu_children` (e.g. ffmpeg: work outside Python's GIL)."""
    out: dict[str, float] = {}
    w0, (s0, k0) = time.perf_counter(), cpu_seconds()
    yield out
    s1, k1 = cpu_seconds()
    out["wall"], out["cpu_self"], out["cpu_children"] = time.perf_counter() - w0, s1 - s0, k1 - k0
    out["cpu"] = out["cpu_self"] + out["cpu_children"]


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Limit torch, BLAS/OpenMP (numpy, scikit-learn) and faiss to `n` threads in the block."""
    import faiss
    from threadpoolctl import threadpool_limits

    before_torch, before_faiss = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield
    finally:
        torch.set_num_threads(before_torch)
        faiss.omp_set_num_threads(before_faiss)


def row(name: str, m: dict[str, float], n: float, unit: str) -> str:
    """One result line: rate per wall second and per CPU second."""
    return (f"  {name:<44}{n / m['wall']:>11.1f} {unit}/s   {n / m['cpu']:>10.1f} {unit} per "
            f"CPU-s   ({m['wall']:.2f} s wall, {m['cpu']:.2f} s CPU)")


# --- a synthetic VoxCeleb tree ------------------------------------------------------------------

def clip(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Noise plus three tones under a syllable-rate envelope, peak 0.8."""
    t = np.arange(int(seconds * SR)) / SR
    tones = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(100, 3000, 3))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 5) * t)
    x = envelope * tones + 0.3 * rng.standard_normal(len(t))
    return (0.8 * x / np.abs(x).max()).astype(np.float32)


def vox2_seconds(rng: np.random.Generator, n: int) -> np.ndarray:
    """Lengths like VoxCeleb2-dev's: at least 4 s, mean about 7.8 s, a tail cut at 20 s."""
    return np.minimum(4.0 + rng.exponential(3.8, n), 20.0)


def encode(wave: np.ndarray, path: Path) -> None:
    """WAV / FLAC through soundfile; m4a (AAC, 64 kbit/s) through imageio-ffmpeg's ffmpeg."""
    if path.suffix != ".m4a":
        sf.write(path, wave, SR, subtype="PCM_16")
        return
    import imageio_ffmpeg

    pcm = to_int16(wave).tobytes()
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y",
                    "-f", "s16le", "-ar", str(SR), "-ac", "1", "-i", "-", "-c:a", "aac",
                    "-b:a", "64k", str(path)], input=pcm, check=True, capture_output=True)


def vox_tree(root: Path, fmt: str, clips: list[Path], n_files: int) -> None:
    """`root/id<spk>/<video>/<n>.<fmt>` as VoxCeleb lays it out (about 182 utterances per
    speaker, 7 per video), each file a hard link to one of `clips`."""
    for i in range(n_files):
        spk, video, n = i // 182, (i % 182) // 7, i % 7
        file = root / f"id{spk:05d}" / f"v{spk:05d}{video:03d}" / f"{n:05d}.{fmt}"
        file.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(clips[i % len(clips)], file)
        except OSError:  # a file system without hard links
            shutil.copyfile(clips[i % len(clips)], file)


def make_corpus(folder: Path, n_clips: int, n_files: int, seed: int) -> dict[str, Path]:
    """A tree per format with `n_files` files; returns format -> tree root."""
    rng = np.random.default_rng(seed)
    waves = [clip(rng, s) for s in vox2_seconds(rng, n_clips)]
    roots = {}
    for fmt in FORMATS:
        clips = [folder / "clips" / fmt / f"{i:04d}.{fmt}" for i in range(n_clips)]
        clips[0].parent.mkdir(parents=True, exist_ok=True)
        for wave, path in zip(waves, clips):
            encode(wave, path)
        roots[fmt] = folder / "vox" / fmt
        vox_tree(roots[fmt], fmt, clips, n_files)
    return roots


def first(data: KaldiDir, n: int) -> KaldiDir:
    """The first `n` utterances of a data folder."""
    keep = list(data.wavs)[:n]

    def sub(m: dict[str, str] | None) -> dict[str, str] | None:
        return None if m is None else {u: m[u] for u in keep}

    return dataclasses.replace(data, wavs={u: data.wavs[u] for u in keep},
                               utt2spk=sub(data.utt2spk), utt2sess=sub(data.utt2sess))


# --- prepare + store -----------------------------------------------------------------------------

def bench_prepare(roots: dict[str, Path], out: Path) -> dict[str, dict]:
    results = {}
    print("\n== prepare: index VoxCeleb-layout trees (prepare_voxceleb; one process)")
    for fmt, root in roots.items():
        with measured() as m:
            report = prepare_voxceleb(root, out / fmt)
        results[fmt] = {**m, "files": report["n_utts"]}
        print(row(f"{fmt}: {report['n_utts']} files", m, report["n_utts"], "files"))
    return results


def _quantised(wave: np.ndarray) -> bytes:
    return to_int16(wave).tobytes()


def reference_store(paths: list[Path], out: Path, workers: int) -> int:
    """The store's previous decoding: `load_audio` file by file (one ffmpeg process per m4a),
    in this process or in a process pool whose workers send the float waves back; the main
    process quantises, hashes and writes, as the store does. Returns the samples written."""
    digest = hashlib.sha256()
    samples = 0
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(open(out, "wb"))
        if workers <= 0:
            waves: Iterator[np.ndarray] = map(load_audio, paths)
        else:
            pool = stack.enter_context(multiprocessing.get_context().Pool(workers))
            waves = pool.imap(load_audio, paths, chunksize=8)
        for wave in waves:
            raw = _quantised(wave)
            f.write(raw)
            digest.update(raw)
            samples += len(wave)
    return samples


def store_bytes(store: Path) -> dict[str, int]:
    shards = sum(f.stat().st_size for f in (store / "shards").iterdir())
    return {"shards": shards, "index": (store / "index.npz").stat().st_size,
            "meta": (store / "meta.json").stat().st_size}


def bench_store(data: dict[str, KaldiDir], out: Path, workers: int, ref_files: int
                ) -> dict[str, dict]:
    print(f"\n== store: build_wave_store, 1 thread and {workers} threads; reference: the "
          "previous path (one ffmpeg process per m4a file), in one process and in a "
          f"{workers}-process pool, on the first {ref_files} files")
    results: dict[str, dict] = {}
    for fmt, d in data.items():
        n = len(d.wavs)
        r: dict = {"files": n}
        for label, w in (("ssrl_1", 0), (f"ssrl_{workers}", workers)):
            store = out / f"{fmt}_{label}"
            with measured() as m:
                report = build_wave_store(d, store, progress=False, workers=w)
            r[label] = m
        r["hours"] = report["total_seconds"] / 3600
        r["bytes"] = store_bytes(store)
        ref_paths = list(d.wavs.values())[:ref_files]
        for label, w in (("reference_1", 0), (f"reference_{workers}", workers)):
            with measured() as m:
                samples = reference_store(ref_paths, out / f"{fmt}_{label}.bin", w)
            r[label] = m
        r["ref_files"], r["ref_hours"] = len(ref_paths), samples / SR / 3600
        results[fmt] = r
        child = r["ssrl_1"]["cpu_children"] / r["ssrl_1"]["cpu"]
        print(f"  -- {fmt}: {n} files, {r['hours']:.2f} h of audio; {child:.0%} of the "
              "store's CPU time is in ffmpeg processes")
        print(row("ssrl, 1 thread", r["ssrl_1"], n, "files"))
        print(row(f"ssrl, {workers} threads", r[f"ssrl_{workers}"], n, "files"))
        print(row("reference, 1 process", r["reference_1"], len(ref_paths), "files"))
        print(row(f"reference, {workers}-process pool", r[f"reference_{workers}"],
                  len(ref_paths), "files"))
        per_core = (n / r["ssrl_1"]["cpu"]) / (len(ref_paths) / r["reference_1"]["cpu"])
        print(f"ratio: store {fmt} ssrl/reference per core = {per_core:.2f} (files per CPU-s)")
        b = r["bytes"]
        print(f"  bytes: {b['shards'] / r['hours'] / 1e6:.1f} MB of shards per hour of audio; "
              f"index + meta {(b['index'] + b['meta']) / n:.0f} bytes per utterance")
    return results


def bench_writer(megabytes: int, folder: Path) -> dict:
    """The store's serial part: one thread writes every shard (closed shards are hashed on
    other threads). Measured in `folder`: writing int16 blocks into the page cache, the same
    through to the disk (fsync: what bounds 272 GB, which no page cache holds), and sha256."""
    block = np.random.default_rng(0).integers(-3000, 3000, 500_000, dtype=np.int16)  # 1 MB
    out: dict = {"megabytes": megabytes}
    for name, sync in (("write", False), ("disk", True)):
        with tempfile.TemporaryFile(dir=folder) as f, measured() as m:
            for _ in range(megabytes):
                f.write(block)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        out[name] = m
    digest = hashlib.sha256()
    with measured() as out["sha256"]:
        for _ in range(megabytes):
            digest.update(block)
    print(row("store writer thread, into the page cache", out["write"], megabytes, "MB"))
    print(row("  ... through to the disk (fsync)", out["disk"], megabytes, "MB"))
    print(row("sha256 of closed shards (per hashing thread)", out["sha256"], megabytes, "MB"))
    return out


# --- training input pipeline ---------------------------------------------------------------------

class PlanOnly(Augmenter):
    """Draws the plans but leaves the waves alone: a data-loader worker's share of the work
    when augmentation runs on the GPU (the arithmetic is the GPU's)."""

    def apply(self, wave: torch.Tensor, plan: AugPlan) -> torch.Tensor:
        return wave


def loader_epoch(store: WaveStore, views: list[View], batch: int, steps: int,
                 augmenter: Augmenter, plan_only: bool) -> dict[str, float]:
    batches = CropBatches(store, views, batch, steps, 0, Dist(), augmenter, torch.device("cpu"))
    # on a CPU the loader never defers augmentation; the GPU path's worker share is measured
    # by deferring it to a no-op instead
    batches.augment_on_device = plan_only
    with measured() as m:
        for _ in batches.epoch(0):
            pass
    return m


def frontend_rate(views: list[View], batch: int, repeats: int) -> dict[str, float]:
    """The log-mel front end on every crop of `batch * repeats` utterances."""
    frontend = Frontend("logmel", n_mels=80)
    waves = [torch.randn(batch, v.n_samples) * 0.1 for v in views for _ in range(v.n_crops)]
    with torch.no_grad(), measured() as m:
        for _ in range(repeats):
            for w in waves:
                frontend(w)
    return m


def reference_item(path: Path, views: list[View], noise: list[np.ndarray],
                   rirs: list[np.ndarray], rng: np.random.Generator) -> list[torch.Tensor]:
    """The usual per-utterance pipeline: read the file with soundfile, crop each view, add
    noise at a random SNR or convolve with an RIR (1/3 each) in numpy/scipy, then torchaudio's
    Kaldi fbank (80 bins) of every crop."""
    from scipy.signal import convolve
    from torchaudio.compliance import kaldi

    wave, _ = sf.read(path, dtype="float32")
    feats = []
    for view in views:
        for _ in range(view.n_crops):
            n = view.n_samples
            start = int(rng.integers(0, max(len(wave) - n, 0) + 1))
            x = np.resize(wave[start:start + n], n)
            u = rng.random()
            if view.augment and u < 1 / 3:
                x = convolve(x, rirs[int(rng.integers(len(rirs)))])[:n].astype(np.float32)
            elif view.augment and u < 2 / 3:
                src = noise[int(rng.integers(len(noise)))]
                at = int(rng.integers(0, len(src) - n + 1))
                part = src[at:at + n]
                snr = rng.uniform(0.0, 20.0)
                gain = np.sqrt(np.mean(x ** 2) / (np.mean(part ** 2) * 10 ** (snr / 10) + 1e-12))
                x = x + gain * part
            feats.append(kaldi.fbank(torch.from_numpy(x)[None] * 32768, num_mel_bins=80,
                                     sample_frequency=SR, dither=0.0))
    return feats


def bench_views(name: str, views: list[View], store: WaveStore, wav_paths: list[Path],
                batch: int, steps: int, ref_utts: int) -> dict:
    """One recipe's input pipeline on one core: the loader with CPU augmentation, the loader
    drawing plans only (the GPU path), the front end, and the reference pipeline."""
    n = batch * steps
    rng = np.random.default_rng(0)
    noise = [(rng.standard_normal(5 * SR) * 0.1).astype(np.float32) for _ in range(12)]
    decay = np.exp(-np.arange(SR // 4) / (0.05 * SR))
    rirs = [(rng.standard_normal(len(decay)) * decay).astype(np.float32) for _ in range(4)]
    with threads(1):
        r = {"utts": n, "ref_utts": ref_utts,
             "loader_cpu_aug": loader_epoch(store, views, batch, steps,
                                            synthetic_augmenter(rng), plan_only=False),
             "loader_plan_only": loader_epoch(store, views, batch, steps,
                                              synthetic_augmenter(rng, PlanOnly),
                                              plan_only=True),
             "frontend": frontend_rate(views, batch, steps)}
        with measured() as m:
            for i in range(ref_utts):
                reference_item(wav_paths[i % len(wav_paths)], views, noise, rirs, rng)
        r["reference"] = m
    crops = " + ".join(f"{v.n_crops} x {v.seconds:g} s{' aug' if v.augment else ''}"
                       for v in views)
    print(f"  -- {name} views: {crops}")
    print(row("loader: crops + CPU augmentation", r["loader_cpu_aug"], n, "utt"))
    print(row("loader: crops + plans (GPU augmentation)", r["loader_plan_only"], n, "utt"))
    print(row("log-mel front end, every crop", r["frontend"], n, "utt"))
    print(row("reference: soundfile + numpy/scipy + fbank", r["reference"], ref_utts, "utt"))
    ours = n / (r["loader_cpu_aug"]["cpu"] + r["frontend"]["cpu"])
    ref = ref_utts / r["reference"]["cpu"]
    print(f"  all on CPU (loader + front end): {ours:.1f} utt per CPU-s")
    print(f"ratio: pipeline ({name} views) ssrl/reference per core = {ours / ref:.2f} (utt per "
          "CPU-s, every crop, all on CPU)")
    return r


def bench_pipeline(store: WaveStore, wav_paths: list[Path], batch: int, steps: int,
                   ref_utts: int, views: dict[str, list[View]]) -> dict[str, dict]:
    print(f"\n== training input pipeline, one core, batch {batch}, crops from a wave store "
          "(reference: from the WAV files)")
    return {name: bench_views(name, v, store, wav_paths, batch, steps, ref_utts)
            for name, v in views.items()}


# --- per-utterance SSRL state --------------------------------------------------------------------

def bench_state(n: int, k: int, queue_len: int) -> dict:
    """Bytes of the per-utterance state at `n` utterances and the end-of-epoch work on it."""
    rng = np.random.default_rng(0)
    state = LabelState.start(rng.integers(0, k, n), k, queue_len)
    nbytes = {name: int(a.nbytes) for name, a in state.arrays().items()}
    state.recorded_label[:] = rng.integers(0, k, n)
    state.recorded_loss[:] = rng.lognormal(0.0, 1.0, n).astype(np.float32)
    with threads(1):
        with measured() as refresh:
            refresh_labels({"hold_epochs": 1}, 0, state)
        with measured() as gmm:
            state.p_clean[:] = clean_posterior(state.recorded_loss, seed=0)
    index = index_bytes(n)
    print(f"\n== per-utterance SSRL state at {n:,} utterances, K {k}, queue {queue_len}")
    print("  " + ", ".join(f"{name} {b / 2**20:.1f}" for name, b in nbytes.items()) + " MiB")
    print(f"  total {sum(nbytes.values()) / 2**20:.1f} MiB (host memory, and each checkpoint)")
    print(f"  wave-store index in memory (ids, speakers, sessions, offsets): "
          f"{index / 2**20:.0f} MiB per process")
    print(f"  end of epoch, one core: queue push + vote {refresh['cpu']:.2f} s, noisy-label "
          f"GMM {gmm['cpu']:.2f} s (CPU)")
    return {"bytes": nbytes, "total": sum(nbytes.values()), "index_bytes": index,
            "refresh": refresh, "gmm": gmm}


def index_bytes(n: int) -> int:
    """Python memory of a WaveStore's index at `n` VoxCeleb-like utterance ids (as WaveStore
    holds it: lists of str for ids, speakers, sessions; int64 arrays)."""
    ids = np.array([f"id{i // 182:05d}/v{i // 7:07d}/{i % 7:05d}.wav" for i in range(n)])
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    utt_ids = [str(u) for u in ids]
    spk = [u.split("/")[0] for u in utt_ids]
    sess = ["/".join(u.split("/")[:2]) for u in utt_ids]
    arrays = [np.zeros(n, dtype=np.int64) for _ in range(3)]
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del utt_ids, spk, sess, arrays
    return used


# --- k-means -------------------------------------------------------------------------------------

def bench_kmeans(n: int, d: int, k: int, iters: int, all_threads: int) -> dict:
    """Seconds per Lloyd iteration at (n, d, k), one thread: this project's loop, faiss.Kmeans,
    scikit-learn (same random init kind, no early stop); this project's also on all threads."""
    import warnings

    import faiss
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    warnings.filterwarnings("ignore", category=ConvergenceWarning)  # smoke sizes: few points
    x, _ = synthetic_embeddings(n, min(k, VOX2["speakers"]), d, seed=0)
    r: dict = {"n": n, "d": d, "k": k}
    with threads(1):
        with measured() as m:
            res = kmeans(x, k, max_iter=iters, tol=0.0, seed=0, use_gpu=False)
        r["ssrl"] = {**m, "iters": res.n_iter}
        fk = faiss.Kmeans(d, k, niter=iters, seed=0, max_points_per_centroid=n,
                          min_points_per_centroid=1, verbose=False)
        with measured() as m:
            fk.train(x)
        r["faiss"] = {**m, "iters": iters}
        with measured() as m:
            sk = KMeans(n_clusters=k, init="random", n_init=1, max_iter=iters, tol=0.0,
                        algorithm="lloyd", random_state=0).fit(x)
        r["sklearn"] = {**m, "iters": int(sk.n_iter_)}
    with threads(all_threads):
        with measured() as m:
            res = kmeans(x, k, max_iter=iters, tol=0.0, seed=0, use_gpu=False)
        r["ssrl_all"] = {**m, "iters": res.n_iter, "threads": all_threads}
    scale = VOX2["utts"] / n
    print(f"\n== k-means {n:,} x {d} -> {k}, {iters} iterations, one thread; per iteration, "
          f"and extrapolated to {VOX2['utts']:,} points (x {scale:.1f}, linear in n)")
    for name in ("ssrl", "faiss", "sklearn"):
        per = r[name]["cpu"] / r[name]["iters"]
        print(f"  {name:<10}{per:8.2f} CPU-s per iteration -> {per * scale:8.1f} core-s per "
              f"iteration at 1.09 M")
    per_all = r["ssrl_all"]["wall"] / r["ssrl_all"]["iters"]
    print(f"  ssrl, {all_threads} threads: {per_all:.2f} s wall per iteration "
          f"({r['ssrl']['wall'] / r['ssrl']['iters'] / per_all:.2f}x the one-thread wall rate)")
    for ref in ("faiss", "sklearn"):
        ratio = (r["ssrl"]["cpu"] / r["ssrl"]["iters"]) / (r[ref]["cpu"] / r[ref]["iters"])
        print(f"ratio: kmeans ssrl/{ref} = {ratio:.2f} (CPU time per iteration)")
    return r


# --- embedding and scoring -----------------------------------------------------------------------

def encoder_flops_per_frame(preset: str) -> float:
    """Forward FLOPs of the encoder per 10 ms frame (matmul/conv, FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    encoder = build_encoder({"preset": preset, "n_mels": 80}).eval()
    frames = 300
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        encoder(torch.randn(1, 80, frames))
    return counter.get_total_flops() / frames


def bench_embed(preset: str, n_utts: int) -> dict:
    """Full-utterance embeddings (front end + encoder), one thread, VoxCeleb1-like lengths."""
    rng = np.random.default_rng(0)
    seconds = vox2_seconds(rng, n_utts)
    waves = [(rng.standard_normal(int(s * SR)) * 0.1).astype(np.float32) for s in seconds]
    store = MemoryWaves([f"u{i}" for i in range(n_utts)], waves)
    encoder = build_encoder({"preset": preset, "n_mels": 80})
    with threads(1), measured() as m:
        embed_waves(encoder, Frontend("logmel", n_mels=80), store, torch.device("cpu"))
    flops = encoder_flops_per_frame(preset)
    print(f"\n== embedding extraction: {preset}, {n_utts} utterances of {seconds.mean():.1f} s "
          "mean, one thread")
    print(row("embed_waves", m, n_utts, "utt"))
    print(f"  encoder forward {flops / 1e6:.1f} MFLOP per 10 ms frame")
    return {**m, "utts": n_utts, "mean_seconds": float(seconds.mean()),
            "flops_per_frame": flops, "preset": preset}


def bench_scoring(sizes: dict[str, int], utts: int, dim: int, replicates: int) -> dict:
    """Cosine scores + EER/minDCF + speaker-bootstrap intervals, one thread, per list size."""
    print(f"\n== scoring with {replicates}-replicate speaker-bootstrap intervals, one thread "
          f"({utts:,} utterances x {dim})")
    out = {}
    with threads(1):
        for name, n_trials in sizes.items():
            t = synthetic_trials(utts, dim, n_trials, seed=0)
            with measured() as score:
                scores = cosine_scores(t.utt_ids, t.emb, t.enroll, t.test)
                evaluate(scores, t.labels)
            with measured() as boot:
                bootstrap_intervals(t, scores, replicates, threads=1)
            out[name] = {"trials": n_trials, "score": score, "bootstrap": boot}
            print(f"  {name} ({n_trials:,} trials): scoring + EER/minDCF {score['cpu']:.2f} s, "
                  f"intervals {boot['cpu']:.2f} s (CPU; {boot['wall']:.2f} s wall)")
    return out


# --- driver --------------------------------------------------------------------------------------

def bench_data(size: dict, views: dict[str, list[View]], workers: int, keep: str | None
               ) -> dict:
    """The parts that read audio files: prepare, store (and its writer), input pipeline."""
    with contextlib.ExitStack() as stack:
        folder = Path(keep) if keep else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        with measured() as m:
            roots = make_corpus(folder, size["clips"], size["files"], seed=0)
        print(f"corpus: {len(FORMATS)} x {size['files']} files in {m['wall']:.1f} s "
              f"({size['clips']} distinct clips per format, hard-linked)")
        out: dict = {"prepare": bench_prepare(roots, folder / "data")}
        data = {fmt: first(read_kaldi_dir(folder / "data" / fmt), size["store_files"])
                for fmt in FORMATS}
        out["store"] = bench_store(data, folder / "stores", workers, size["ref_files"])
        out["writer"] = bench_writer(size["writer_mb"], folder)
        out["pipeline"] = bench_pipeline(
            WaveStore(folder / "stores" / "wav_ssrl_1"), list(data["wav"].wavs.values()),
            size["batch"], size["steps"], size["ref_utts"], views)
    return out


PARTS = ("data", "state", "kmeans", "embed", "scoring")
SIZES = {  # full run / --smoke
    "clips": (48, 6), "files": (10_000, 40), "store_files": (2_000, 40), "ref_files": (400, 12),
    "writer_mb": (2048, 32),
    "batch": (64, 8), "steps": (16, 2), "ref_utts": (256, 8), "state_n": (VOX2["utts"], 10_000),
    "km_n": (40_000, 2_000), "km_d": (512, 32), "km_k": (8000, 50), "km_iters": (3, 2),
    "embed_preset": ("ecapa_c1024", "ecapa_tiny"), "embed_utts": (12, 2),
    "score_utts": (VOX1_TRIAL_UTTS, 2_000), "score_dim": (512, 64), "replicates": (1000, 20),
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), for tests")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="threads / processes for the parts that use several")
    p.add_argument("--json", help="also write every figure and the projection here")
    p.add_argument("--keep", help="build the corpus and stores in this folder and keep them")
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"comma-separated subset of {','.join(PARTS)} (the projection needs all)")
    a = p.parse_args(argv)
    parts = set(a.parts.split(","))
    if parts - set(PARTS):
        p.error(f"--parts: unknown {sorted(parts - set(PARTS))}; known: {', '.join(PARTS)}")
    size = {k: v[1] if a.smoke else v[0] for k, v in SIZES.items()}
    views = recipe_views(*((1.0, 2.0, 1.5, 1.0) if a.smoke else (2.0, 6.0, 4.0, 2.0)))
    load = os.getloadavg()
    print(f"scale benchmark: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f} at start; torch {torch.__version__}; workers {a.workers}"
          + (" (smoke sizes)" if a.smoke else ""))
    results: dict = {"cpus": os.cpu_count(), "load_start": load, "smoke": a.smoke,
                     "workers": a.workers}

    if "data" in parts:
        results.update(bench_data(size, views, a.workers, a.keep))
    if "state" in parts:
        results["state"] = bench_state(size["state_n"], K, queue_len=5)
    if "kmeans" in parts:
        results["kmeans"] = bench_kmeans(size["km_n"], size["km_d"], size["km_k"],
                                         size["km_iters"], a.workers)
    if "embed" in parts:
        results["embed"] = bench_embed(size["embed_preset"], size["embed_utts"])
    if "scoring" in parts:
        results["scoring"] = bench_scoring(
            {"E": 20_000, "H": 19_000} if a.smoke else {"E": TRIALS["E"], "H": TRIALS["H"]},
            size["score_utts"], size["score_dim"], size["replicates"])
    if parts == set(PARTS):
        results["projection"] = projection(results)
        print_projection(results["projection"])
    results["load_end"] = os.getloadavg()
    print(f"load average at the end: {results['load_end'][0]:.2f} {results['load_end'][1]:.2f} "
          f"{results['load_end'][2]:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1, default=float) + "\n")
    if "projection" in results:
        slowest = max((x for x in results["projection"] if x["kind"] == "cpu"),
                      key=lambda x: x["wall"][16])
        print(f"summary: on 16 cores the slowest stage the workflow waits for on the CPU is "
              f"{slowest['stage']} ({fmt_s(slowest['wall'][16])})")


if __name__ == "__main__":
    main()
