"""Speaker embeddings of full-length utterances, and their evaluation on trial lists.

Utterances are batched by length: sorted, grouped so that each group is cut to its shortest
member while losing at most `max_trim` (default 3 %) of any utterance. With `max_trim=0` every
utterance is embedded alone at its exact length.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ssrl.data.kaldi import read_trials
from ssrl.evaluation.scoring import cosine_scores
from ssrl.training.runtime import Dist, autocast
from ssrl.evaluation.metrics import evaluate


def length_batches(lengths: np.ndarray, max_trim: float = 0.03,
                   max_total: int = 16000 * 1200) -> list[np.ndarray]:
    """Index groups of near-equal length, longest first; `max_total` bounds a group's size."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    groups: list[np.ndarray] = []
    start = 0
    for pos in range(1, len(order) + 1):
        if pos == len(order):
            groups.append(order[start:pos])
            break
        longest, here = lengths[order[start]], lengths[order[pos]]
        too_short = here < (1.0 - max_trim) * longest
        too_big = here * (pos - start + 1) > max_total
        if too_short or too_big:
            groups.append(order[start:pos])
            start = pos
    return groups


@torch.no_grad()
def embed_batches(encoder: nn.Module, lengths: np.ndarray,
                  load: Callable[[np.ndarray, int], torch.Tensor], device: torch.device,
                  max_trim: float = 0.03, max_total: int = 16000 * 1200,
                  progress: bool = False, d: Dist = Dist()) -> np.ndarray:
    """Embeddings `[N, D]` (float32); `load(indices, n)` returns the group's inputs cut to n.
    Under `torchrun` each process embeds every world-th group and all of them are gathered."""
    was_training = encoder.training
    encoder.eval()
    done: list[tuple[np.ndarray, np.ndarray]] = []
    groups = length_batches(lengths, max_trim, max_total)[d.rank::d.world]  # this process's share
    for group in tqdm(groups, desc="embed", disable=not progress, unit="batch"):
        n = int(lengths[group].min())
        with autocast(device):
            done.append((group, encoder(load(group, n).to(device)).float().cpu().numpy()))
    encoder.train(was_training)
    if d.world > 1:  # every process ends up with every embedding
        shares: list = [None] * d.world
        torch.distributed.all_gather_object(shares, done)
        done = [item for share in shares for item in share]
    if not done:
        return np.zeros((0, 0), dtype=np.float32)
    out = np.zeros((len(lengths), done[0][1].shape[1]), dtype=np.float32)
    for group, emb in done:
        out[group] = emb
    return out


def embed_waves(encoder: nn.Module, frontend: nn.Module, store, device: torch.device,
                max_trim: float = 0.03, progress: bool = False, d: Dist = Dist()) -> np.ndarray:
    """Embed every utterance of a wave store; features computed on `device`."""
    def load(group: np.ndarray, n: int) -> torch.Tensor:
        waves = np.stack([store.full(int(i))[:n] for i in group])
        return frontend(torch.from_numpy(waves).to(device))
    return embed_batches(encoder, store.lengths, load, device, max_trim, progress=progress, d=d)


def embed_feats(encoder: nn.Module, feats, device: torch.device, max_trim: float = 0.03,
                progress: bool = False, d: Dist = Dist()) -> np.ndarray:
    """Embed every utterance of a precomputed log-mel store (evaluation sets)."""
    def load(group: np.ndarray, n: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([feats.feats(int(i))[:, :n] for i in group]))
    lengths = np.asarray(feats.n_frames)
    return embed_batches(encoder, lengths, load, device, max_trim, max_total=100 * 1200,
                         progress=progress, d=d)


def evaluate_embeddings(utt_ids: list[str], emb: np.ndarray, trials: dict[str, Path],
                        mean: np.ndarray | None = None) -> dict[str, float]:
    """EER (%) and minDCF per trial list; keys are plain for a single list, else `<key>_<list>`."""
    out: dict[str, float] = {}
    for name, path in trials.items():
        t = read_trials(path, known=set(utt_ids))
        scores = cosine_scores(utt_ids, emb, t.enroll, t.test, mean=mean)
        metrics = evaluate(scores, t.labels)
        for key in ("eer", "mindcf_0.01", "mindcf_0.05"):
            out[key if len(trials) == 1 else f"{key}_{name}"] = float(metrics[key])
    return out


def evaluate_store(encoder: nn.Module, frontend: nn.Module, store,
                   device: torch.device) -> dict[str, float]:
    """Test-trial metrics of an encoder on a wave store (used for per-epoch curves)."""
    emb = embed_waves(encoder, frontend, store, device)
    return evaluate_embeddings(store.utt_ids, emb, store.trials)
