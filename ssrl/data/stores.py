"""Wave and feature stores: every utterance of a set decoded once into memory-mappable shards.

Training reads random crops from hundreds of thousands of utterances per epoch; decoding audio
files (or m4a through ffmpeg) each time would starve the GPU. The wave store holds int16 16 kHz
samples back to back in a few large shard files, so a crop is a slice of a memory map. The
feature store does the same for fixed log-mel features of evaluation sets. Formats are in
docs/architecture.md; both stores are built in a temporary folder and renamed when complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from tqdm import tqdm

from ssrl.data.audio import (
    FFMPEG_BATCH,
    INT16_SCALE,
    SAMPLE_RATE,
    AudioError,
    load_audio,
    load_audio_many,
    to_int16,
)
from ssrl.data.kaldi import KaldiDir, read_audio_source, read_trials, trial_rows
from ssrl.files import (
    InputError,
    atomic_dir,
    read_json,
    save_npz,
    sha256_file,
    write_json,
    write_table,
)

log = logging.getLogger("ssrl.data")

def _fit_int16(wave: np.ndarray) -> tuple[np.ndarray, bool]:
    """A float wave scaled into [-1, 1] when it exceeds it (float WAVs may), and whether it was.

    Clipping would distort the peaks; a uniform scale changes nothing the front end sees (it
    peak-normalises every crop) and nothing augmentation does (SNRs are relative)."""
    peak = float(np.max(np.abs(wave)))
    if peak <= 1.0:
        return wave, False
    return wave / peak, True


def _load_index(file: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Load an index .npz fully, turning every way it can be broken into an InputError."""
    if not file.is_file():
        raise InputError(f"{file}: file not found (not a store, or an unfinished one)")
    try:
        with np.load(file, allow_pickle=False) as npz:
            index = {key: npz[key] for key in keys}
    except KeyError as err:
        raise InputError(f"{file}: corrupt index (missing array {err})") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(f"{file}: corrupt index ({err})") from None
    n = len(index[keys[0]])
    if any(len(a) != n for a in index.values()):
        raise InputError(f"{file}: corrupt index (arrays of different lengths)")
    return index


def _progress(items: Any, total: int, desc: str, enabled: bool) -> Any:
    return tqdm(items, total=total, desc=desc, unit="utt", leave=False, disable=not enabled)


#: Utterances one decoding task handles (one ffmpeg process for m4a, see `load_audio_many`).
#: Fixed, so the tasks and hence the store do not depend on the number of workers.
DECODE_CHUNK = FFMPEG_BATCH


@dataclass
class _Decoded:
    """One utterance as the store keeps it: int16 samples, or why there are none."""

    pcm: np.ndarray | None
    reason: str = ""
    rescaled: bool = False  # float audio beyond [-1, 1], scaled down to fit


def _decode_chunk(paths: list[Path]) -> list[_Decoded]:
    """Decode `paths` and quantise them to int16 (the CPU work of a decoding thread)."""
    out = []
    for wave in load_audio_many(paths, SAMPLE_RATE):
        if isinstance(wave, AudioError):
            out.append(_Decoded(None, wave.reason))
            continue
        wave, scaled = _fit_int16(wave)
        out.append(_Decoded(to_int16(wave), rescaled=scaled))
    return out


def _decoded(paths: list[Path], workers: int) -> Iterator[_Decoded]:
    """Decode `paths` in order, in chunks of DECODE_CHUNK, on `workers` threads (0 or 1: in
    this thread).

    Threads, not processes: the decoding itself runs in ffmpeg processes (m4a) or in
    libsndfile and numpy, which release the GIL, so threads scale with cores without copying
    every wave between processes (a process pool was slower than one process, see
    docs/benchmarks.md). At most 2 x `workers` chunks are decoded ahead of the writer."""
    chunks = [paths[i:i + DECODE_CHUNK] for i in range(0, len(paths), DECODE_CHUNK)]
    if workers <= 1:
        for chunk in chunks:
            yield from _decode_chunk(chunk)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="ssrl-decode")
    try:
        ahead: deque[Future[list[_Decoded]]] = deque()
        for chunk in chunks:
            ahead.append(pool.submit(_decode_chunk, chunk))
            if len(ahead) > 2 * workers:
                yield from ahead.popleft().result()
        while ahead:
            yield from ahead.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # leaving early: drop what is queued


class _ShardWriter:
    """Appends int16 utterances to shard files of at most `shard_bytes` (one utterance may
    exceed it alone: utterances are never split).

    Each shard is hashed once it is closed, on `hashers` threads, by reading it back (from the
    page cache): hashing costs more than writing (docs/benchmarks.md), and in the writing
    thread it would add to the build's one serial part. Use as a context manager; `finish()`
    waits for the checksums and returns the shard list of meta.json."""

    def __init__(self, folder: Path, shard_bytes: int, hashers: int = 1) -> None:
        self.folder, self.shard_bytes = folder, shard_bytes
        self._names: list[str] = []
        self._sizes: list[int] = []  # samples per closed shard
        self._digests: list[Future[str]] = []
        self._hashing = ThreadPoolExecutor(max(hashers, 1), thread_name_prefix="ssrl-hash")
        self._file: BinaryIO | None = None
        self._filled = 0  # samples in the current shard

    def __enter__(self) -> _ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
        self._hashing.shutdown(wait=True, cancel_futures=True)

    def add(self, pcm: np.ndarray) -> tuple[int, int]:
        """Write `pcm` (int16); return (shard number, offset in samples)."""
        if self._file is None or (self._filled + len(pcm)) * 2 > self.shard_bytes:
            self._close_shard()
            self._names.append(f"shards/{len(self._names):05d}.bin")
            self._file = open(self.folder / self._names[-1], "wb")  # noqa: SIM115 - see _close_shard
        self._file.write(np.ascontiguousarray(pcm, dtype="<i2"))
        offset, self._filled = self._filled, self._filled + len(pcm)
        return len(self._names) - 1, offset

    def _close_shard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._sizes.append(self._filled)
            self._digests.append(self._hashing.submit(sha256_file, self.folder / self._names[-1]))
            self._filled = 0

    def finish(self) -> list[dict[str, Any]]:
        """Close the last shard; every shard's file, sha256 and number of samples."""
        self._close_shard()
        return [{"file": name, "sha256": digest.result(), "n_samples": size}
                for name, digest, size in zip(self._names, self._digests, self._sizes)]


def build_wave_store(data: KaldiDir, out: str | os.PathLike, on_bad: str = "error",
                     min_seconds: float = 0.5, shard_bytes: int = 256 * 2**20,
                     progress: bool = False, workers: int = 0) -> dict:
    """Decode every utterance of `data` into a wave store at `out`; return the build report.

    A bad utterance (unreadable, empty, silent, non-finite or shorter than `min_seconds`) raises
    an InputError naming its wav.scp line and audio file when `on_bad="error"`; with "skip" it is
    left out and listed in report["skipped"], and trials naming it are dropped (and counted).
    Trial lists are copied into the store (`trials/<name>`) so it is self-contained.
    `workers` > 1 decodes on that many threads (see `_decoded`); the store is byte-identical
    whatever the number.
    """
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', not {on_bad!r}")
    out = Path(os.path.abspath(out))
    min_samples = int(round(min_seconds * SAMPLE_RATE))
    utts, paths = list(data.wavs), list(data.wavs.values())

    utt_ids: list[str] = []
    shard_of: list[int] = []
    offsets: list[int] = []
    lengths: list[int] = []
    skipped: list[dict[str, str]] = []
    rescaled: list[str] = []

    with atomic_dir(out) as tmp, _ShardWriter(tmp, shard_bytes, workers) as writer:
        (tmp / "shards").mkdir()
        waves = _decoded(paths, workers)
        decoded = _progress(waves, len(paths), f"store {out.name}", progress)
        try:
            for utt, wav, item in zip(utts, paths, decoded):
                pcm, reason = item.pcm, item.reason
                if pcm is not None and len(pcm) < min_samples:
                    pcm, reason = None, (f"too short ({len(pcm) / SAMPLE_RATE:.3f} s < "
                                         f"min_seconds {min_seconds:g} s)")
                if pcm is None:
                    if on_bad == "error":
                        raise InputError(f"{data.where(utt)}: {wav}: {reason}")
                    skipped.append({"utt": utt, "path": str(wav), "reason": reason})
                    continue
                if item.rescaled:
                    rescaled.append(utt)
                shard, offset = writer.add(pcm)
                utt_ids.append(utt)
                shard_of.append(shard)
                offsets.append(offset)
                lengths.append(len(pcm))
        finally:
            decoded.close()
            waves.close()  # stops the decoding threads when leaving early
        shards = writer.finish()

        if rescaled:
            log.warning("%s: %d utterance(s) had samples beyond [-1, 1] (float audio) and were "
                        "scaled down to fit, e.g. %s", data.scp, len(rescaled), rescaled[0])
        if skipped and not utt_ids:
            raise InputError(f"{data.scp}: no usable utterances "
                             f"(all {len(skipped)} skipped as bad)")

        kept = set(utt_ids)
        trials_meta: dict[str, str] = {}
        n_trials: dict[str, int] = {}
        dropped: dict[str, int] = {}
        for name, file in data.trials.items():
            trials = read_trials(file, known=data.wavs)
            keep = [i for i, (e, t) in enumerate(zip(trials.enroll, trials.test))
                    if e in kept and t in kept]
            dropped[name] = len(trials) - len(keep)
            if not keep:
                raise InputError(f"{file}: every trial names a skipped utterance")
            write_table(tmp / "trials" / name, trial_rows(trials.subset(keep)))
            trials_meta[name] = str(out / "trials" / name)
            n_trials[name] = len(keep)

        report = {
            "source": str(data.path),
            "n_utts": len(utt_ids),
            "n_skipped": len(skipped),
            "skipped": skipped,
            "n_rescaled": len(rescaled),
            "total_seconds": round(sum(lengths) / SAMPLE_RATE, 3),
            "n_trials": n_trials,
            "trials_dropped": dropped,
        }
        meta: dict[str, Any] = {
            "sample_rate": SAMPLE_RATE,
            "n_utts": len(utt_ids),
            "total_samples": int(sum(lengths)),
            "shards": shards,
            "trials": trials_meta,
            "report": report,
        }
        for key, source in (("spk", data.utt2spk), ("sess", data.utt2sess),
                            ("category", data.utt2category)):
            if source is not None:
                meta[key] = [source[u] for u in utt_ids]
        save_npz(tmp / "index.npz", utt_ids=np.array(utt_ids, dtype=str),
                 shard=np.array(shard_of, dtype=np.int32),
                 offset=np.array(offsets, dtype=np.int64),
                 length=np.array(lengths, dtype=np.int64))
        # meta.json identifies the store's whole content (a job's fingerprint digests it):
        # the shards above, the utterance ids and the trial lists
        meta["utt_ids_sha256"] = ids_digest(utt_ids)
        meta["trials_sha256"] = {name: sha256_file(tmp / "trials" / name) for name in trials_meta}
        write_json(tmp / "meta.json", meta)
    return report


def ids_digest(utt_ids: list[str]) -> str:
    """The sha256 of a store's utterance ids in order (part of what identifies its content)."""
    return hashlib.sha256("\n".join(utt_ids).encode()).hexdigest()


class _LazyMaps:
    """Memory maps opened on first use in each process (a forked DataLoader worker reopens)."""

    def __init__(self) -> None:
        self._pid = -1
        self._maps: dict[Path, np.memmap] = {}

    def get(self, file: Path, dtype: str, shape: tuple[int, ...] | None = None) -> np.memmap:
        if self._pid != os.getpid():
            self._maps, self._pid = {}, os.getpid()
        if file not in self._maps:
            self._maps[file] = np.memmap(file, dtype=dtype, mode="r", shape=shape)
        return self._maps[file]

    def __getstate__(self) -> dict:
        return {"_pid": -1, "_maps": {}}  # never pickle open maps (spawned workers reopen)


class _Utterances:
    """What both stores share: utterance ids in store order, lookup by id, and the set's lists
    (speaker, session, category of each utterance; the trial lists, copied into the store)."""

    path: Path
    meta: dict
    utt_ids: list[str]
    _positions: dict[str, int] | None = None

    def _read_lists(self) -> None:
        self.spk: list[str] | None = self.meta.get("spk")
        self.sess: list[str] | None = self.meta.get("sess")
        self.categories: list[str] | None = self.meta.get("category")
        # the store's own copies first, so a moved or copied store still finds its trials
        self.trials: dict[str, Path] = {
            k: own if (own := self.path / "trials" / k).is_file() else Path(v)
            for k, v in self.meta.get("trials", {}).items()}

    def __len__(self) -> int:
        return len(self.utt_ids)

    def index_of(self, utt_id: str) -> int:
        if self._positions is None:
            self._positions = {u: i for i, u in enumerate(self.utt_ids)}
        try:
            return self._positions[utt_id]
        except KeyError:
            raise KeyError(f"{self.path}: no utterance {utt_id!r} in the store") from None


def crop(wave: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """`n_samples` of `wave` from a uniformly random offset. A wave shorter than that is
    repeated end to end from its start (tiled) up to the length; `rng` is not used then."""
    length = len(wave)
    if length >= n_samples:
        start = int(rng.integers(0, length - n_samples + 1))
        return wave[start:start + n_samples]
    return np.tile(wave, -(-n_samples // length))[:n_samples]


class WaveStore(_Utterances):
    """Read side of a wave store: int16 views, float crops, metadata."""

    def __init__(self, path: str | os.PathLike, verify: bool = False) -> None:
        self.path = Path(path)
        self.meta: dict = read_json(self.path / "meta.json")
        index = _load_index(self.path / "index.npz", ("utt_ids", "shard", "offset", "length"))
        self.utt_ids: list[str] = [str(u) for u in index["utt_ids"]]
        self._shard = index["shard"].astype(np.int64)
        self._offset = index["offset"].astype(np.int64)
        self.lengths: np.ndarray = index["length"].astype(np.int64)
        self.sample_rate: int = int(self.meta["sample_rate"])
        self._read_lists()
        self._files = [self.path / s["file"] for s in self.meta["shards"]]
        self._maps = _LazyMaps()
        for file, shard in zip(self._files, self.meta["shards"]):
            if not file.is_file():
                raise InputError(f"{file}: shard file not found")
            if file.stat().st_size != 2 * shard["n_samples"]:
                raise InputError(f"{file}: shard has {file.stat().st_size} bytes, expected "
                                 f"{2 * shard['n_samples']} (truncated or changed)")
            if verify and sha256_file(file) != shard["sha256"]:
                raise InputError(f"{file}: checksum mismatch (the store is corrupt or was "
                                 "changed after it was built; rebuild it)")

    def wave(self, i: int) -> np.ndarray:
        """The stored int16 samples of utterance `i` (a read-only memory-map view, no copy)."""
        shard = self._maps.get(self._files[self._shard[i]], "<i2")
        start = self._offset[i]
        return shard[start:start + self.lengths[i]]

    def full(self, i: int) -> np.ndarray:
        """The whole utterance `i` as float32 in [-1, 1)."""
        return self.wave(i).astype(np.float32) / INT16_SCALE

    def crop(self, i: int, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        """A float32 crop of `n_samples` at a uniformly random offset (see `crop`)."""
        return crop(self.wave(i), n_samples, rng).astype(np.float32) / INT16_SCALE


def build_feat_store(store: WaveStore, frontend: Callable[[torch.Tensor], torch.Tensor],
                     out: str | os.PathLike, frontend_meta: dict,
                     progress: bool = False) -> dict:
    """Compute features of every full utterance of `store` into a feature store at `out`.

    `frontend` maps a float32 [1, samples] tensor to [1, n_mels, frames]; frames are stored as
    float16 rows [frames, n_mels] back to back in feats.bin. `frontend_meta` (a description of
    the front end and its settings) goes into meta.json so a mismatch can be detected on use.
    The store's lists (speaker/session/category of each utterance, the trial lists) are copied
    too: a test set is then kept once, as features, and its wave store can go (`temp()` in the
    workflow) while scoring and the tables still find its trials and speakers here.
    Returns meta.json's content.
    """
    out = Path(os.path.abspath(out))
    if not len(store):
        raise InputError(f"{store.path}: the store is empty; there are no features to compute")
    offsets: list[int] = []
    n_frames: list[int] = []
    n_mels: int | None = None
    total = 0
    with atomic_dir(out) as tmp:
        with open(tmp / "feats.bin", "wb") as f:
            for i in _progress(range(len(store)), len(store), f"feats {out.name}", progress):
                with torch.no_grad():
                    feats = frontend(torch.from_numpy(store.full(i))[None])
                if feats.dim() != 3 or feats.shape[0] != 1:
                    raise ValueError(f"frontend must return [1, n_mels, frames], got "
                                     f"{list(feats.shape)}")
                if n_mels is None:
                    n_mels = int(feats.shape[1])
                elif feats.shape[1] != n_mels:
                    raise ValueError(f"frontend returned {feats.shape[1]} bins, "
                                     f"earlier {n_mels}")
                rows = feats[0].T.detach().cpu().numpy().astype("<f2")
                f.write(np.ascontiguousarray(rows).tobytes())
                offsets.append(total)
                n_frames.append(rows.shape[0])
                total += rows.shape[0]
        meta = {"n_mels": n_mels, "n_utts": len(store), "total_frames": total,
                "frontend": frontend_meta, "source": str(store.path),
                "trials": {}, "trials_sha256": {},
                "utt_ids_sha256": ids_digest(store.utt_ids)}
        for key in ("spk", "sess", "category"):
            if key in store.meta:
                meta[key] = store.meta[key]
        for name, file in store.trials.items():
            (tmp / "trials").mkdir(exist_ok=True)
            shutil.copyfile(file, tmp / "trials" / name)
            meta["trials"][name] = str(out / "trials" / name)
            meta["trials_sha256"][name] = sha256_file(tmp / "trials" / name)
        save_npz(tmp / "index.npz", utt_ids=np.array(store.utt_ids, dtype=str),
                 offset=np.array(offsets, dtype=np.int64),
                 n_frames=np.array(n_frames, dtype=np.int64))
        write_json(tmp / "meta.json", meta)
    return meta


class FeatStore(_Utterances):
    """Read side of a feature store: float32 [n_mels, frames] per utterance."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.meta: dict = read_json(self.path / "meta.json")
        index = _load_index(self.path / "index.npz", ("utt_ids", "offset", "n_frames"))
        self.utt_ids: list[str] = [str(u) for u in index["utt_ids"]]
        self._offset = index["offset"].astype(np.int64)
        self.n_frames: np.ndarray = index["n_frames"].astype(np.int64)
        self.n_mels: int = int(self.meta["n_mels"])
        self._read_lists()
        self._file = self.path / "feats.bin"
        expected = 2 * self.n_mels * int(self.n_frames.sum())
        if not self._file.is_file():
            raise InputError(f"{self._file}: file not found")
        if self._file.stat().st_size != expected:
            raise InputError(f"{self._file}: has {self._file.stat().st_size} bytes, expected "
                             f"{expected} (truncated or changed)")
        self._maps = _LazyMaps()

    def feats(self, i: int) -> np.ndarray:
        """Features of utterance `i` as float32 [n_mels, frames] (a copy)."""
        rows = self._maps.get(self._file, "<f2", (int(self.n_frames.sum()), self.n_mels))
        start = self._offset[i]
        return rows[start:start + self.n_frames[i]].T.astype(np.float32)


class MemoryWaves:
    """Waves held in memory, with the reading interface of a wave store (`utt_ids`, `lengths`,
    `spk`, `full`, `crop`): what `embed` uses for a Kaldi folder or wav.scp that has no store,
    and what benchmarks train on."""

    def __init__(self, utt_ids: list[str], waves: list[np.ndarray],
                 spk: list[str] | None = None):
        self.utt_ids, self._waves, self.spk = utt_ids, waves, spk
        self.lengths = np.array([len(w) for w in waves], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.utt_ids)

    def full(self, i: int) -> np.ndarray:
        return self._waves[i]

    def crop(self, i: int, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        return crop(self._waves[i], n_samples, rng).astype(np.float32)


def open_store(path: str | os.PathLike) -> WaveStore | FeatStore:
    """A wave store or a feature store, whichever `path` holds: for what reads only a set's
    utterance ids, speakers and trial lists (scoring, the tables)."""
    path = Path(path)
    if not (path / "meta.json").is_file():
        raise InputError(f"{path}: not a wave or feature store (no meta.json)")
    meta = read_json(path / "meta.json")
    if "n_mels" not in meta:
        return WaveStore(path)
    if "utt_ids_sha256" not in meta:  # built before feature stores carried the set's lists
        raise InputError(f"{path}: a feature store without the set's trial lists and speakers "
                         "(made by an older ssrl): rebuild it, e.g. snakemake --forcerun "
                         "feature_store")
    return FeatStore(path)


def open_waves(path: str | os.PathLike) -> WaveStore | MemoryWaves:
    """A wave store folder as it is; a Kaldi folder, a wav.scp-style list or a plain folder of
    audio files (`read_audio_source`) read into memory."""
    path = Path(path)
    if (path / "index.npz").exists():
        return WaveStore(path)
    data = read_audio_source(path)
    waves = []
    for utt, wav in data.wavs.items():
        try:
            waves.append(load_audio(wav))
        except AudioError as err:
            raise InputError(f"{data.where(utt)}: {err}") from None
    return MemoryWaves(list(data.wavs), waves)
