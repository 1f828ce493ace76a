"""Speaker embeddings of full-length utterances, and their evaluation on trial lists.

An utterance's embedding never depends on which other utterances are embedded with it: a batch
only ever holds utterances of exactly the same number of frames (no trimming, no padding), and
each utterance's features are computed on its own.

Long recordings are embedded in bounded memory. The front end runs a chunk of frames at a time
(`Frontend.utterance`, exact), and an utterance longer than `segment_seconds` (default 180 s,
longer than any VoxCeleb1 test utterance) is cut into near-equal segments no longer than that;
its embedding is the length-weighted mean of the segments' L2-normalised embeddings. ECAPA's
squeeze-excitation and attentive pooling look at the whole sequence, so exact chunking of the
encoder is not possible; segment averaging is the usual choice (docs/method.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ssrl.data.kaldi import read_trials
from ssrl.evaluation.metrics import evaluate, metric_keys
from ssrl.evaluation.scoring import cosine_scores
from ssrl.files import InputError
from ssrl.runtime import Dist, autocast

SEGMENT_SECONDS = 180.0
FRAMES_PER_SECOND = 100  # 10 ms hop
#: Frames in one encoder batch (20 minutes of audio); utterances longer than this go alone.
BATCH_FRAMES = 120_000


def exact_length_batches(n_frames: np.ndarray, indices: np.ndarray,
                         max_frames: int = BATCH_FRAMES) -> list[np.ndarray]:
    """`indices` grouped into batches of utterances with exactly equal frame counts, each
    batch holding at most `max_frames` frames (at least one utterance), longest first."""
    order = indices[np.argsort(-n_frames[indices], kind="stable")]
    batches: list[np.ndarray] = []
    start = 0
    for pos in range(1, len(order) + 1):
        if (pos == len(order) or n_frames[order[pos]] != n_frames[order[start]]
                or n_frames[order[start]] * (pos - start + 1) > max_frames):
            batches.append(order[start:pos])
            start = pos
    return batches


def segment_bounds(n: int, max_len: int) -> list[tuple[int, int]]:
    """[start, end) of the fewest near-equal segments of a length-n sequence, each <= max_len."""
    k = -(-n // max_len)
    edges = [round(i * n / k) for i in range(k + 1)]
    return list(zip(edges[:-1], edges[1:]))


@torch.no_grad()
def embed_utterances(encoder: nn.Module, n_frames: np.ndarray,
                     features: Callable[[int], torch.Tensor], device: torch.device,
                     segment_seconds: float | None = SEGMENT_SECONDS, progress: bool = False,
                     d: Dist = Dist()) -> np.ndarray:
    """Embeddings `[N, D]` (float32) of N utterances; `features(i)` gives utterance i's
    features `[n_mels, n_frames[i]]` on `device`. Under `torchrun` each process embeds its
    share and every process gets all embeddings."""
    n_frames = np.asarray(n_frames, dtype=np.int64)
    seg = int(segment_seconds * FRAMES_PER_SECOND) if segment_seconds else None
    long = n_frames > seg if seg else np.zeros(len(n_frames), dtype=bool)
    batches = exact_length_batches(n_frames, np.flatnonzero(~long))[d.rank::d.world]
    longs = np.flatnonzero(long)[d.rank::d.world]
    was_training = encoder.training
    encoder.eval()
    done: list[tuple[np.ndarray, np.ndarray]] = []

    def run(x: torch.Tensor) -> np.ndarray:
        with autocast(device):
            return encoder(x).float().cpu().numpy()

    for group in tqdm(batches, desc="embed", disable=not progress, unit="batch"):
        done.append((group, run(torch.stack([features(int(i)) for i in group]))))
    for i in longs:  # one long recording at a time, in segments
        feats = features(int(i))
        parts = segment_bounds(feats.shape[1], seg)
        emb = np.concatenate([run(feats[None, :, a:b]) for a, b in parts])
        emb /= np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
        weights = np.array([b - a for a, b in parts], dtype=np.float64)
        done.append((np.array([i]), (weights @ emb / weights.sum())[None].astype(np.float32)))
    encoder.train(was_training)
    if d.world > 1:  # every process ends up with every embedding
        shares: list = [None] * d.world
        torch.distributed.all_gather_object(shares, done)
        done = [item for share in shares for item in share]
    if not done:
        return np.zeros((len(n_frames), 0), dtype=np.float32)
    out = np.zeros((len(n_frames), done[0][1].shape[1]), dtype=np.float32)
    for group, emb in done:
        out[group] = emb
    return out


def embed_waves(encoder: nn.Module, frontend: nn.Module, store, device: torch.device,
                segment_seconds: float | None = SEGMENT_SECONDS, progress: bool = False,
                d: Dist = Dist()) -> np.ndarray:
    """Embed every utterance of a wave store (or `MemoryWaves`); features computed on
    `device`, one utterance at a time."""
    n_frames = np.array([frontend.n_frames(int(n)) for n in store.lengths], dtype=np.int64)

    def features(i: int) -> torch.Tensor:
        return frontend.utterance(torch.from_numpy(store.full(i)).to(device))

    return embed_utterances(encoder, n_frames, features, device, segment_seconds, progress, d)


def check_feats_frontend(feats, frontend_description: dict, model: str | Path) -> None:
    """A feature store is only valid for a model trained on the same front end: features of
    another one embed without error but score worse (issue 19: EER 45.3 instead of 39.1)."""
    import json

    built = feats.meta.get("frontend")
    wanted = json.loads(json.dumps(frontend_description))  # as the store's JSON holds it
    if built == wanted:
        return
    if not isinstance(built, dict):
        raise InputError(f"{feats.path}/meta.json: the feature store does not record its front "
                         f"end, so it cannot be checked against {model}; rebuild it, or embed "
                         "the wave store (--data)")
    key = next(k for k in sorted(set(built) | set(wanted)) if built.get(k) != wanted.get(k))
    raise InputError(f"{feats.path}/meta.json: features of another front end than the model "
                     f"{model} ({key} {built.get(key)!r} here, {wanted.get(key)!r} in the "
                     "model); rebuild the feature store with the model's front end, or embed "
                     "the wave store (--data)")


def embed_feats(encoder: nn.Module, feats, device: torch.device,
                segment_seconds: float | None = SEGMENT_SECONDS, progress: bool = False,
                d: Dist = Dist()) -> np.ndarray:
    """Embed every utterance of a precomputed feature store (evaluation sets)."""
    def features(i: int) -> torch.Tensor:
        return torch.from_numpy(feats.feats(i)).to(device)

    return embed_utterances(encoder, np.asarray(feats.n_frames), features, device,
                            segment_seconds, progress, d)


def evaluate_embeddings(utt_ids: list[str], emb: np.ndarray, trials: dict[str, Path],
                        split: str = "test", mean: np.ndarray | None = None) -> dict[str, float]:
    """EER (%) and minDCF of each labelled trial list, under the keys of `metric_keys`."""
    out: dict[str, float] = {}
    for name, path in trials.items():
        t = read_trials(path, known=set(utt_ids))
        if t.labels is None:
            continue
        metrics = evaluate(cosine_scores(utt_ids, emb, t.enroll, t.test, mean=mean), t.labels)
        for metric, key in metric_keys(split, name, list(trials)).items():
            out[key] = float(metrics[metric])
    return out


def evaluate_waves(encoder: nn.Module, frontend: nn.Module, store, device: torch.device,
                   split: str = "dev") -> dict[str, float]:
    """Trial metrics of an encoder on a wave store (the per-epoch dev curves)."""
    emb = embed_waves(encoder, frontend, store, device)
    return evaluate_embeddings(store.utt_ids, emb, store.trials, split)
