"""Load and validate a workflow config outside Snakemake (tests, notebooks, the Python API).

The same JSON schema that the Snakefile validates against fills in every default, so
`load_config()` returns exactly the dictionary the workflow's steps receive.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ssrl.files import InputError

ROOT = Path(__file__).resolve().parents[1]
#: The JSON schema of a config, shipped inside the package (package data); the workflow's
#: `workflow/schemas/config.schema.yaml` is a link to it, so Snakemake validates the same file.
SCHEMA = Path(__file__).resolve().parent / "schema" / "config.schema.yaml"


def _with_defaults(validator_class):
    """A jsonschema validator that writes each property's `default` into the instance."""
    validate_props = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from validate_props(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def merge(base: dict, update: dict) -> dict:
    """Recursive dict update, as Snakemake merges --configfile over configfile:."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


#: Values (keys, items, scalars) a config may hold once YAML aliases are expanded. The largest
#: preset holds a few hundred; a "billion laughs" file (aliases of aliases) holds billions, and
#: anything that walks it (the schema's error message prints it) spins for minutes.
MAX_CONFIG_VALUES = 100_000


def check_size(config: Any, source: str = "config") -> None:
    """InputError when `config` expands to more than MAX_CONFIG_VALUES values. Stops counting
    there, so the check itself is bounded whatever the aliases multiply to."""
    count, stack = 0, [config]
    while stack:
        node = stack.pop()
        count += 1
        if isinstance(node, dict):
            count += len(node)
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
        if count > MAX_CONFIG_VALUES:
            raise InputError(f"{source}: more than {MAX_CONFIG_VALUES} values once its YAML "
                             "aliases are expanded (aliases of aliases, a 'billion laughs' "
                             "file?); refusing to read it")


def validate(config: dict[str, Any]) -> dict[str, Any]:
    """Validate and fill defaults; an error names the offending key and what was expected."""
    check_size(config)
    schema = yaml.safe_load(SCHEMA.read_text())
    cfg = copy.deepcopy(config)
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.path) or "(top level)"
        raise InputError(f"config key {where}: {err.message}")
    return cfg


def load_config(*paths: str | Path, overrides: dict | None = None) -> dict[str, Any]:
    """config.yaml, then each further file merged over it, then `overrides`; validated."""
    cfg: dict = {}
    for path in paths or (ROOT / "config.yaml",):
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
            check_size(loaded, str(path))
            cfg = merge(cfg, loaded)
        except FileNotFoundError:
            raise InputError(f"{path}: config file not found") from None
        except yaml.YAMLError as err:
            raise InputError(f"{path}: invalid YAML ({err})") from None
    return validate(merge(cfg, overrides or {}))


# --- relations the schema cannot express: checked when the workflow starts --------------------

#: The ablation grid's row for the method as configured; no variant may take this name.
FULL = "full"
#: Shortest crop the front end and encoders handle (one 25 ms window is not enough).
MIN_CROP_SECONDS = 0.1
#: The keys of `ssrl` that a fixed-label classifier training (an iterative round, the supervised
#: topline) reads: its job config holds only these, so its params say what it ran with and a
#: change to an SSRL-only key (queue, GMM, timetable) does not rerun it.
CLASSIFIER_KEYS = ("epochs", "steps_per_epoch", "batch_size", "student_seconds", "p_reverb",
                   "p_noise", "scale", "margin", "dropout", "warm_epochs", "warm_lr", "lr",
                   "min_lr", "weight_decay", "eval_every", "momentum_start", "momentum_end",
                   "teacher_lag_epochs")


def effective_init_k(value: int | str | None, k: int) -> int:
    """`ssrl.init_k` (or a variant's) as a number of clusters: null = `cluster.k`, an integer
    as written, `"<f>x"` = round(f x cluster.k) (so `0.75x` follows a change of K)."""
    if value is None:
        return k
    if isinstance(value, str):
        return int(round(float(value[:-1]) * k))
    return int(value)


def variant_config(ssrl: dict, variant: dict) -> dict:
    """The `ssrl` section as one ablation variant runs it (its switches over the defaults)."""
    return {**ssrl, **{k: v for k, v in variant.items() if k != "name"}}


#: The switches a point of the scaling grid sets on each of its SSRL runs.
SCALING_KEYS = ("epochs", "steps_per_epoch", "relabel", "noisy_label_modeling")


def scaling_grid(config: dict) -> list[dict]:
    """The points of `scaling.points`, each as the runs it needs: for every relabelling rule
    the SSRL variant with noisy-label modelling (`full` where it is the ssrl section itself)
    and, with `scaling.no_nlm`, the one without; and the iterative chain (epochs per round,
    in the ssrl section's epochs) whose rounds take as many optimiser steps in all as one SSRL
    run of the point. InputError (naming the key) for a point whose chain would need a
    fraction of an epoch per round, or whose steps the ssrl section leaves undefined.

    Each point: {name, steps_per_epoch, epochs, steps, chain_epochs,
    runs: {rule: {"full": variant name, "no_nlm": variant name or None}}, variants: [the
    ablation variants it adds (not `full`)]}."""
    grid = config.get("scaling") or {}
    points = grid.get("points") or []
    if not points:
        return []
    ssrl, rounds = config["ssrl"], config["iterative"]["rounds"]
    base_steps = ssrl["steps_per_epoch"]
    if base_steps is None:
        raise InputError("config key ssrl.steps_per_epoch: a scaling grid needs it set (the "
                         "iterative chains' rounds are counted in its epochs); use the steps "
                         "of one pass, e.g. training utterances // ssrl.batch_size")
    base = {k: ssrl[k] for k in SCALING_KEYS}
    out, names = [], set()
    for i, p in enumerate(points):
        where = f"scaling.points.{i}"
        if p["name"] in names:
            raise InputError(f"config key {where}.name: {p['name']!r} is used by an earlier "
                             "point")
        names.add(p["name"])
        steps = p["epochs"] * p["steps_per_epoch"]
        per_round, rest = divmod(steps, rounds * base_steps)
        if rest or not per_round:
            raise InputError(
                f"config key {where}: {p['epochs']} epochs x {p['steps_per_epoch']} steps = "
                f"{steps} steps, which {rounds} iterative rounds (iterative.rounds) of "
                f"ssrl.steps_per_epoch = {base_steps} steps per epoch cannot split into whole "
                f"epochs; choose epochs x steps_per_epoch a multiple of {rounds * base_steps}")
        runs, variants = {}, []
        for rule in grid["relabel"]:
            runs[rule] = {}
            for kind, nlm in (("full", True), ("no_nlm", False)):
                if kind == "no_nlm" and not grid["no_nlm"]:
                    runs[rule][kind] = None
                    continue
                switches = {"epochs": p["epochs"], "steps_per_epoch": p["steps_per_epoch"],
                            "relabel": rule, "noisy_label_modeling": nlm}
                if switches == base:
                    runs[rule][kind] = FULL
                    continue
                name = f"{p['name']}-{rule}" + ("-no_nlm" if not nlm else "")
                runs[rule][kind] = name
                variants.append({"name": name, **switches})
        out.append({"name": p["name"], "steps_per_epoch": p["steps_per_epoch"],
                    "epochs": p["epochs"], "steps": steps, "chain_epochs": per_round,
                    "runs": runs, "variants": variants})
    if not any(FULL in r.values() for point in out for r in point["runs"].values()):
        raise InputError(
            "config key ssrl: with a scaling grid the full method (the ssrl section) must be "
            "one of its runs with noisy-label modelling, or it trains once more for nothing: "
            f"set ssrl.epochs, ssrl.steps_per_epoch and ssrl.relabel to a point's (now "
            f"{ssrl['epochs']}, {base_steps}, {ssrl['relabel']}; rules {grid['relabel']})")
    return out


def all_variants(config: dict) -> list[tuple[str, dict]]:
    """Every ablation variant but `full`, with the config key it comes from: those of
    `ablation.variants`, then those the scaling grid adds."""
    out = [(f"ablation.variants.{i}", v) for i, v in enumerate(config["ablation"]["variants"])]
    for i, point in enumerate(scaling_grid(config)):
        out += [(f"scaling.points.{i} ({v['name']})", v) for v in point["variants"]]
    return out


def count_utterances(scp: str | Path) -> int | None:
    """Utterances listed in a wav.scp (None when the file is not there)."""
    path = Path(scp)
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip() and not line.lstrip().startswith(b"#"))


def _check_teacher_schedule(c: dict, where: str) -> None:
    """A section's EMA schedule is set one way only: `teacher_lag_epochs` replaces
    `momentum_start`/`momentum_end`, so both set means one is silently ignored (typically a
    preset's momentum under config.yaml's lag)."""
    lag = c.get("teacher_lag_epochs")
    momentum = {k: c.get(k) for k in ("momentum_start", "momentum_end") if c.get(k) is not None}
    if lag and momentum:
        given = ", ".join(f"{where}.{k} = {v}" for k, v in momentum.items())
        raise InputError(f"config key {where}.teacher_lag_epochs: {lag} would silently replace "
                         f"{given}; set one of them and the other to null (a preset merged "
                         f"over config.yaml inherits its {where}.teacher_lag_epochs)")


def _check_ssrl(c: dict, where: str) -> None:
    q, hold = c["queue_len"], c["hold_epochs"]
    latest = hold - (q // 2 + 1)  # the first update ends epoch hold-1; q//2+1 votes beat the seed
    rec = c.get("record_from_epoch")
    if rec is None and latest < 0:
        raise InputError(f"config key {where}.hold_epochs: {hold} is too short for queue_len "
                         f"{q}: the teacher must record queue_len // 2 + 1 = {q // 2 + 1} "
                         "epochs before the first label update (hold_epochs - 1), so a new "
                         f"label can outvote the k-means seed; use hold_epochs >= {q // 2 + 1}")
    if rec is not None and rec > latest:
        raise InputError(f"config key {where}.record_from_epoch: {rec} is later than "
                         f"hold_epochs - (queue_len // 2 + 1) = {latest}: the queue would not "
                         "hold enough teacher labels to outvote its k-means seed at the first "
                         "update (leave it null to derive it)")
    for key in ("student_seconds", "teacher_seconds"):
        if c[key] < MIN_CROP_SECONDS:
            raise InputError(f"config key {where}.{key}: {c[key]} s is shorter than the "
                             f"{MIN_CROP_SECONDS} s a crop needs")


def check_config(config: dict, n_train_utts: int | None = None) -> None:
    """Raise InputError (naming the key) for a config the workflow cannot run correctly:
    variant names and grid points that collide, an SSRL timetable that breaks the queue's
    relation, crops too short for the front end, more clusters or a larger batch than there
    are training utterances (the schema caps batch sizes at 65536 whatever the data)."""
    if config["data"]["source"] == "builtin":
        from ssrl.data.synth import CorpusSpec

        CorpusSpec.from_dict(config["data"]["builtin"])
    for key in ("global_seconds", "local_seconds"):
        if config["dino"][key] < MIN_CROP_SECONDS:
            raise InputError(f"config key dino.{key}: {config['dino'][key]} s is shorter than "
                             f"the {MIN_CROP_SECONDS} s a crop needs")
    ssrl = config["ssrl"]
    _check_ssrl(ssrl, "ssrl")
    for section in ("dino", "ssrl"):
        _check_teacher_schedule(config[section], section)
    k = config["cluster"]["k"]
    located = all_variants(config)
    variants = [v for _, v in located]
    switches = sorted({key for v in variants for key in v if key != "name"})

    def grid_point(c: dict) -> tuple:
        return tuple(effective_init_k(c[s], k) if s == "init_k" else c[s] for s in switches)

    seen: dict[tuple, str] = {grid_point(ssrl): FULL}
    names = {FULL}
    for where, v in located:
        if v["name"] in names:
            raise InputError(f"config key {where}.name: {v['name']!r} "
                             + ("is reserved for the full method (the grid's first row)"
                                if v["name"] == FULL else "is used by an earlier variant"))
        names.add(v["name"])
        effective = variant_config(ssrl, v)
        _check_ssrl(effective, where)
        point = grid_point(effective)
        if point in seen:
            raise InputError(f"config key {where}: variant {v['name']!r} has the same switches "
                             f"as {seen[point]!r}; one of them would be trained for both")
        seen[point] = v["name"]
    ks = {"cluster.k": k}
    if ssrl.get("init_k"):
        ks["ssrl.init_k"] = effective_init_k(ssrl["init_k"], k)
    ks.update({f"ablation.variants.{i}.init_k": effective_init_k(v["init_k"], k)
               for i, v in enumerate(variants) if v.get("init_k")})
    for key, n in ks.items():
        if n < 2:
            raise InputError(f"config key {key}: {n} clusters (from cluster.k = {k}); "
                             "at least 2 are needed")
        if n_train_utts is not None and n > n_train_utts:
            raise InputError(f"config key {key}: {n} clusters but only {n_train_utts} "
                             "training utterances")

    # a batch larger than the training set repeats utterances within one step, and an
    # absurd one (1e8) would run into the OOM killer minutes later instead of failing here
    sizes = {"dino.batch_size": config["dino"]["batch_size"],
             "ssrl.batch_size": ssrl["batch_size"]}
    sizes.update({f"ablation.variants.{i}.batch_size": v["batch_size"]
                  for i, v in enumerate(variants) if v.get("batch_size")})
    for key, size in sizes.items():
        if n_train_utts is not None and size > n_train_utts:
            raise InputError(f"config key {key}: a batch of {size} utterances but only "
                             f"{n_train_utts} training utterances (each batch would repeat "
                             "utterances); use at most that many")


def check_data_paths(config: dict, prepared: Callable[[str], bool] = lambda name: False) -> None:
    """Raise InputError naming the config key of a data path that does not exist, for every
    set not yet `prepared` (VoxCeleb / MUSAN / RIRS_NOISES roots, trial lists, Kaldi folders):
    found when the workflow starts, not when the preparation job runs."""
    from ssrl.data.prepare import SETS, set_source

    data = config["data"]
    if data["source"] == "builtin":
        return
    vox_key = {"noise": "musan_root", "rir": "rirs_root"}
    paths = {}
    for name in SETS:
        key = (f"data.kaldi.{name}" if data["source"] == "kaldi"
               else f"data.voxceleb.{vox_key.get(name, f'{name}_root')}")
        if not prepared(name) and set_source(data, name):
            paths[key] = set_source(data, name)
    if data["source"] == "voxceleb" and not prepared("test"):
        paths.update({f"data.voxceleb.trials.{n}": f
                      for n, f in data["voxceleb"]["trials"].items()})
    dev_trials = data["voxceleb"].get("dev_trials") if data["source"] == "voxceleb" else None
    if dev_trials and not prepared("dev"):
        paths["data.voxceleb.dev_trials"] = dev_trials
    for key, path in paths.items():
        if not Path(path).exists():
            raise InputError(f"config key {key}: {path} not found")
