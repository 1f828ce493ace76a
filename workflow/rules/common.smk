# Helpers shared by the workflow: validated config, paths, the ablation grid, config-to-CLI.
import json
import os

import pandas as pd
from snakemake.utils import Paramspace, validate


validate(config, workflow.source_path("../schemas/config.schema.yaml"))

R = f"{config['results_dir']}/{config['experiment']}"
LOGS = f"logs/{config['experiment']}"
SSRL_DEFAULTS = config["ssrl"]

# The ablation grid: the full method plus each declared variant, one row per SSRL run.
SWITCHES = sorted({key for v in config["ablation"]["variants"] for key in v if key != "name"})


def _switch_value(variant, key):
    if key == "init_k":
        return variant.get(key, SSRL_DEFAULTS["init_k"] or config["cluster"]["k"])
    return variant.get(key, SSRL_DEFAULTS[key])


VARIANTS = [{"name": "full"}] + list(config["ablation"]["variants"])
GRID = pd.DataFrame(
    [{key: _switch_value(v, key) for key in SWITCHES} or {"full": True} for v in VARIANTS]
)
GRID.index = [v["name"] for v in VARIANTS]
paramspace = Paramspace(GRID, filename_params="*")
VARIANT_DIRS = dict(zip(GRID.index, paramspace.instance_patterns))
MAIN_SSRL = f"ssrl/{VARIANT_DIRS['full']}"
ROUNDS = list(range(1, config["iterative"]["rounds"] + 1))


def variant_name(pattern):
    return {v: k for k, v in VARIANT_DIRS.items()}[pattern]


SHARED_SECTIONS = ("experiment", "seed", "features", "model", "augment", "runtime", "tracking")


def cfg_json(*stages, ssrl_overrides=None):
    """The config a job reads, as one JSON argument: the shared sections plus its stages'.
    Being the job's params, a change re-runs exactly the jobs that read it (and MLflow logs
    it as the run's params); `data.source` goes along as the run's dataset tag."""
    cfg = {key: config[key] for key in SHARED_SECTIONS + stages}
    cfg = json.loads(json.dumps(cfg))
    cfg["data"] = {"source": config["data"]["source"]}
    if ssrl_overrides:
        cfg["ssrl"].update(
            {k: getattr(v, "item", lambda: v)() for k, v in ssrl_overrides.items() if k != "full"}
        )
    return json.dumps(cfg, sort_keys=True)


def section_json(name):
    return json.dumps(config[name], sort_keys=True)


def launcher():
    """`python -m ssrl`, or torchrun with one process per GPU when runtime.gpus_per_job > 1."""
    n = config["runtime"]["gpus_per_job"]
    if n > 1:
        return f"torchrun --standalone --nproc_per_node={n} -m ssrl"
    return "python -m ssrl"


def train_resources():
    rt = config["runtime"]
    res = {"mem_mb": rt["mem_mb"], "runtime": rt["runtime_min"], "gpu": rt["gpus_per_job"]}
    if rt["partition"]:
        res["slurm_partition"] = rt["partition"]
    return res


def store(name):
    return f"{R}/store/{name}"


AUGMENT_STORES = {"noise": store("noise"), "rir": store("rir")}


def model_of(source):
    """The model a clustering reads: `dino` or `roundN` of the iterative baseline."""
    return f"{R}/dino/model.pt" if source == "dino" else f"{R}/iterative/{source}/model.pt"


def initial_k(instance):
    return instance.get("init_k") or SSRL_DEFAULTS["init_k"] or config["cluster"]["k"]


def previous_model(r):
    return f"{R}/dino/model.pt" if int(r) == 1 else f"{R}/iterative/round{int(r) - 1}/model.pt"


def previous_source(r):
    return "dino" if int(r) == 1 else f"round{int(r) - 1}"


SYSTEMS = (
    ["dino"]
    + [f"iterative/round{r}" for r in ROUNDS]
    + [f"ssrl/{p}" for p in VARIANT_DIRS.values()]
)
NORM = config["eval"]["score_norm"]


def system_labels(system):
    """Pseudo labels a system was trained with (AS-norm cohort; never true labels)."""
    if system == "dino":
        return f"{R}/cluster/dino_k{config['cluster']['k']}/labels.npz"
    return f"{R}/{system}/labels.npz"


def all_results():
    return {
        "metrics": [f"{R}/eval/{s}/metrics.json" for s in SYSTEMS],
        "baseline": f"{R}/baseline.json",
        "clusters": [f"{R}/cluster/dino_k{config['cluster']['k']}/quality.json"],
    }
