"""`python -m ssrl <step>`: one command per workflow step (each Snakemake rule calls one).

Configuration arrives as `--cfg JSON` (the validated, default-filled config, or the sections a
step needs); paths arrive as flags. Errors the user can fix print one line naming the file and
exit with status 2; a training step that fails marks its MLflow run FAILED.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path

import numpy as np

from ssrl.files import InputError, OutputError, save_npz, write_json, write_table

log = logging.getLogger("ssrl")


def _cfg(text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"--cfg: invalid JSON ({err.msg} at column {err.colno})") from None


def _tracker(cfg: dict, results: Path, out: Path, stage: str, run_name: str,
             variant: str = "main", parent: str | None = None):
    from ssrl.tracking.mlflow_run import Tracker, resolve_tracking_uri

    if _rank() != 0:  # under torchrun only the main process tracks and writes summaries
        return _NullTracker()
    uri = resolve_tracking_uri((cfg.get("tracking") or {}).get("uri"), results)
    tags = {"stage": stage, "variant": variant, "dataset": cfg.get("data", {}).get("source", "?")}
    return Tracker(uri, cfg.get("experiment", "ssrl"), run_name, out, tags=tags, params=cfg,
                   parent_run_name=parent)


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


class _NullTracker:
    """What the non-main `torchrun` processes get instead of an MLflow run."""

    def __enter__(self) -> _NullTracker:
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def log_metrics(self, metrics, step: int) -> None:
        pass

    def log_params(self, params) -> None:
        pass

    def set_tags(self, tags) -> None:
        pass

    def log_artifact(self, path, artifact_path=None) -> None:
        pass


# --- data --------------------------------------------------------------------------------

def cmd_prepare(a: argparse.Namespace) -> None:
    """Kaldi-style folders train/ test/ noise/ rir/ from the configured source."""
    from ssrl.data import prepare
    from ssrl.files import atomic_dir

    data = _cfg(a.cfg)
    out = Path(a.out)
    if data["source"] == "builtin":
        from ssrl.data.synth import CorpusSpec, generate_corpus

        generate_corpus(out, CorpusSpec.from_dict(data["builtin"]))
        return
    with atomic_dir(out) as tmp:
        if data["source"] == "kaldi":
            k = data["kaldi"]
            for name in ("train", "test", "noise", "rir"):
                if k.get(name):
                    prepare.prepare_kaldi(Path(k[name]), tmp / name)
                else:
                    prepare.empty_dir(tmp / name)
        else:
            v = data["voxceleb"]
            for key in ("train_root", "test_root"):
                if not v.get(key):
                    raise InputError(f"config data.voxceleb.{key}: required for source voxceleb")
            prepare.prepare_voxceleb(Path(v["train_root"]), tmp / "train")
            prepare.prepare_voxceleb(Path(v["test_root"]), tmp / "test")
            prepare.prepare_trials({n: Path(p) for n, p in v["trials"].items()}, tmp / "test")
            if v.get("musan_root"):
                prepare.prepare_musan(Path(v["musan_root"]), tmp / "noise")
            else:
                prepare.empty_dir(tmp / "noise")
            if v.get("rirs_root"):
                prepare.prepare_rirs(Path(v["rirs_root"]), tmp / "rir")
            else:
                prepare.empty_dir(tmp / "rir")


def cmd_store(a: argparse.Namespace) -> None:
    from ssrl.data.kaldi import read_kaldi_dir
    from ssrl.data.stores import build_wave_store

    report = build_wave_store(read_kaldi_dir(Path(a.data)), Path(a.out), on_bad=a.on_bad,
                              min_seconds=a.min_seconds)
    log.info("store %s: %s", a.out, {k: v for k, v in report.items() if k != "skipped"})


def cmd_feats(a: argparse.Namespace) -> None:
    from ssrl.models.frontend import Frontend
    from ssrl.data.stores import WaveStore, build_feat_store

    f = _cfg(a.cfg)
    frontend = Frontend(f["frontend"], n_mels=f["n_mels"])
    build_feat_store(WaveStore(Path(a.store)), frontend, Path(a.out),
                     frontend_meta=frontend.describe())


def cmd_baseline(a: argparse.Namespace) -> None:
    """The crude reference: utterance-mean MFCC + cosine on the test trials."""
    from ssrl.evaluation.baseline import mfcc_mean_scores
    from ssrl.data.kaldi import read_kaldi_dir
    from ssrl.evaluation.metrics import evaluate

    lists = read_kaldi_dir(Path(a.data), check_files=False).trials
    if not lists:
        raise InputError(f"{a.data}: no trials file")
    name, path = next(iter(lists.items()))  # the first list (VoxCeleb: O)
    scores, labels = mfcc_mean_scores(Path(a.data), trials=path.name)
    write_json(a.out, {"system": "mfcc_mean", "trial_list": name, **evaluate(scores, labels)})


# --- training ------------------------------------------------------------------------------

def cmd_dino(a: argparse.Namespace) -> None:
    from ssrl.training.dino import train_dino

    cfg, out = _cfg(a.cfg), Path(a.out)
    with _tracker(cfg, Path(a.results), out, "dino", "dino") as tracker:
        t0 = time.time()
        result = train_dino(cfg, Path(a.train), _opt(a.noise), _opt(a.rir), out, tracker)
        _log_compute(tracker, out, result["history"], time.time() - t0, cfg["dino"], a.train)
    log.info("dino finished: %d epochs", len(result["history"]))


def cmd_cluster(a: argparse.Namespace) -> None:
    """Embed the training set with a model, k-means it, and score the pseudo labels."""
    from ssrl.training.clustering import cluster_quality, kmeans
    from ssrl.evaluation.embed import embed_waves
    from ssrl.models.frontend import Frontend
    from ssrl.models.encoders import build_encoder
    from ssrl.data.stores import WaveStore
    from ssrl.training.runtime import init_runtime, load_model_file, load_state_checked

    cfg, out = _cfg(a.cfg), Path(a.out)
    device, d = init_runtime(cfg["runtime"])
    model = load_model_file(a.model)
    encoder = build_encoder({**model["model_cfg"], "n_mels": model["features_cfg"]["n_mels"]})
    load_state_checked(encoder, model["encoder"], a.model)
    f = model["features_cfg"]
    frontend = Frontend(f["frontend"], n_mels=f["n_mels"]).to(device)
    store = WaveStore(Path(a.train))
    emb = embed_waves(encoder.to(device), frontend, store, device, progress=True, d=d)
    if not d.main:  # under torchrun the others helped embed; one process clusters and writes
        return
    emb /= np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    c = cfg["cluster"]
    result = kmeans(emb, a.k, max_iter=c["max_iter"], tol=c["tol"], seed=cfg["seed"])
    centroids = result.centroids / np.linalg.norm(result.centroids, axis=1,
                                                  keepdims=True).clip(1e-12)
    quality = {"k": a.k, "n_iter": result.n_iter, "converged": bool(result.converged)}
    if store.spk is not None:
        quality.update(cluster_quality(store.spk, result.labels))
    else:
        quality["n_clusters"] = int(len(np.unique(result.labels)))
    save_npz(out / "labels.npz", utt_ids=np.array(store.utt_ids), labels=result.labels,
             centroids=centroids.astype(np.float32))
    write_table(out / "utt2label", zip(store.utt_ids, result.labels))
    write_json(out / "quality.json", quality)
    log.info("k-means k=%d: %s", a.k, quality)


def cmd_ssrl(a: argparse.Namespace) -> None:
    from ssrl.training.ssrl import train_ssrl

    cfg, out = _cfg(a.cfg), Path(a.out)
    parent = f"ablation-{cfg['experiment']}" if a.variant != "main" else None
    with _tracker(cfg, Path(a.results), out, "ssrl", f"ssrl-{a.variant}", a.variant,
                  parent) as tracker:
        t0 = time.time()
        history = train_ssrl(cfg, Path(a.train), _opt(a.noise), _opt(a.rir), Path(a.init),
                             Path(a.labels), out, _opt(a.test), tracker)
        _log_compute(tracker, out, history, time.time() - t0, cfg["ssrl"], a.train)


def cmd_round(a: argparse.Namespace) -> None:
    """One round of the iterative baseline: AAM training on fixed k-means labels."""
    from ssrl.training.ssrl import train_ssrl

    cfg, out = _cfg(a.cfg), Path(a.out)
    it = cfg["iterative"]
    with _tracker(cfg, Path(a.results), out, "iterative", f"iterative-round{a.round}",
                  f"round{a.round}") as tracker:
        t0 = time.time()
        history = train_ssrl(cfg, Path(a.train), _opt(a.noise), _opt(a.rir), Path(a.init),
                             Path(a.labels), out, _opt(a.test), tracker, relabel=False,
                             epochs=it["epochs"], warm_start=it["init"] == "warm")
        _log_compute(tracker, out, history, time.time() - t0, cfg["ssrl"], a.train)


def _log_compute(tracker, out: Path, history: list[dict], seconds: float, c: dict,
                 train_store: str) -> None:
    from ssrl.data.stores import WaveStore
    from ssrl.training.runtime import batches_per_epoch

    if _rank() != 0:
        return
    n = len(WaveStore(Path(train_store)))
    steps = batches_per_epoch(n, c["batch_size"], c["steps_per_epoch"])
    compute = {"wall_seconds": seconds, "epochs": len(history),
               "utterance_passes": len(history) * steps * c["batch_size"] / n}
    write_json(out / "compute.json", compute)
    tracker.log_metrics(compute, step=0)
    tracker.log_artifact(out / "history.json")
    if any("n_clusters" in row for row in history):  # the cluster-count / NMI trajectory
        from ssrl.report.tables import plot_history

        plot_history(history, out / "trajectory.png", title=out.name)
        tracker.log_artifact(out / "trajectory.png")


# --- evaluation ----------------------------------------------------------------------------

def _load_encoder(path: str, device):
    from ssrl.models.frontend import Frontend
    from ssrl.models.encoders import build_encoder
    from ssrl.training.runtime import load_model_file, load_state_checked

    model = load_model_file(path)
    f = model["features_cfg"]
    encoder = build_encoder({**model["model_cfg"], "n_mels": f["n_mels"]})
    load_state_checked(encoder, model["encoder"], path)
    return encoder.to(device).eval(), Frontend(f["frontend"], n_mels=f["n_mels"]).to(device)


def cmd_embed(a: argparse.Namespace) -> None:
    """Embeddings of a wave store, a feature store, or any Kaldi folder / wav.scp."""
    import torch

    from ssrl.evaluation.embed import embed_feats, embed_waves
    from ssrl.evaluation.scoring import save_embeddings
    from ssrl.training.runtime import init_runtime

    device, d = init_runtime({"device": a.device, "threads": a.threads})
    encoder, frontend = _load_encoder(a.model, device)
    with torch.no_grad():
        if a.feats:
            from ssrl.data.stores import FeatStore

            store = FeatStore(Path(a.feats))
            emb = embed_feats(encoder, store, device, progress=True, d=d)
        else:
            store = _wave_source(Path(a.data))
            emb = embed_waves(encoder, frontend, store, device, progress=True, d=d)
    if d.main:
        save_embeddings(a.out, list(store.utt_ids), emb)


def _wave_source(path: Path):
    """A wave store folder as it is, or a Kaldi folder / wav.scp read into memory."""
    from ssrl.data.kaldi import load_audio, read_kaldi_dir
    from ssrl.data.stores import WaveStore

    if (path / "index.npz").exists():
        return WaveStore(path)
    folder = path.parent if path.name == "wav.scp" else path
    data = read_kaldi_dir(folder)
    return _MemoryWaves(list(data.wavs), [load_audio(p) for p in data.wavs.values()])


class _MemoryWaves:
    def __init__(self, utt_ids: list[str], waves: list[np.ndarray]):
        self.utt_ids, self._waves = utt_ids, waves
        self.lengths = np.array([len(w) for w in waves])

    def full(self, i: int) -> np.ndarray:
        return self._waves[i]


def cmd_score(a: argparse.Namespace) -> None:
    """Score trial lists with cosine (optionally mean-subtracted or AS-normed) + metrics."""
    from ssrl.data.kaldi import read_trials
    from ssrl.evaluation.scoring import (
        as_norm_scores,
        cohort_from_clusters,
        cosine_scores,
        load_embeddings,
        write_scores,
    )
    from ssrl.evaluation.metrics import evaluate

    ids, emb = load_embeddings(a.embeddings)
    mean = cohort = None
    if a.norm != "none":
        if not a.train_embeddings:
            raise InputError(f"--norm {a.norm} needs --train-embeddings")
        tr_ids, tr_emb = load_embeddings(a.train_embeddings)
        mean = tr_emb.mean(axis=0) if a.norm in ("mean", "asnorm") else None
        if a.norm == "asnorm":
            if not a.labels:
                raise InputError("--norm asnorm needs --labels (pseudo labels of the training set)")
            with np.load(a.labels) as z:
                labels = z["labels"]
            cohort = cohort_from_clusters(tr_emb - mean, labels)
    lists: dict[str, Path] = {}
    if a.test_dir:
        from ssrl.data.kaldi import read_kaldi_dir

        lists.update(read_kaldi_dir(Path(a.test_dir), check_files=False).trials)
    for spec in a.trials or []:
        name, _, path = spec.rpartition("=")
        lists[name or Path(path).stem] = Path(path)
    if not lists:
        raise InputError("no trial lists: give --trials or a --test-dir with trials files")
    results: dict[str, dict] = {}
    for name, path in lists.items():
        t = read_trials(path, known=set(ids))
        if cohort is not None:
            scores = as_norm_scores(ids, emb, t.enroll, t.test, cohort, a.top_n, mean=mean)
        else:
            scores = cosine_scores(ids, emb, t.enroll, t.test, mean=mean)
        if a.scores_dir:
            write_scores(Path(a.scores_dir) / f"scores_{name}.txt", t.enroll, t.test, t.labels,
                         scores)
        results[name] = evaluate(scores, t.labels)
    write_json(a.out, {"norm": a.norm, "trials": results})
    for name, m in results.items():
        print(f"{name}: EER {m['eer']:.3f}%  minDCF0.01 {m['mindcf_0.01']:.4f}  "
              f"minDCF0.05 {m['mindcf_0.05']:.4f}  ({m['n_trials']} trials)")


def cmd_export(a: argparse.Namespace) -> None:
    from ssrl.models.export import export_encoder

    export_encoder(Path(a.model), Path(a.out_dir))


def cmd_tables(a: argparse.Namespace) -> None:
    from ssrl.report.tables import write_tables

    write_tables(_cfg(a.cfg), Path(a.root), Path(a.out_dir))


def cmd_plots(a: argparse.Namespace) -> None:
    from ssrl.report.tables import write_plots

    write_plots(_cfg(a.cfg), Path(a.root), Path(a.out_dir))


def _opt(p: str | None) -> Path | None:
    return Path(p) if p else None


# --- argument parsing ----------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ssrl", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name: str, fn, help: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help, description=help)
        s.set_defaults(fn=fn)
        return s

    s = add("prepare", cmd_prepare, "write Kaldi-style train/test/noise/rir folders")
    s.add_argument("--cfg", required=True, help="the `data` config section as JSON")
    s.add_argument("--out", required=True)
    s = add("store", cmd_store, "build a wave store from a Kaldi-style folder")
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--on-bad", choices=["error", "skip"], default="error")
    s.add_argument("--min-seconds", type=float, default=0.5)
    s = add("feats", cmd_feats, "precompute log-mel features of an evaluation store")
    s.add_argument("--cfg", required=True, help="the `features` config section as JSON")
    s.add_argument("--store", required=True)
    s.add_argument("--out", required=True)
    s = add("baseline", cmd_baseline, "utterance-mean MFCC + cosine on a test folder")
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)

    for name, fn, help in (("dino", cmd_dino, "stage 1: DINO pretraining"),
                           ("ssrl", cmd_ssrl, "stage 2: SSRL"),
                           ("round", cmd_round, "one round of the iterative baseline")):
        s = add(name, fn, help)
        s.add_argument("--cfg", required=True, help="the full validated config as JSON")
        s.add_argument("--results", required=True, help="results folder (MLflow default store)")
        s.add_argument("--train", required=True)
        s.add_argument("--noise")
        s.add_argument("--rir")
        s.add_argument("--out", required=True)
        if name != "dino":
            s.add_argument("--test", help="test wave store for per-epoch EER")
            s.add_argument("--init", required=True, help="model.pt to start from")
            s.add_argument("--labels", required=True, help="labels.npz of the clustering")
        if name == "ssrl":
            s.add_argument("--variant", default="main")
        if name == "round":
            s.add_argument("--round", type=int, required=True)

    s = add("cluster", cmd_cluster, "k-means pseudo labels from a model's embeddings")
    s.add_argument("--cfg", required=True)
    s.add_argument("--model", required=True)
    s.add_argument("--train", required=True)
    s.add_argument("--k", type=int, required=True)
    s.add_argument("--out", required=True)

    s = add("embed", cmd_embed, "embeddings of a store, feature store, Kaldi folder or wav.scp")
    s.add_argument("--model", required=True)
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="wave store, Kaldi folder or wav.scp")
    src.add_argument("--feats", help="precomputed feature store")
    s.add_argument("--out", required=True)
    s.add_argument("--device", default="auto")
    s.add_argument("--threads", type=int, default=1)

    s = add("score", cmd_score, "cosine scoring and EER/minDCF of trial lists")
    s.add_argument("--embeddings", required=True)
    s.add_argument("--trials", nargs="+", help="[name=]trial_file ...")
    s.add_argument("--test-dir", help="a Kaldi folder: score all its trials* lists")
    s.add_argument("--norm", choices=["none", "mean", "asnorm"], default="none")
    s.add_argument("--train-embeddings")
    s.add_argument("--labels", help="labels.npz of the training set (AS-norm cohort)")
    s.add_argument("--top-n", type=int, default=300)
    s.add_argument("--scores-dir")
    s.add_argument("--out", required=True)

    s = add("export", cmd_export, "export an encoder to TorchScript and ONNX")
    s.add_argument("--model", required=True)
    s.add_argument("--out-dir", required=True)

    for name, fn in (("tables", cmd_tables), ("plots", cmd_plots)):
        s = add(name, fn, f"write the result {name}")
        s.add_argument("--cfg", required=True)
        s.add_argument("--root", required=True, help="the experiment's results folder")
        s.add_argument("--out-dir", required=True)
    return p


def _terminate(signum: int, frame) -> None:
    """Snakemake stops jobs with SIGTERM: exit through Python so MLflow runs are closed."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        args.fn(args)
    except (InputError, OutputError) as err:
        print(f"ssrl {args.cmd}: error: {err}", file=sys.stderr)
        return 2
    return 0
