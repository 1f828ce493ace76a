# The one owner of the experiment's layout: the validated config, every path, the ablation grid,
# the table of systems (which the tables, plots, report and MLflow read; nothing re-derives it),
# and the config file of every job.
#
# Each job reads its config from a JSON file the workflow writes (rule job_config), never from
# the command line, and every value interpolated into a shell command is quoted (`:q`), so no
# config value or path can be run as shell code, and paths with spaces, quotes or `$` work.
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
from snakemake.exceptions import WorkflowError
from snakemake.utils import Paramspace, validate

sys.path.insert(0, workflow.basedir)  # this checkout's ssrl package (also under --use-conda)
from ssrl.config import (  # noqa: E402
    CLASSIFIER_KEYS,
    FULL,
    all_variants,
    check_config,
    check_size,
    check_data_paths,
    count_utterances,
    effective_init_k,
    scaling_grid,
    variant_config,
)
from ssrl.data.prepare import SETS  # noqa: E402
from ssrl.data.synth import PART_KEYS  # noqa: E402
from ssrl.files import InputError, OutputError, clean_stale_tmp  # noqa: E402
from ssrl.tracking.mlflow_run import check_tracking_server, resolve_tracking_uri  # noqa: E402

try:  # before anything walks the config: YAML aliases may expand it to billions of values
    check_size(config)
except InputError as err:
    raise WorkflowError(f"Invalid config: {err}") from None
validate(config, workflow.source_path("../schemas/config.schema.yaml"))

EXP = config["experiment"]
R = f"{config['results_dir']}/{EXP}"
LOGS = f"{R}/logs"  # with the results they explain: two results_dir never share logs
DATA = config["data"]
SOURCE = DATA["source"]
SEEDS = config["seeds"]
K = config["cluster"]["k"]
SSRL = config["ssrl"]
ROUNDS = list(range(1, config["iterative"]["rounds"] + 1))
# One chain of rounds per entry of iterative.epochs (epochs per round), e.g. [4, 20]: rounds at
# SSRL's cumulative budget and rounds at SSRL's own budget each.
CHAINS = [config["iterative"]["epochs"]] if isinstance(config["iterative"]["epochs"], int) \
    else list(config["iterative"]["epochs"])


def n_train_utterances():
    """Training utterances, where known before preparation (for the start-up checks)."""
    if SOURCE == "builtin":
        return DATA["builtin"]["train_speakers"] * DATA["builtin"]["train_utts_per_speaker"]
    if SOURCE == "kaldi":
        train = DATA["kaldi"]["train"]
        return count_utterances(Path(train) / "wav.scp") if train else None
    return count_utterances(f"{R}/data/train/wav.scp")  # VoxCeleb: once prepared


try:
    check_config(config, n_train_utterances())
    # The scaling grid (config/scaling.yaml): its points' SSRL runs join the ablation grid and
    # their matched iterative chains join CHAINS.
    SCALING = scaling_grid(config)
    # every data path a preparation still has to read exists (a missing /data/... is found now)
    check_data_paths(config, lambda name: os.path.exists(f"{R}/data/{name}/wav.scp"))
except InputError as err:
    raise WorkflowError(f"Invalid config: {err}") from None


def check_cluster():
    """Start-up checks of the submitting run (not repeated inside each cluster job): the
    MLflow server answers, and a configured SLURM partition exists where `sinfo` can tell."""
    if workflow.remote_exec or os.environ.get("SLURM_JOB_ID"):
        return
    uri = resolve_tracking_uri(config["tracking"]["uri"], Path(config["results_dir"]))
    check_tracking_server(uri)
    partition = config["runtime"]["partition"]
    if partition and shutil.which("sinfo"):
        found = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True,
                               timeout=30, check=False)
        names = found.stdout.split()
        if found.returncode == 0 and names and partition not in names:
            raise InputError(f"runtime.partition: no partition {partition!r} on this SLURM "
                             f"cluster (sinfo lists: {', '.join(sorted(set(names)))})")


try:
    check_cluster()
except InputError as err:
    raise WorkflowError(str(err)) from None

if SOURCE == "builtin":
    HAS_DEV = DATA["builtin"]["dev_speakers"] > 0
    TRAIN_LABELS = True
elif SOURCE == "kaldi":
    HAS_DEV = bool(DATA["kaldi"]["dev"])
    TRAIN_LABELS = bool(DATA["kaldi"]["train"]) and (Path(DATA["kaldi"]["train"]) / "utt2spk").is_file()
else:
    HAS_DEV = bool(DATA["voxceleb"]["dev_root"])
    TRAIN_LABELS = True
TOPLINE = config["topline"] and TRAIN_LABELS


CHAINS += [p["chain_epochs"] for p in SCALING if p["chain_epochs"] not in CHAINS]


# --- the ablation grid: the full method plus each declared variant ----------------------------
VARIANTS = [{"name": FULL}] + [v for _, v in all_variants(config)]
SWITCHES = sorted({key for v in VARIANTS for key in v if key != "name"})


def grid_value(c, key):
    return effective_init_k(c["init_k"], K) if key == "init_k" else c[key]


GRID = pd.DataFrame(
    [{k: grid_value(variant_config(SSRL, v), k) for k in SWITCHES} or {"full": True}
     for v in VARIANTS],
    index=[v["name"] for v in VARIANTS],
)
paramspace = Paramspace(GRID, filename_params="*")
VARIANT_DIRS = dict(zip(GRID.index, paramspace.instance_patterns))
VARIANT_OF_DIR = {d: name for name, d in VARIANT_DIRS.items()}
VARIANT_CONFIG = {v["name"]: variant_config(SSRL, v) for v in VARIANTS}


def variant_k(name):
    return effective_init_k(VARIANT_CONFIG[name]["init_k"], K)


# --- the iterative baseline's chains of rounds ----------------------------------------------
def source_of(e, r):
    """The clustering round r of chain e trains on: DINO's, or round r-1's (`e4-round2`)."""
    return "dino" if int(r) == 1 else f"e{e}-round{int(r) - 1}"


def model_of(seed, source):
    """The model a clustering reads: `dino` or `e<E>-round<r>` of the iterative baseline."""
    if source == "dino":
        return f"{R}/seed{seed}/dino/model.pt"
    e, r = source.split("-")
    return f"{R}/seed{seed}/iterative/{e}/{r}/model.pt"


# --- input functions: what a rule reads that its wildcards do not spell out -----------------
def clustered_model(w):
    """The model rule `cluster` embeds the training set with."""
    return model_of(w.seed, w.source)


def previous_model(w):
    """The network iterative round `w.r` of chain `w.e` starts from."""
    return model_of(w.seed, source_of(w.e, w.r))


def previous_clustering(w):
    """The pseudo labels iterative round `w.r` of chain `w.e` trains on."""
    return f"{R}/seed{w.seed}/cluster/{source_of(w.e, w.r)}_k{K}/labels.npz"


def variant_start_labels(w):
    """The k-means labels of DINO an SSRL variant starts from (its own k, e.g. `init_k`)."""
    k = variant_k(VARIANT_OF_DIR[paramspace.wildcard_pattern.format(**w)])
    return f"{R}/seed{w.seed}/cluster/dino_k{k}/labels.npz"


def prepared_folder(path):
    """A prepared set's folder. The built-in corpus's holds synthesised WAVs: an intermediate,
    kept only until its wave store holds the audio. A Kaldi or VoxCeleb set's holds only lists
    pointing at the user's audio: kept."""
    return temp(directory(path)) if SOURCE == "builtin" else directory(path)


# One pattern per wildcard for every rule (a rule narrows `set` or `system` where it must).
wildcard_constraints:
    seed=r"\d+",
    e=r"\d+",
    r=r"\d+",
    k=r"\d+",
    source=r"dino|e\d+-round\d+",
    set="train|dev|test|noise|rir",


# --- the table of systems ----------------------------------------------------------------------
def system(name, kind, label, seed, folder, **extra):
    """One row of the systems table: what it is, and every file it has (paths relative to R)."""
    trained = kind != "baseline"
    return {"name": name, "kind": kind, "label": label, "seed": seed, "dir": folder,
            "model": f"{folder}/model.pt" if trained else None,
            "history": f"{folder}/history.json" if trained else None,
            "compute": f"{folder}/compute.json" if trained else None,
            "labels": f"{folder}/labels.npz" if kind in ("ssrl", "iterative", "supervised")
            else None,
            "eval": f"eval/{folder}", "metrics": f"eval/{folder}/metrics.json",
            "uses_labels": kind == "supervised", "variant": None, "round": None,
            "chain_epochs": None, "k": None,
            "epochs": None, "switches": {}, "quality": None, "chain": [], **extra}


def seed_systems(s):
    dino = f"dino-seed{s}"
    rows = [system(dino, "dino", "DINO", s, f"seed{s}/dino", k=K,
                   epochs=config["dino"]["epochs"], quality=f"seed{s}/cluster/dino_k{K}/quality.json",
                   chain=[dino])]
    for e in CHAINS:
        chain = [dino]
        for r in ROUNDS:
            name = f"iterative-e{e}-round{r}-seed{s}"
            chain = chain + [name]
            label = f"Iterative round {r}" + (f" ({e} epochs each)" if len(CHAINS) > 1 else "")
            rows.append(system(name, "iterative", label, s, f"seed{s}/iterative/e{e}/round{r}",
                               round=r, chain_epochs=e, k=K, epochs=e,
                               quality=f"seed{s}/cluster/{source_of(e, r)}_k{K}/quality.json",
                               chain=chain))
    for v, pattern in VARIANT_DIRS.items():
        name = f"ssrl-{v}-seed{s}"
        rows.append(system(name, "ssrl", "SSRL" if v == FULL else f"SSRL {v}", s,
                           f"seed{s}/ssrl/{pattern}", variant=v, k=variant_k(v),
                           epochs=VARIANT_CONFIG[v]["epochs"],
                           switches={k: grid_value(VARIANT_CONFIG[v], k) for k in SWITCHES},
                           quality=f"seed{s}/cluster/dino_k{variant_k(v)}/quality.json",
                           chain=[dino, name]))
    if TOPLINE:
        name = f"supervised-seed{s}"
        rows.append(system(name, "supervised", "Supervised topline", s,
                           f"seed{s}/supervised", epochs=SSRL["epochs"], chain=[dino, name]))
    return rows


SYSTEMS = [system("baseline", "baseline", "MFCC statistics (classical floor)", None, "baseline")]
for _s in SEEDS:
    SYSTEMS += seed_systems(_s)
SYSTEM_DIRS = [row["dir"] for row in SYSTEMS]
TRAINED_DIRS = [row["dir"] for row in SYSTEMS if row["kind"] != "baseline"]


def store(name):
    return f"{R}/store/{name}"


AUGMENT_STORES = {"noise": store("noise"), "rir": store("rir")}
DEV_STORE = {"dev": store("dev")} if HAS_DEV else {}


def dev_flag(input):
    return ["--dev", input.dev] if HAS_DEV else []


# --- the config file of every job ----------------------------------------------------------------
SHARED_SECTIONS = ("features", "model", "augment", "runtime")


def identity(name, stage, seed=None, **extra):
    """A job's run identity (MLflow run name, tags): not part of its result's fingerprint."""
    return {"name": name, "stage": stage, "seed": seed, "experiment": EXP, "dataset": SOURCE,
            "results_dir": config["results_dir"], "tracking_uri": config["tracking"]["uri"],
            **extra}


# Runtime keys that only tell the scheduler where a job runs and what it may use: kept out of
# the job configs, so moving to another partition or account reruns nothing.
SCHEDULING_KEYS = ("mem_mb", "runtime_min", "partition", "account")


def job_runtime():
    return {k: v for k, v in config["runtime"].items() if k not in SCHEDULING_KEYS}


def sections(*names, **more):
    cfg = {name: copy.deepcopy(config[name]) for name in SHARED_SECTIONS + names}
    cfg["runtime"] = job_runtime()
    cfg.update(copy.deepcopy(more))
    return cfg


def training_jobs(s):
    jobs = {f"seed{s}/dino": sections("dino", seed=s, job=identity(
        f"dino-seed{s}", "dino", s, epochs=config["dino"]["epochs"]))}
    for k in sorted({K} | {variant_k(v) for v in VARIANT_DIRS}):
        jobs[f"seed{s}/cluster/dino_k{k}"] = sections(
            seed=s, cluster={**config["cluster"], "k": k})
    for e in CHAINS:
        for r in ROUNDS[:-1]:
            jobs[f"seed{s}/cluster/e{e}-round{r}_k{K}"] = sections(seed=s,
                                                                   cluster=config["cluster"])
    for v, pattern in VARIANT_DIRS.items():
        jobs[f"seed{s}/ssrl/{pattern}"] = sections(
            seed=s, ssrl=VARIANT_CONFIG[v], job=identity(
                f"ssrl-{v}-seed{s}", "ssrl", s, variant=v, k=variant_k(v),
                epochs=VARIANT_CONFIG[v]["epochs"], parent=f"ablation-{EXP}"))
    classifier = {k: v for k, v in SSRL.items() if k in CLASSIFIER_KEYS}
    for e in CHAINS:
        for r in ROUNDS:
            jobs[f"seed{s}/iterative/e{e}/round{r}"] = sections(
                seed=s, ssrl=classifier, iterative={**config["iterative"], "epochs": e},
                job=identity(f"iterative-e{e}-round{r}-seed{s}", "iterative", s,
                             variant=f"e{e}-round{r}", round=r, k=K, epochs=e,
                             parent=f"iterative-{EXP}"))
    if TOPLINE:
        jobs[f"seed{s}/supervised"] = sections(
            seed=s, ssrl=classifier, job=identity(
                f"supervised-seed{s}", "supervised", s, epochs=SSRL["epochs"],
                uses_labels=True))
    return jobs


# What each set's preparation reads: changing the test set regenerates the test set only.
VOXCELEB_KEYS = {"train": ("train_root",), "dev": ("dev_root", "dev_trials"),
                 "test": ("test_root", "trials"), "noise": ("musan_root",),
                 "rir": ("rirs_root",)}


def prepare_job(name):
    keys = {"builtin": PART_KEYS[name], "kaldi": (name,), "voxceleb": VOXCELEB_KEYS[name]}
    section = DATA[SOURCE]
    return {"data": {"source": SOURCE, SOURCE: {k: section[k] for k in keys[SOURCE]}}}


JOBS = {
    **{f"prepare/{name}": prepare_job(name) for name in SETS},
    **{f"store/{name}": {"data": {"on_bad": DATA["on_bad"],
                                  "min_seconds": 0.0 if name == "rir" else DATA["min_seconds"]}}
       for name in ("train", "dev", "test", "noise", "rir")},
    "features": {"features": config["features"]},
    "embed": {"runtime": job_runtime(), "eval": config["eval"]},
    "score": {"eval": config["eval"]},
    "baseline": {"job": identity("baseline", "baseline")},
    "report": {"job": identity("report", "report"), "experiment": EXP,
               "data": {"source": SOURCE}, "eval": config["eval"],
               "systems": SYSTEMS, "test_store": "feats/test",
               "trial_order": ["trials", *DATA["voxceleb"]["trials"]]},
}
for _s in SEEDS:
    JOBS.update(training_jobs(_s))
if SCALING:
    # the scaling step: the systems table, and which of its systems make each point
    JOBS["scaling"] = {**JOBS["report"], "job": identity("scaling", "report"), "scaling": {
        "points": [{k: p[k] for k in ("name", "steps_per_epoch", "epochs", "steps",
                                      "chain_epochs", "runs")} for p in SCALING],
        "rounds": ROUNDS[-1], "hold_epochs": SSRL["hold_epochs"], "k": K,
        "batch_size": SSRL["batch_size"], "train_utterances": n_train_utterances()}}


def job_file(name):
    return f"{R}/jobs/{name}.json"


# --- the user's data as inputs ------------------------------------------------------------------
# A Kaldi or VoxCeleb set is an input of the DAG through `<R>/inputs/<set>.json`: the sha256 of
# its lists and audio, rewritten at start-up only when they changed (ssrl.data.sources; audio is
# hashed once and cached). Jobs run by a cluster executor only read it.
INPUTS = f"{R}/inputs"
if SOURCE != "builtin" and workflow.is_main_process:
    from snakemake.logging import logger

    from ssrl.data.sources import update_digest

    try:
        for _set in SETS:
            update_digest(DATA, _set, INPUTS, notify=logger.info)
    except OutputError as err:  # e.g. a read-only or full results folder
        raise WorkflowError(str(err)) from None
if workflow.is_main_process and os.path.isdir(R):
    # what a killed run (kill -9, a power cut) left half-written: ssrl's own temporary folders
    # whose writer is gone (never another host's, never a live process's)
    clean_stale_tmp(R, recursive=True)


def data_inputs(w):
    """What the preparation of set `w.set` reads beyond its job config: the set's digest."""
    return [] if SOURCE == "builtin" else [f"{INPUTS}/{w.set}.json"]


def launcher():
    """`python -m ssrl` as a list of words, or torchrun with one process per GPU."""
    n = config["runtime"]["gpus_per_job"]
    if n > 1:
        return ["torchrun", "--standalone", f"--nproc_per_node={n}", "-m", "ssrl"]
    return ["python", "-m", "ssrl"]


def processes():
    """Processes of a training job: torchrun's `--nproc_per_node`, else 1."""
    return max(1, config["runtime"]["gpus_per_job"])


def resources():
    """What every submitted job asks the scheduler for (SLURM; the local profile ignores all
    but the threads): memory, time, one node (torchrun --standalone), partition, account."""
    rt = config["runtime"]
    res = {"mem_mb": rt["mem_mb"], "runtime": rt["runtime_min"], "nodes": 1}
    if rt["partition"]:
        res["slurm_partition"] = rt["partition"]
    if rt["account"]:
        res["slurm_account"] = rt["account"]
    return res


def train_resources():
    """A training job's request: GPUs (one per torchrun process) only when it runs on GPUs;
    with `device: cpu`, `gpus_per_job` processes share the job's CPUs (gloo)."""
    res = resources()
    if config["runtime"]["device"] != "cpu" and config["runtime"]["gpus_per_job"] > 0:
        res["gpu"] = config["runtime"]["gpus_per_job"]
    return res


def train_threads():
    """CPUs a training job uses: each process's torch threads and its data-loader workers."""
    return processes() * (config["runtime"]["threads"] + config["runtime"]["num_workers"])


def all_results():
    """Every file the tables and plots read, named by the systems table."""
    files = [f"{R}/{row[key]}" for row in SYSTEMS
             for key in ("metrics", "history", "compute", "quality") if row[key]]
    return sorted(set(files))


def results_root(output):
    """The experiment folder, from a rule's outputs `<R>/<step>/<file>`."""
    return os.path.dirname(os.path.dirname(output[0]))


# --- evaluation --------------------------------------------------------------------------------
TRAINED = "|".join(re.escape(d) for d in TRAINED_DIRS)
ANY_SYSTEM = "|".join(re.escape(d) for d in SYSTEM_DIRS)
NORM = config["eval"]["score_norm"]


TEST_LISTS = f"{R}/feats/test"  # the test set's trial lists and speakers travel with its features


def normalised(w):
    """Whether system `w.system` is scored with `eval.score_norm`: the classical floor has no
    training-set embeddings or pseudo labels, so it is always scored plain."""
    return NORM != "none" and w.system != "baseline"


def cohort_inputs(w):
    """What AS-norm or mean normalisation reads besides the test embeddings."""
    if not normalised(w):
        return {}
    return {"train": f"{R}/eval/{w.system}/emb_train.npz", "labels": cohort_labels(w)}


def norm_flags(w, input):
    """The score command's normalisation inputs (its method and top-n come from the job file)."""
    if not normalised(w):
        return ["--norm", "none"] if NORM != "none" else []
    return ["--train-embeddings", input.train, "--labels", input.labels]


def cohort_labels(w):
    """Pseudo labels a system was trained with (AS-norm cohort; never true labels)."""
    row = next(r for r in SYSTEMS if r["dir"] == w.system)
    if row["kind"] == "dino":
        return f"{R}/{os.path.dirname(row['quality'])}/labels.npz"
    return f"{R}/{row['labels']}"
