"""The scaling grid's table and figure (`config/scaling.yaml`): for every point (steps between
two relabellings, utterances per cluster) and relabelling rule, the paper's claims as effect
sizes with their intervals.

Per point and rule, from the systems table and the scaling section of the job config:
- SSRL's test EER and the matched iterative chain's last round, each with its interval;
- SSRL − last round and SSRL without noisy-label modelling − SSRL, paired on the same
  bootstrap replicates seed by seed (`Comparisons.paired`, as the main and ablation tables);
- labels changed per relabelling (mean over the epochs whose end relabels), clusters and
  pseudo-label NMI from the k-means start to the end, and the final dev EER (the split on
  which a default may be chosen): seed means with the range over seeds.

`scaling.csv` holds one row per point and rule, `dynamics.csv` one row per run, seed and epoch
(epoch 0 = the k-means start). `write_scaling_report` renders any number of these folders
(the two corpora of `make scaling`) as one table and one figure.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ssrl.data.stores import open_store
from ssrl.files import InputError, write_text
from ssrl.report.comparisons import Comparisons, Estimate
from ssrl.report.results import Group, load_groups, trial_lists
from ssrl.report.tables import _csv, _num, cell, markdown_table

#: VoxCeleb2-dev at the paper's K and batch (SSRL-NOTES): 1,092,009 utterances / 8000
#: clusters, 2,275 steps of batch 480 between two relabellings (one pass per epoch).
VOXCELEB2 = {"utterances_per_cluster": 1_092_009 / 8000, "steps_between_relabellings": 2275}

#: scaling.csv: one row per point and rule.
COLUMNS = [
    "experiment", "point", "rule", "seeds", "train_utterances", "clusters_k",
    "utterances_per_cluster", "steps_between_relabellings", "passes_per_epoch", "epochs",
    "steps", "chain_epochs", "rounds",
    "eer", "eer_ci_low", "eer_ci_high", "eer_sd",
    "round_eer", "round_eer_ci_low", "round_eer_ci_high", "round_eer_sd",
    "ssrl_minus_round", "ssrl_minus_round_ci_low", "ssrl_minus_round_ci_high",
    "no_nlm_minus_full", "no_nlm_minus_full_ci_low", "no_nlm_minus_full_ci_high",
    "changed", "changed_min", "changed_max",
    "clusters_start", "clusters_end", "clusters_end_min", "clusters_end_max",
    "clusters_removed", "clusters_removed_min", "clusters_removed_max",
    "nmi_start", "nmi_end", "nmi_gain", "nmi_gain_min", "nmi_gain_max",
    "dev_eer", "dev_eer_min", "dev_eer_max", "status",
]
#: dynamics.csv: one row per run (SSRL with or without noisy-label modelling), seed and epoch.
DYNAMICS_COLUMNS = ["experiment", "point", "rule", "run", "variant", "seed", "epoch", "changed",
                    "n_clusters", "nmi", "dev_eer"]


# --- numbers of one run ----------------------------------------------------------------------

def run_dynamics(history: list[dict], quality: dict | None, hold_epochs: int) -> dict[str, Any]:
    """One SSRL run's label numbers: the mean fraction of labels changed per relabelling
    (epochs >= hold_epochs, 1-based: the first relabelling ends epoch hold_epochs), clusters
    and NMI at the k-means start (`quality`) and after the last epoch, the last dev EER."""
    changed = [r["changed"] for r in history
               if r.get("changed") is not None and int(r["epoch"]) >= hold_epochs]
    last = history[-1] if history else {}
    dev = [r["dev/eer"] for r in history if r.get("dev/eer") is not None]
    quality = quality or {}
    return {"changed": sum(changed) / len(changed) if changed else None,
            "clusters_start": quality.get("n_clusters"), "clusters_end": last.get("n_clusters"),
            "nmi_start": quality.get("nmi"), "nmi_end": last.get("nmi"),
            "dev_eer": dev[-1] if dev else None}


def _spread(values: list[float | None]) -> tuple[float | None, float | None, float | None]:
    """(mean, min, max) of the values present; Nones where none is."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return None, None, None
    return sum(values) / len(values), min(values), max(values)


def _diff(a: Any, b: Any) -> float | None:
    return None if a is None or b is None else float(a) - float(b)


def seed_numbers(group: Group, hold_epochs: int) -> dict[str, Any]:
    """The label numbers of a group (one SSRL variant, every seed): seed means and ranges."""
    per_seed = [run_dynamics(m.history or [], m.quality, hold_epochs)
                for m in group.members if m.ok]
    for d in per_seed:
        d["clusters_removed"] = _diff(d["clusters_start"], d["clusters_end"])
        d["nmi_gain"] = _diff(d["nmi_end"], d["nmi_start"])
    out: dict[str, Any] = {}
    for key in ("changed", "clusters_end", "clusters_removed", "nmi_gain", "dev_eer"):
        out[key], out[f"{key}_min"], out[f"{key}_max"] = _spread([d[key] for d in per_seed])
    for key in ("clusters_start", "nmi_start", "nmi_end"):
        out[key] = _spread([d[key] for d in per_seed])[0]
    return out


def _estimate(row: dict, prefix: str, e: Estimate) -> None:
    row.update({prefix: e.value, f"{prefix}_ci_low": e.lo, f"{prefix}_ci_high": e.hi})
    if f"{prefix}_sd" in COLUMNS:
        row[f"{prefix}_sd"] = e.sd


def _train_utterances(grid: dict, group: Group | None) -> float | None:
    """Training utterances: as the workflow knew them, else from a run's compute record
    (steps x batch / utterance passes)."""
    if grid.get("train_utterances"):
        return float(grid["train_utterances"])
    for m in group.members if group else []:
        c = m.compute or {}
        if c.get("utterance_passes") and c.get("steps"):
            return c["steps"] * grid["batch_size"] / c["utterance_passes"]
    return None


# --- the table -------------------------------------------------------------------------------

def scaling_rows(cfg: dict, root: Path, threads: int = 1) -> tuple[list[dict], list[dict]]:
    """(scaling.csv rows, dynamics.csv rows) of one experiment, from its systems table and the
    job's `scaling` section (written by the workflow: common.smk)."""
    grid = cfg.get("scaling")
    if not grid or not grid.get("points"):
        raise InputError("the job config has no scaling grid (`scaling.points`)")
    root = Path(root)
    groups = load_groups(cfg, root)
    lists = trial_lists(cfg, groups)
    first = lists[0] if lists else None
    comp = Comparisons(open_store(root / cfg["test_store"]), lists,
                       cfg.get("eval", {}).get("bootstrap", {}), threads)
    variants = {g.row["variant"]: g for g in groups.values() if g.kind == "ssrl"}
    rounds = {(g.row["chain_epochs"], g.row["round"]): g for g in groups.values()
              if g.kind == "iterative"}
    experiment = cfg.get("experiment", "")
    hold = grid["hold_epochs"]
    rows, dynamics = [], []
    for point in grid["points"]:
        last = rounds.get((point["chain_epochs"], grid["rounds"]))
        for rule, runs in sorted(point["runs"].items()):  # (the job file sorts them too)
            full = variants.get(runs["full"])
            no_nlm = variants.get(runs["no_nlm"]) if runs.get("no_nlm") else None
            n = _train_utterances(grid, full)
            row: dict[str, Any] = {
                "experiment": experiment, "point": point["name"], "rule": rule,
                "seeds": len([m for m in full.members if m.ok]) if full else 0,
                "train_utterances": n, "clusters_k": grid["k"],
                "utterances_per_cluster": n / grid["k"] if n else None,
                "steps_between_relabellings": point["steps_per_epoch"],
                "passes_per_epoch": point["steps_per_epoch"] * grid["batch_size"] / n
                if n else None,
                "epochs": point["epochs"], "steps": point["steps"],
                "chain_epochs": point["chain_epochs"], "rounds": grid["rounds"]}
            ok = full is not None and full.ok and first is not None
            if ok:
                _estimate(row, "eer", comp.summary(full, first)["eer"])
                row.update(seed_numbers(full, hold))
            if last is not None and last.ok and first is not None:
                _estimate(row, "round_eer", comp.summary(last, first)["eer"])
                if ok:
                    _estimate(row, "ssrl_minus_round", comp.paired(full, last, first)["eer"])
            if ok and no_nlm is not None and no_nlm.ok:
                _estimate(row, "no_nlm_minus_full", comp.paired(no_nlm, full, first)["eer"])
            wanted = [full, last] + ([no_nlm] if runs.get("no_nlm") else [])
            row["status"] = "ok" if all(g is not None and g.ok for g in wanted) else "missing"
            rows.append(row)
            for kind, g in (("full", full), ("no_nlm", no_nlm)):
                for m in (g.members if g else []):
                    dynamics += _dynamics_rows(m, experiment, point["name"], rule, kind)
    return rows, dynamics


def _dynamics_rows(member, experiment: str, point: str, rule: str, kind: str) -> list[dict]:
    base = {"experiment": experiment, "point": point, "rule": rule, "run": kind,
            "variant": member.row["variant"], "seed": member.row["seed"]}
    quality = member.quality or {}
    rows = [{**base, "epoch": 0, "n_clusters": quality.get("n_clusters"),
             "nmi": quality.get("nmi")}] if quality else []
    for r in member.history or []:
        rows.append({**base, "epoch": r.get("epoch"), "changed": r.get("changed"),
                     "n_clusters": r.get("n_clusters"), "nmi": r.get("nmi"),
                     "dev_eer": r.get("dev/eer")})
    return rows


# --- files -----------------------------------------------------------------------------------

def _value(text: str) -> Any:
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def read_csv(path: Path) -> list[dict]:
    """Rows of a scaling.csv / dynamics.csv, numbers as floats and empty cells as None."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [{k: _value(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except FileNotFoundError:
        raise InputError(f"{path}: not found (run the workflow's scaling step first)") from None


def _cell(row: dict, key: str, digits: int, sd: bool = False, mark: bool = False) -> str:
    e = Estimate(row.get(key), row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high"),
                 row.get(f"{key}_sd") if sd and (row.get("seeds") or 0) > 1 else None)
    text = cell(e, digits)
    return text + (" *" if mark and e.excludes_zero else "")


def _range_cell(row: dict, key: str, digits: int, scale: float = 1.0,
                whole: bool = False) -> str:
    """`0.031 (0.012…0.047)`: the seed mean and, with several seeds, their range; with
    `whole`, whole numbers (cluster counts) without decimals."""
    v, lo, hi = (row.get(k) for k in (key, f"{key}_min", f"{key}_max"))
    if v is None:
        return "–"

    def fmt(x: float) -> str:
        x = float(x) * scale
        return _num(x, 0 if whole and x.is_integer() else digits)

    text = fmt(v)
    if (row.get("seeds") or 0) > 1 and lo is not None:
        text += f" ({fmt(lo)}…{fmt(hi)})"
    return text


INTRO = (
    "One row per point and relabelling rule. utt/cluster: training utterances per k-means "
    "cluster; steps: optimiser steps between two relabellings (one SSRL epoch); the iterative "
    "chain's five rounds take the same steps in all (matched passes). EER in % on the test "
    "trials with its 95 % bootstrap interval over test speakers (with several seeds: mean ± sd "
    "over seeds [interval of the mean]); Δ columns are paired on the same replicates, seed by "
    "seed (negative: the first system is better), `*` where the interval excludes 0. Label "
    "columns (training set, true speakers for reporting only): labels changed per relabelling "
    "(mean over the relabelling epochs), clusters and NMI from the k-means start to the last "
    "epoch, the last dev EER of the teacher (the split on which a default may be chosen); "
    "with several seeds the seed mean and (min…max). For comparison, VoxCeleb2 in the paper: "
    "{upc:.0f} utterances per cluster, {steps:,} steps between relabellings (one pass).")


def last_round(rows: list[dict]) -> str:
    """`round 5` (the chains' last round), or `last round` where experiments differ."""
    rounds = {r.get("rounds") for r in rows}
    return f"round {_num(rounds.pop(), 0)}" if len(rounds) == 1 and None not in rounds \
        else "last round"


def scaling_markdown(rows: list[dict]) -> str:
    last = last_round(rows)
    columns = ["experiment", "point", "utt/cluster", "steps", "passes/epoch", "epochs", "rule",
               "seeds", "EER % SSRL", f"EER % {last}", f"Δ SSRL − {last}",
               "Δ no NLM − SSRL", "changed %", "clusters", "NMI", "NMI gain", "dev EER %",
               "status"]
    table = []
    for r in rows:
        table.append({
            "experiment": r.get("experiment"), "point": r.get("point"),
            "utt/cluster": _num(r.get("utterances_per_cluster"), 0),
            "steps": _num(r.get("steps_between_relabellings"), 0),
            "passes/epoch": _num(r.get("passes_per_epoch"), 2),
            "epochs": _num(r.get("epochs"), 0), "rule": r.get("rule"),
            "seeds": _num(r.get("seeds"), 0),
            "EER % SSRL": _cell(r, "eer", 1, sd=True),
            f"EER % {last}": _cell(r, "round_eer", 1, sd=True),
            f"Δ SSRL − {last}": _cell(r, "ssrl_minus_round", 2, mark=True),
            "Δ no NLM − SSRL": _cell(r, "no_nlm_minus_full", 2, mark=True),
            "changed %": _range_cell(r, "changed", 1, 100.0),
            "clusters": (f"{_num(r.get('clusters_start'), 0)} → "
                         + _range_cell(r, "clusters_end", 1, whole=True)),
            "NMI": f"{_num(r.get('nmi_start'), 3)} → {_num(r.get('nmi_end'), 3)}",
            "NMI gain": _range_cell(r, "nmi_gain", 3),
            "dev EER %": _range_cell(r, "dev_eer", 1),
            "status": r.get("status")})
    intro = INTRO.format(upc=VOXCELEB2["utterances_per_cluster"],
                         steps=VOXCELEB2["steps_between_relabellings"])
    return f"# Scaling grid\n\n{intro}\n\n" + markdown_table(columns, table)


def write_scaling_report(rows: list[dict], dynamics: list[dict], out_dir: Path) -> None:
    """scaling.md, scaling.csv, dynamics.csv and scaling.png in `out_dir`."""
    from ssrl.report.plots import plot_scaling

    out_dir = Path(out_dir)
    write_text(out_dir / "scaling.csv", _csv(COLUMNS, rows))
    write_text(out_dir / "dynamics.csv", _csv(DYNAMICS_COLUMNS, dynamics))
    write_text(out_dir / "scaling.md", scaling_markdown(rows))
    plot_scaling(rows, out_dir / "scaling.png", VOXCELEB2["steps_between_relabellings"],
                 last_round(rows))


def write_scaling(cfg: dict, root: Path, out_dir: Path, threads: int = 1) -> list[dict]:
    """One experiment's scaling table and figure (the workflow's `scaling` step)."""
    rows, dynamics = scaling_rows(cfg, root, threads)
    write_scaling_report(rows, dynamics, out_dir)
    return rows


def merge_scaling(in_dirs: list[Path], out_dir: Path) -> list[dict]:
    """The table and figure of several experiments' scaling folders together (`make
    scaling`: the two corpora), rows in the order given."""
    rows, dynamics = [], []
    for d in in_dirs:
        rows += read_csv(Path(d) / "scaling.csv")
        dynamics += read_csv(Path(d) / "dynamics.csv")
    write_scaling_report(rows, dynamics, out_dir)
    return rows
