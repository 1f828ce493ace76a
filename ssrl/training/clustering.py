"""The `cluster` step (SSRL-NOTES, "Stage 1.5"): a model's embeddings of every training
utterance -> k-means -> labels.npz, utt2label and quality.json. The k-means itself is
`ssrl.training.kmeans`; the quality numbers are `ssrl.evaluation.label_quality`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssrl.data.stores import WaveStore
from ssrl.evaluation.embed import embed_waves
from ssrl.evaluation.label_quality import cluster_quality
from ssrl.files import InputError, save_npz, write_json, write_table
from ssrl.models.model_file import load_encoder
from ssrl.runtime import init_runtime
from ssrl.training.kmeans import kmeans


def cluster_stage(cfg: dict, model: Path, train: Path, out: Path,
                  progress: bool = False) -> dict:
    """The `cluster` step: embed every training utterance (full length) with `model`,
    L2-normalise, k-means into `cluster.k` clusters, and score the pseudo labels against the
    true speakers where they are known (reporting only). Writes out/labels.npz (utt_ids,
    labels, L2-normalised centroids), out/utt2label and out/quality.json. `progress`: show a
    progress bar while embedding (the caller decides: the CLI, on a terminal)."""
    c = cfg["cluster"]
    store = WaveStore(train)
    if c["k"] > len(store):
        raise InputError(f"config cluster.k (or ssrl.init_k) = {c['k']}: more clusters than the "
                         f"{len(store)} training utterances of {train}")
    device, d = init_runtime(cfg["runtime"])
    loaded = load_encoder(model, device)

    emb = embed_waves(loaded.encoder, loaded.frontend, store, device, progress=progress,
                      d=d)
    if not d.main:  # under torchrun the others helped embed; one process clusters and writes
        return {}
    emb /= np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    result = kmeans(emb, c["k"], max_iter=c["max_iter"], tol=c["tol"], seed=cfg["seed"])
    centroids = result.centroids / np.linalg.norm(result.centroids, axis=1,
                                                  keepdims=True).clip(1e-12)
    quality: dict = {"k": c["k"], "n_iter": result.n_iter, "converged": bool(result.converged)}
    if store.spk is not None:
        quality.update(cluster_quality(store.spk, result.labels))
    else:
        quality["n_clusters"] = int(len(np.unique(result.labels)))
    save_npz(out / "labels.npz", utt_ids=np.array(store.utt_ids), labels=result.labels,
             centroids=centroids.astype(np.float32))
    write_table(out / "utt2label", zip(store.utt_ids, result.labels))
    write_json(out / "quality.json", quality)
    return quality
