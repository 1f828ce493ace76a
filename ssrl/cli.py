"""`python -m ssrl <step>`: one command per workflow step (each Snakemake rule calls one).

Each command is a thin wrapper: it reads its arguments, opens the MLflow run where the step
is tracked, and calls the one function that does the step. A workflow job's configuration is a
JSON file the workflow wrote (`--job results/<exp>/jobs/....json`); paths arrive as flags.
Errors the user can fix print one line naming the file and exit with status 2; a training step
that fails marks its MLflow run FAILED.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from ssrl.files import InputError, OutputError, check_outputs, read_json, write_json
from ssrl.tracking.console import job_label, progress_bars, setup_logging

log = logging.getLogger("ssrl")


def _job(path: str | None) -> dict:
    """A job's config file (JSON), or {} when none is given (commands run by hand)."""
    if path is None:
        return {}
    cfg = read_json(path)
    if not isinstance(cfg, dict):
        raise InputError(f"{path}: a job config must be a JSON object")
    return cfg


def _setting(flag: Any, cfg: dict, key: str, default: Any) -> Any:
    """An evaluation setting: the command-line flag when given, else the job config's
    `eval.<key>` (what the workflow passes), else the default of a command run by hand."""
    if flag is not None:
        return flag
    return cfg.get("eval", {}).get(key, default)


def _opt(p: str | None) -> Path | None:
    return Path(p) if p else None


def _tracker(cfg: dict, out: Path, fingerprint: str | None = None):
    """The MLflow run of a workflow job (`cfg["job"]` names it); a no-op tracker for the other
    `torchrun` processes and for commands run without a job config."""
    from ssrl.runtime import Dist
    from ssrl.tracking.mlflow_run import NULL_TRACKER, Tracker, resolve_tracking_uri

    job = cfg.get("job")
    if not job or not Dist.from_env().main:
        return NULL_TRACKER
    uri = resolve_tracking_uri(job.get("tracking_uri"), Path(job["results_dir"]))
    tags = {k: job[k] for k in ("stage", "variant", "seed", "dataset", "uses_labels")
            if job.get(k) is not None}
    params = {k: v for k, v in cfg.items() if k != "job"}
    if fingerprint is not None:  # a training job logs what ran in place of these (job.py)
        from ssrl.training.job import EFFECTIVE_KEYS

        params = {k: ({kk: vv for kk, vv in v.items() if kk not in EFFECTIVE_KEYS.get(k, ())}
                      if isinstance(v, dict) else v) for k, v in params.items()}
    params["job"] = {k: job[k] for k in ("seed", "k", "epochs", "round")
                     if job.get(k) is not None}
    return Tracker(uri, job["experiment"], job["name"], out, tags=tags, params=params,
                   parent_run_name=job.get("parent"), fingerprint=fingerprint)


# --- data --------------------------------------------------------------------------------

def cmd_job_config(a: argparse.Namespace) -> None:
    """Write a job's config (JSON on standard input) to its file, as the workflow does."""
    text = sys.stdin.read()
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"job config on standard input: invalid JSON ({err.msg})") from None
    write_json(a.out, cfg)


def cmd_prepare(a: argparse.Namespace) -> None:
    from ssrl.data.prepare import prepare_set

    report = prepare_set(_job(a.job)["data"], a.set, Path(a.out))
    log.info("prepared %s: %s", a.set, json.dumps(report)[:500])


def cmd_wave_store(a: argparse.Namespace) -> None:
    from ssrl.data.kaldi import read_kaldi_dir
    from ssrl.data.stores import build_wave_store

    data = _job(a.job).get("data", {})
    report = build_wave_store(read_kaldi_dir(Path(a.data)), Path(a.out),
                              on_bad=data.get("on_bad", a.on_bad),
                              min_seconds=data.get("min_seconds", a.min_seconds),
                              progress=progress_bars(), workers=a.workers)
    log.info("store %s: %s", a.out, {k: v for k, v in report.items() if k != "skipped"})


def cmd_feature_store(a: argparse.Namespace) -> None:
    from ssrl.data.stores import WaveStore, build_feat_store
    from ssrl.models.frontend import Frontend

    f = _job(a.job).get("features", {"frontend": "logmel", "n_mels": 80})
    frontend = Frontend(f["frontend"], n_mels=f["n_mels"])
    build_feat_store(WaveStore(Path(a.store)), frontend, Path(a.out),
                     frontend_meta=frontend.describe(), progress=progress_bars())


# --- training ------------------------------------------------------------------------------

def _train(a: argparse.Namespace, fn) -> None:
    from ssrl.training.job import Inputs

    cfg, out = _job(a.job), Path(a.out)
    inputs = Inputs(Path(a.train), _opt(a.noise), _opt(a.rir), _opt(getattr(a, "dev", None)),
                    _opt(getattr(a, "init", None)), _opt(getattr(a, "labels", None)))
    from ssrl.report.plots import plot_history

    with _tracker(cfg, out, inputs.fingerprint(cfg)) as tracker:
        if a.job:
            tracker.log_artifact(a.job, "config")  # the requested config; params: what ran
        fn(cfg, inputs, out, tracker, plot_history)
    log.info("%s finished", cfg.get("job", {}).get("name", a.cmd))


def cmd_dino(a: argparse.Namespace) -> None:
    from ssrl.training.dino import train_dino

    _train(a, train_dino)


def cmd_ssrl(a: argparse.Namespace) -> None:
    from ssrl.training.ssrl import train_ssrl

    _train(a, train_ssrl)


def cmd_iterative(a: argparse.Namespace) -> None:
    from ssrl.training.classifier import train_iterative_round

    _train(a, train_iterative_round)


def cmd_supervised(a: argparse.Namespace) -> None:
    from ssrl.training.classifier import train_supervised

    _train(a, train_supervised)


def cmd_cluster(a: argparse.Namespace) -> None:
    from ssrl.runtime import Dist
    from ssrl.training.clustering import cluster_stage

    quality = cluster_stage(_job(a.job), Path(a.model), Path(a.train), Path(a.out),
                            progress=progress_bars())
    log.info("k-means: %s", quality)
    if a.run_dir and (Dist.from_env().main):
        from ssrl.tracking.mlflow_run import annotate_run
        from ssrl.training.job import mlflow_metrics

        # the model's k-means start: epoch 0 of its run, as the tables show it
        annotate_run(Path(a.run_dir), mlflow_metrics(
            {k: v for k, v in quality.items() if k in ("n_clusters", "nmi", "purity")}))


# --- evaluation ----------------------------------------------------------------------------

def cmd_baseline(a: argparse.Namespace) -> None:
    """Embeddings of the classical floor (MFCC statistics) of a store; scored like any system."""
    from ssrl.data.stores import open_waves
    from ssrl.evaluation.baseline import statistics_embeddings
    from ssrl.evaluation.scoring import embeddings_format, save_embeddings
    from ssrl.training.checkpoints import fingerprint

    embeddings_format(a.out)  # a wrong output name fails now, not after the work
    store = open_waves(Path(a.store))
    cfg = _job(a.job)
    # changed test data or code: a new MLflow run (the score step adds its test numbers to it)
    with _tracker(cfg, Path(a.run_dir or Path(a.out).parent),
                  fingerprint(cfg, {"store": a.store})):
        save_embeddings(a.out, list(store.utt_ids), statistics_embeddings(store))


def cmd_embed(a: argparse.Namespace) -> None:
    """Embeddings of a wave store, a feature store, or any Kaldi folder / wav.scp."""
    import torch

    from ssrl.data.stores import FeatStore, open_waves
    from ssrl.evaluation.embed import check_feats_frontend, embed_feats, embed_waves
    from ssrl.evaluation.scoring import check_finite, embeddings_format, save_embeddings
    from ssrl.models.model_file import load_encoder
    from ssrl.runtime import init_runtime

    embeddings_format(a.out)  # a wrong output name fails now, not after the work
    segment = _setting(a.segment_seconds, _job(a.job), "segment_seconds", 180.0)
    device, d = init_runtime({"device": a.device, "threads": a.threads})
    model = load_encoder(a.model, device)
    with torch.no_grad():
        if a.feats:
            store = FeatStore(Path(a.feats))
            check_feats_frontend(store, model.frontend.describe(), a.model)
            emb = embed_feats(model.encoder, store, device, segment, progress_bars(), d)
        else:
            store = open_waves(Path(a.data))
            emb = embed_waves(model.encoder, model.frontend, store, device, segment,
                              progress_bars(), d)
    if d.main:
        check_finite(emb, list(store.utt_ids), a.model)  # a model that computes NaN
        save_embeddings(a.out, list(store.utt_ids), emb)


def _trial_spec(spec: str) -> tuple[str, Path]:
    """`[name=]trial_file` -> (name, path); a path that holds '=' is a path."""
    name, sep, path = spec.partition("=")
    if not sep or "/" in name or Path(spec).exists():
        name, path = Path(spec).stem, spec
    return name, Path(path)


def _trial_lists(a: argparse.Namespace) -> tuple[dict[str, Path], dict[str, str] | None]:
    """The trial lists to score and the speaker of each utterance (bootstrap units)."""
    from ssrl.data.kaldi import read_kaldi_dir
    from ssrl.data.stores import open_store
    from ssrl.files import read_map

    lists: dict[str, Path] = {}
    utt2spk = None
    if a.store:
        store = open_store(Path(a.store))
        lists.update(store.trials)
        if store.spk is not None:
            utt2spk = dict(zip(store.utt_ids, store.spk))
    if a.test_dir:
        data = read_kaldi_dir(Path(a.test_dir), check_files=False)
        lists.update(data.trials)
        utt2spk = data.utt2spk or utt2spk
    for spec in a.trials or []:
        name, path = _trial_spec(spec)
        lists[name] = path
    if a.utt2spk:
        utt2spk = read_map(a.utt2spk)
    return lists, utt2spk


def cmd_score(a: argparse.Namespace) -> None:
    """Score trial lists (cosine, optionally mean-subtracted or AS-normed), with EER/minDCF
    and their bootstrap intervals; a workflow job also puts them on its system's MLflow run."""
    from ssrl.evaluation.metrics import metric_keys
    from ssrl.evaluation.scoring import score_lists

    cfg = _job(a.job)
    boot = cfg.get("eval", {}).get("bootstrap", {})
    lists, utt2spk = _trial_lists(a)
    out = Path(a.out)
    report = score_lists(a.embeddings, lists, out, utt2spk,
                         _setting(a.norm, cfg, "score_norm", "none"), a.train_embeddings,
                         a.labels, _setting(a.top_n, cfg, "asnorm_top_n", 300),
                         _opt(a.scores_dir) or out.parent,
                         boot.get("replicates", a.replicates), boot.get("seed", a.bootstrap_seed),
                         boot.get("confidence", 0.95), a.threads)
    names = list(report["trials"])
    for name, m in report["trials"].items():
        if not m["labelled"]:
            print(f"{name}: {m['n_trials']} trials scored (no labels: no metrics)")
            continue
        ci = m.get("ci", {}).get("eer")
        print(f"{name}: EER {m['eer']:.2f}%" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
              + f"  minDCF0.01 {m['mindcf_0.01']:.4f}  minDCF0.05 {m['mindcf_0.05']:.4f}"
              f"  ({m['n_trials']} trials)")
    if a.run_dir:
        from ssrl.tracking.mlflow_run import annotate_run

        metrics = {key: m[metric] for name, m in report["trials"].items() if m["labelled"]
                   for metric, key in metric_keys("test", name, names).items()}
        annotate_run(Path(a.run_dir), metrics)


def _check_port_free(host: str, port: int) -> None:
    """InputError when `host:port` cannot be bound (another server holds it)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        raise InputError(f"--host {host}: unknown host ({err.strerror or err})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            sock.bind(address)
        except OSError as err:
            raise InputError(f"--port {port}: {host}:{port} is not free ({err.strerror or err}); "
                             "is an MLflow UI already running? choose another --port") from None


def cmd_mlflow_ui(a: argparse.Namespace) -> None:
    """The MLflow UI on an experiment's SQLite store, wherever its results folder now is; prints
    the links of the saved views (systems by test EER; SSRL variants charted)."""
    import os

    try:  # before anything touches the database
        import mlflow  # noqa: F401
    except ImportError:
        raise InputError(f"MLflow is not installed for {sys.executable}; use the project's "
                         "environment (`make venv`, then `.venv/bin/python -m ssrl mlflow-ui`)"
                         ) from None
    from ssrl.tracking.mlflow_store import install_views, relocate_artifacts

    _check_port_free(a.host, a.port)  # else the server fails after start-up and exits 0
    db = Path(a.results) / "mlflow.db"
    moved = relocate_artifacts(db)
    if moved:
        log.info("%s: artifact locations updated to the folder's new place (%d)", db, moved)
    root = f"http://{a.host}:{a.port}"
    for experiment, views in install_views(f"sqlite:///{db.resolve()}", root).items():
        print(f"experiment {experiment}:\n  systems by test EER:   {views['systems']}\n"
              f"  SSRL variants charted: {views['ssrl']}", flush=True)
    # MLflow 3 otherwise starts a job runner and eight task consumers (~280 MB each) for its
    # GenAI jobs, which browsing an experiment does not use.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    # `python -m mlflow`: the MLflow of this interpreter, wherever its scripts were installed
    os.execve(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
                               f"sqlite:///{db.resolve()}", "--host", a.host, "--port",
                               str(a.port)], env)


def cmd_mlflow_sync(a: argparse.Namespace) -> None:
    """Send what jobs buffered while the MLflow store could not be written (a full disk, a
    server down), and say what is still buffered: the workflow runs it at its end."""
    from ssrl.tracking.mlflow_run import sync_buffers

    left = sync_buffers(Path(a.results), send=not a.list)
    for path, n in left:
        log.warning("MLflow: %d tracking record(s) still buffered in %s (not in the store "
                    "yet); run `python -m ssrl mlflow-sync --results %s` once it can be written",
                    n, path, a.results)
    if not left:
        log.info("MLflow: nothing buffered under %s; every tracking record is in the store",
                 a.results)


def cmd_export(a: argparse.Namespace) -> None:
    """Export, and (with --run-dir) log the exported files to the run that trained the model."""
    from ssrl.models.export import export_encoder

    result = export_encoder(Path(a.model), Path(a.out_dir), with_frontend=a.with_frontend)
    if a.run_dir:
        from ssrl.tracking.mlflow_run import annotate_run

        sub = "export_wave" if a.with_frontend else "export"
        annotate_run(Path(a.run_dir), artifacts=[result["torchscript"], result["onnx"],
                                                 Path(a.out_dir) / "export.json"],
                     artifact_path=sub)


def cmd_tables(a: argparse.Namespace) -> None:
    """The tables; then every system's MLflow run gets the tables' other numbers (intervals,
    cumulative compute, gap closed) and each sweep's parent run its summary (the table, every
    child's test EER, the best child)."""
    from ssrl.report.tables import write_tables
    from ssrl.tracking.mlflow_run import annotate_run, resolve_tracking_uri, summarize_sweep
    from ssrl.tracking.mlflow_store import install_views

    cfg, out = _job(a.job), Path(a.out_dir)
    summary = write_tables(cfg, Path(a.root), out, a.threads)
    job = cfg.get("job")
    if not job:
        return
    for folder, numbers in summary["runs"].items():
        annotate_run(Path(a.root) / folder, numbers["metrics"], numbers["tags"])
    uri = resolve_tracking_uri(job.get("tracking_uri"), Path(job["results_dir"]))
    try:  # the saved views `ssrl mlflow-ui` links to, also on a shared server
        install_views(uri, experiment=job["experiment"])
    except Exception as err:  # noqa: BLE001 - tracking never fails the job
        log.warning("MLflow views not saved in %s: %s", uri, str(err).splitlines()[0][:200])
    for sweep, files in (("ablation", ["ablation.md", "ablation.html", "ablation.csv",
                                       "ablation_paired.csv"]),
                         ("iterative", ["main.md", "main.html", "main.csv",
                                        "main_paired.csv"])):
        eers = summary[sweep]
        if eers:
            best = min(eers, key=eers.get)
            summarize_sweep(uri, job["experiment"], f"{sweep}-{job['experiment']}",
                            {f"{name}/test/eer": v for name, v in eers.items()},
                            {"best": best}, [out / f for f in files], buffer_dir=out)


def cmd_plots(a: argparse.Namespace) -> None:
    """The figures; a workflow job also puts them on the sweeps' parent runs (the main
    figures next to the main table, the trajectories next to the ablation table)."""
    from ssrl.report.plots import write_plots
    from ssrl.tracking.mlflow_run import resolve_tracking_uri, summarize_sweep

    cfg, out = _job(a.job), Path(a.out_dir)
    write_plots(cfg, Path(a.root), out)
    job = cfg.get("job")
    if not job:
        return
    uri = resolve_tracking_uri(job.get("tracking_uri"), Path(job["results_dir"]))
    for sweep, files in (("iterative", ["dynamics.png", "det.png"]),
                         ("ablation", ["dynamics.png", "trajectories.png"])):
        summarize_sweep(uri, job["experiment"], f"{sweep}-{job['experiment']}", {}, {},
                        [out / f for f in files])


def cmd_scaling(a: argparse.Namespace) -> None:
    """The scaling grid's table and figure of one experiment (config/scaling.yaml)."""
    from ssrl.report.scaling import write_scaling

    write_scaling(_job(a.job), Path(a.root), Path(a.out_dir), a.threads)


def cmd_scaling_report(a: argparse.Namespace) -> None:
    """Several experiments' scaling tables as one table and figure (`make scaling`)."""
    from ssrl.report.scaling import merge_scaling

    merge_scaling([Path(d) for d in a.inputs], Path(a.out_dir))


# --- the one rule for every step's outputs ---------------------------------------------------

#: Options that name what a step writes (a file, or a folder it replaces or writes into).
#: (`score --scores-dir` is a folder it adds files to: `score_lists` checks each file.)
OUTPUT_OPTIONS = ("out", "out_dir")
#: Options that name what a step reads: no output may be, lie inside or contain one of them.
INPUT_OPTIONS = ("job", "data", "store", "feats", "model", "embeddings", "trials", "test_dir",
                 "utt2spk", "train_embeddings", "labels", "train", "noise", "rir", "dev", "init",
                 "inputs")
#: Options that may name a list file: a `wav.scp` stands for its Kaldi folder (the other lists
#: and the audio beside it are read too); a list of another name stands for itself, so an
#: output may sit beside it (a list in one's home folder must not forbid writing there).
LIST_OPTIONS = ("data", "store")
#: Folders a step reads from and writes into (`tables --root R --out-dir R/tables`).
CONTAINER_OPTIONS = ("root",)


def _outputs(a: argparse.Namespace) -> list[Path]:
    """Every path a step writes: `embed --out X.scp` also writes X.ark (and the reverse)."""
    outs = [Path(getattr(a, k)) for k in OUTPUT_OPTIONS if getattr(a, k, None)]
    if a.cmd == "embed" and Path(a.out).suffix.lower() in (".ark", ".scp"):
        from ssrl.evaluation.scoring import kaldi_pair

        outs += kaldi_pair(a.out)
    return outs


def check_step_paths(a: argparse.Namespace) -> None:
    """No step writes over (or into) its own inputs; OutputError before any work."""
    def paths(key: str) -> list[str]:
        value = getattr(a, key, None)
        values = value if isinstance(value, list) else [value] if value else []
        if key == "trials":
            return [str(_trial_spec(v)[1]) for v in values]
        if key in LIST_OPTIONS:
            return [str(Path(v).parent) if Path(v).name == "wav.scp" and Path(v).is_file()
                    else v for v in values]
        return values

    flag = {k: "--" + k.replace("_", "-") for k in INPUT_OPTIONS + CONTAINER_OPTIONS}
    check_outputs(_outputs(a), {flag[k]: paths(k) for k in INPUT_OPTIONS},
                  {flag[k]: paths(k) for k in CONTAINER_OPTIONS})


# --- the table of commands -----------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ssrl", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug log lines")
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name: str, fn, help: str, job: str | None = None) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help, description=help)
        s.set_defaults(fn=fn)
        if job is not None:
            s.add_argument("--job", required=job == "required",
                           help="the job's config file (JSON; the workflow writes one per job)")
        return s

    s = add("job-config", cmd_job_config, "write a job config (JSON on stdin) to a file")
    s.add_argument("--out", required=True, help="the job config file to write")
    s = add("prepare", cmd_prepare, "write one Kaldi-style data folder (train, dev, test, noise "
            "or rir) from the configured source", "required")
    s.add_argument("--set", required=True, choices=["train", "dev", "test", "noise", "rir"],
                   help="which set to prepare")
    s.add_argument("--out", required=True, help="the Kaldi-style folder to write")
    s = add("wave-store", cmd_wave_store, "build a wave store from a Kaldi-style folder",
            "optional")
    s.add_argument("--data", required=True, help="the Kaldi-style folder to read")
    s.add_argument("--out", required=True, help="the wave store folder to write")
    s.add_argument("--on-bad", choices=["error", "skip"], default="error",
                   help="a bad utterance stops the build, or is skipped and counted "
                        "(default: error; a job config's data.on_bad wins)")
    s.add_argument("--min-seconds", type=float, default=0.5,
                   help="shorter utterances are bad (default: 0.5)")
    s.add_argument("--workers", type=int, default=0,
                   help="decoding threads (0 or 1: in the main thread); the store is the same")
    s = add("feature-store", cmd_feature_store, "precompute log-mel features of a wave store",
            "optional")
    s.add_argument("--store", required=True, help="the wave store to read")
    s.add_argument("--out", required=True, help="the feature store folder to write")

    for name, fn, help in (("dino", cmd_dino, "stage 1: DINO pretraining"),
                           ("ssrl", cmd_ssrl, "stage 2: SSRL"),
                           ("iterative", cmd_iterative, "one round of the iterative baseline"),
                           ("supervised", cmd_supervised,
                            "the supervised topline (true labels; reporting only)")):
        s = add(name, fn, help, "required")
        s.add_argument("--train", required=True, help="training wave store")
        s.add_argument("--noise", help="noise wave store (augmentation)")
        s.add_argument("--rir", help="room impulse response wave store (augmentation)")
        s.add_argument("--out", required=True,
                       help="the stage's folder: model.pt, history.json, compute.json")
        if name != "dino":
            s.add_argument("--dev", help="dev wave store for the per-epoch EER")
            s.add_argument("--init", required=True, help="model.pt to start from")
        if name in ("ssrl", "iterative"):
            s.add_argument("--labels", required=True, help="labels.npz of the clustering")

    s = add("cluster", cmd_cluster, "k-means pseudo labels from a model's embeddings",
            "required")
    s.add_argument("--model", required=True, help="model.pt whose embeddings are clustered")
    s.add_argument("--train", required=True, help="training wave store")
    s.add_argument("--out", required=True,
                   help="folder for labels.npz, utt2label and quality.json")
    s.add_argument("--run-dir", help="the model's training folder: log the clustering's NMI "
                   "and cluster count to its MLflow run as epoch 0")

    s = add("baseline", cmd_baseline, "MFCC-statistics embeddings (the classical floor)",
            "optional")
    s.add_argument("--store", required=True, help="wave store, Kaldi folder or wav.scp")
    s.add_argument("--out", required=True, help="embeddings.npz, or X.ark / X.scp (Kaldi)")
    s.add_argument("--run-dir", help="folder of its MLflow run state (default: next to --out)")

    s = add("embed", cmd_embed, "embeddings of a store, feature store, Kaldi folder, "
            "wav.scp-style list or plain folder of audio files", "optional")
    s.add_argument("--model", required=True, help="a model.pt written by the workflow")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="wave store, Kaldi folder, wav.scp-style list (any name) "
                     "or a folder of audio files (read recursively; utterance ids are the "
                     "paths without extension)")
    src.add_argument("--feats", help="precomputed feature store")
    s.add_argument("--out", required=True,
                   help="embeddings.npz, or X.ark / X.scp (Kaldi: writes X.ark and X.scp)")
    s.add_argument("--device", default="auto",
                   help="auto (CUDA when available), cpu, cuda or cuda:N (default: auto)")
    s.add_argument("--threads", type=int, default=1, help="CPU threads (default: 1)")
    s.add_argument("--segment-seconds", type=float,
                   help="longer utterances are embedded as the mean of segments this long "
                        "(default: the job's eval.segment_seconds, else 180)")

    s = add("score", cmd_score, "cosine scoring and EER/minDCF (with intervals) of trial lists",
            "optional")
    s.add_argument("--embeddings", required=True,
                   help="embeddings.npz, or a Kaldi .scp / .ark of vectors (e.g. WeSpeaker's)")
    s.add_argument("--trials", nargs="+", help="[name=]trial_file ...")
    s.add_argument("--test-dir", help="a Kaldi folder: score all its trial lists")
    s.add_argument("--store", help="a wave or feature store: score its trial lists")
    s.add_argument("--utt2spk", help="speaker of each utterance (bootstrap units)")
    s.add_argument("--norm", choices=["none", "mean", "asnorm"],
                   help="score normalisation: none, subtract the training mean, or AS-norm "
                        "(both need --train-embeddings; default: the job's eval.score_norm, "
                        "else none)")
    s.add_argument("--train-embeddings", help="embeddings of the training set (mean / cohort)")
    s.add_argument("--labels", help="labels.npz of the training set (AS-norm cohort)")
    s.add_argument("--top-n", type=int,
                   help="AS-norm: the closest cohort entries used (default: the job's "
                        "eval.asnorm_top_n, else 300)")
    s.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates (0: none)")
    s.add_argument("--bootstrap-seed", type=int, default=0,
                   help="seed of the bootstrap resamples (default: 0)")
    s.add_argument("--threads", type=int, default=1, help="CPU threads (default: 1)")
    s.add_argument("--scores-dir", help="where the score files go (default: next to --out)")
    s.add_argument("--run-dir", help="a trained system's folder: log the metrics to its run")
    s.add_argument("--out", required=True, help="metrics.json to write")

    s = add("mlflow-ui", cmd_mlflow_ui, "open the MLflow UI on a results folder (fixes artifact "
            "locations if the folder was moved)")
    s.add_argument("--results", default="results", help="the folder holding mlflow.db")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: "
                   "127.0.0.1, this machine only)")
    s.add_argument("--port", type=int, default=5000, help="port (default: 5000)")

    s = add("mlflow-sync", cmd_mlflow_sync, "send tracking records buffered under a results "
            "folder to MLflow, and list what is still buffered")
    s.add_argument("--results", required=True, help="the experiment's results folder")
    s.add_argument("--list", action="store_true",
                   help="only say what is buffered (send nothing): while jobs may still be "
                        "writing their buffers")

    s = add("export", cmd_export, "export an encoder to TorchScript and ONNX")
    s.add_argument("--run-dir", help="the model's training folder: log the export to its run")
    s.add_argument("--model", required=True, help="a model.pt written by the workflow")
    s.add_argument("--out-dir", required=True, help="folder for the exported files")
    s.add_argument("--with-frontend", action="store_true",
                   help="include the front end: the files take 16 kHz waveforms [batch, samples] "
                        "instead of features [batch, n_mels, frames]")

    for name, fn in (("tables", cmd_tables), ("plots", cmd_plots)):
        s = add(name, fn, f"write the result {name}", "required")
        s.add_argument("--root", required=True, help="the experiment's results folder")
        s.add_argument("--out-dir", required=True, help=f"folder for the {name}")
        s.add_argument("--threads", type=int, default=1, help="CPU threads (default: 1)")

    s = add("scaling", cmd_scaling, "the scaling grid's table and figure of one experiment "
            "(scaling.md, scaling.csv, dynamics.csv, scaling.png)", "required")
    s.add_argument("--root", required=True, help="the experiment's results folder")
    s.add_argument("--out-dir", required=True, help="folder for the table and figure")
    s.add_argument("--threads", type=int, default=1, help="CPU threads (default: 1)")
    s = add("scaling-report", cmd_scaling_report, "one table and figure from several "
            "experiments' scaling folders (make scaling: both corpora)")
    s.add_argument("--inputs", nargs="+", required=True,
                   help="scaling folders written by the workflow (<results>/<experiment>/scaling)")
    s.add_argument("--out-dir", required=True, help="folder for the merged table and figure")
    return p


def _terminate(signum: int, frame) -> None:
    """Snakemake stops jobs with SIGTERM: exit through Python so MLflow runs are closed."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        label = job_label(getattr(args, "job", None), _job(getattr(args, "job", None)), args.cmd)
    except InputError:
        label = args.cmd  # the command itself reports the unreadable job file
    setup_logging(label, args.verbose)
    try:
        check_step_paths(args)
        args.fn(args)
    except (InputError, OutputError) as err:
        print(f"ssrl {args.cmd}: error: {err}", file=sys.stderr)
        return 2
    return 0
