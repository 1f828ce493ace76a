"""The scaling grid (config/scaling.yaml, issue 24): its expansion into SSRL variants and matched
iterative chains, what `snakemake -n` plans for its two corpora (one DINO per seed, shared by
every point), and the aggregation's numbers against a hand-computed example made by the real
score step."""

from __future__ import annotations

import copy
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, FakeTestSet, copy_workflow, ssrl_env
from snakemake.utils import update_config

from ssrl.config import all_variants, check_config, scaling_grid, validate
from ssrl.files import InputError
from ssrl.report.scaling import merge_scaling, read_csv, run_dynamics, write_scaling

PRESETS = {"small": ("config/scaling.yaml",),
           "large": ("config/scaling.yaml", "config/scaling-large.yaml")}


def preset(name: str, extra: dict | None = None) -> dict:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    for f in PRESETS[name]:
        update_config(cfg, yaml.safe_load((REPO / f).read_text()))
    update_config(cfg, copy.deepcopy(extra or {}))
    return validate(cfg)


# --- the grid --------------------------------------------------------------------------------

def test_the_small_corpus_grid_runs_each_point_with_both_rules_and_a_matched_chain():
    cfg = preset("small")
    grid = scaling_grid(cfg)
    assert [(p["name"], p["steps"], p["chain_epochs"]) for p in grid] == [
        ("x1", 1000, 4), ("x4", 2000, 8), ("x16", 4000, 16)]
    # matched steps: 5 rounds x chain epochs x 50 steps = one SSRL run of the point
    for p in grid:
        assert 5 * p["chain_epochs"] * cfg["ssrl"]["steps_per_epoch"] == p["steps"]
    assert grid[0]["runs"] == {"margin": {"full": "x1-margin", "no_nlm": "x1-margin-no_nlm"},
                               "cosine": {"full": "full", "no_nlm": "x1-cosine-no_nlm"}}
    names = [v["name"] for _, v in all_variants(cfg)]
    assert len(names) == 11 and "x1-cosine" not in names  # that one is the full row
    x16 = next(v for _, v in all_variants(cfg) if v["name"] == "x16-margin-no_nlm")
    assert x16 == {"name": "x16-margin-no_nlm", "epochs": 5, "steps_per_epoch": 800,
                   "relabel": "margin", "noisy_label_modeling": False}
    check_config(cfg, 800)


def test_the_large_corpus_grid_is_one_point_of_one_pass_per_epoch():
    cfg = preset("large")
    (point,) = scaling_grid(cfg)
    b = cfg["data"]["builtin"]
    n = b["train_speakers"] * b["train_utts_per_speaker"]
    assert n == 3200 and point["steps_per_epoch"] * cfg["ssrl"]["batch_size"] == n
    assert point["chain_epochs"] == 2 and cfg["seeds"] == [0, 1, 2]
    check_config(cfg, n)


@pytest.mark.parametrize("extra, message", [
    ({"scaling": {"points": [{"name": "x3", "steps_per_epoch": 150, "epochs": 3}]}},
     "config key scaling.points.0: 3 epochs x 150 steps = 450 steps, which 5 iterative rounds"),
    ({"ssrl": {"epochs": 7}},
     "config key ssrl: with a scaling grid the full method (the ssrl section) must be one of"),
    ({"ssrl": {"steps_per_epoch": None}}, "config key ssrl.steps_per_epoch: a scaling grid"),
    ({"ablation": {"variants": [{"name": "x1-margin", "ema": False}]}},
     "config key scaling.points.0 (x1-margin).name: 'x1-margin' is used by an earlier"),
    ({"ablation": {"variants": [{"name": "no_nlm", "noisy_label_modeling": False}]}},
     "config key scaling.points.0 (x1-cosine-no_nlm): variant 'x1-cosine-no_nlm' has the same"
     " switches as 'no_nlm'"),
])
def test_a_grid_that_cannot_run_as_stated_is_refused_naming_the_key(extra, message):
    with pytest.raises(InputError) as err:
        check_config(preset("small", extra), 800)
    assert str(err.value).startswith(message), str(err.value)


def _jobs(out: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", out, re.M)}


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("scaling") / "wf")


@pytest.mark.parametrize("name, expected", [
    # one seed: 3 points x 2 rules x (with, without NLM) SSRL runs, a chain of 5 rounds per
    # point (4 k-means each after DINO's), one DINO
    ("small", {"dino": 1, "ssrl": 12, "iterative_round": 15, "cluster": 1 + 3 * 4,
               "embed_test": 28, "scaling": 1, "prepare_data": 5, "wave_store": 4}),
    # three seeds of one point: one DINO and one k-means start per seed
    ("large", {"dino": 3, "ssrl": 12, "iterative_round": 15, "cluster": 3 * (1 + 4),
               "embed_test": 30, "scaling": 1, "prepare_data": 5, "wave_store": 4}),
])
def test_dry_run_plans_one_dino_per_seed_shared_by_every_point(workflow_copy, name, expected):
    cmd = [str(Path(sys.executable).parent / "snakemake"), "-n", "--cores", "1",
           "--configfile", *PRESETS[name]]
    proc = subprocess.run(cmd, cwd=workflow_copy, env=ssrl_env(), capture_output=True,
                          text=True, timeout=120, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    jobs = _jobs(out)
    assert {k: jobs.get(k, 0) for k in expected} == expected
    assert "supervised" not in jobs  # the topline is left out of the grid's budget
    # every SSRL run (and round 1 of every chain) starts from its seed's one DINO model
    blocks = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block).group(1)
        inputs = re.search(r"^\s+input: (.*)$", block, re.M)
        blocks.setdefault(rule, []).append(inputs.group(1).split(", ") if inputs else [])
    dino_models = set(re.findall(r"output: (\S+/dino/model\.pt)", out))
    assert len(dino_models) == len(preset(name)["seeds"])
    assert len(blocks["ssrl"]) == expected["ssrl"]
    for inputs in blocks["ssrl"]:
        assert len([f for f in inputs if f in dino_models]) == 1, inputs


# --- the aggregation -------------------------------------------------------------------------

N_SPK, N_UTT, DIM, K, HOLD = 8, 4, 16, 8, 2
#: How well each system separates speakers (larger: better), per seed.
QUALITY = {"dino": 0.9, "round1": 1.0, "round2": 1.1, "p-cosine": 1.6, "p-cosine-no_nlm": 1.3,
           "p-margin": 1.2, "p-margin-no_nlm": 1.4}
#: Labels changed per epoch (epochs 1..4) and the last epoch's cluster count and NMI, per
#: SSRL run and seed: the numbers the hand computation below starts from.
CHANGED = {0: [0.0, 0.5, 0.3, 0.1], 1: [0.0, 0.2, 0.2, 0.2]}
END = {0: (6, 0.60), 1: (7, 0.55)}
START = (8, 0.50)  # the k-means clustering: clusters, NMI


def _row(name, kind, seed, folder, **extra):
    return {"name": name, "kind": kind, "label": name, "seed": seed, "dir": folder,
            "model": None, "history": f"{folder}/history.json",
            "compute": f"{folder}/compute.json", "labels": None, "eval": f"eval/{folder}",
            "metrics": f"eval/{folder}/metrics.json", "uses_labels": False, "variant": None,
            "round": None, "chain_epochs": None, "k": K, "epochs": 4, "switches": {},
            "quality": f"seed{seed}/cluster/dino_k{K}/quality.json", "chain": [], **extra}


def _systems() -> list[dict]:
    rows = []
    for s in (0, 1):
        rows.append(_row(f"dino-seed{s}", "dino", s, f"seed{s}/dino"))
        for r in (1, 2):
            rows.append(_row(f"iterative-e2-round{r}-seed{s}", "iterative", s,
                             f"seed{s}/iterative/e2/round{r}", round=r, chain_epochs=2))
        for v in ("full", "p-cosine-no_nlm", "p-margin", "p-margin-no_nlm"):
            rows.append(_row(f"ssrl-{v}-seed{s}", "ssrl", s, f"seed{s}/ssrl/{v}", variant=v))
    return rows


GRID = {"points": [{"name": "p", "steps_per_epoch": 2, "epochs": 4, "steps": 8,
                    "chain_epochs": 2,
                    "runs": {"margin": {"full": "p-margin", "no_nlm": "p-margin-no_nlm"},
                             "cosine": {"full": "full", "no_nlm": "p-cosine-no_nlm"}}}],
        "rounds": 2, "hold_epochs": HOLD, "k": K, "batch_size": 4, "train_utterances": 32}


def _quality_key(row: dict) -> str:
    if row["kind"] == "iterative":
        return f"round{row['round']}"
    if row["kind"] == "ssrl":
        return "p-cosine" if row["variant"] == "full" else row["variant"]
    return row["kind"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("results") / "fake"
    test = FakeTestSet(root.parent / "data", root / "store" / "test", N_SPK, N_UTT)
    centres = np.random.default_rng(1).standard_normal((N_SPK, DIM))
    cfg = {"experiment": "fake", "systems": _systems(), "test_store": "store/test",
           "trial_order": ["trials"], "scaling": GRID,
           "eval": {"bootstrap": {"replicates": 200, "seed": 0, "confidence": 0.95}}}
    for i, row in enumerate(cfg["systems"]):
        noise = np.random.default_rng(100 + i).standard_normal((len(test.utts), DIM))
        quality = QUALITY[_quality_key(row)] + 0.05 * row["seed"]
        test.score(root, row, quality * centres[test.speakers] + noise)
        s = row["seed"]
        history = [{"epoch": e, "loss": 1.0, "n_clusters": END[s][0] if e == 4 else 8,
                    "nmi": END[s][1] if e == 4 else 0.5, "changed": CHANGED[s][e - 1],
                    **({"dev/eer": 30.0 + s} if e in (2, 4) else {})} for e in range(1, 5)]
        (root / row["dir"]).mkdir(parents=True, exist_ok=True)
        (root / row["history"]).write_text(json.dumps(history))
        (root / row["compute"]).write_text(json.dumps({"steps": 8, "utterance_passes": 1.0}))
        quality = root / row["quality"]
        quality.parent.mkdir(parents=True, exist_ok=True)
        quality.write_text(json.dumps({"n_clusters": START[0], "nmi": START[1]}))
    write_scaling(cfg, root, root / "scaling")
    return root, cfg


def _eer(root: Path, folder: str) -> float:
    return json.loads((root / "eval" / folder / "metrics.json").read_text()
                      )["trials"]["trials"]["eer"]


def test_run_dynamics_counts_only_relabelling_epochs():
    history = [{"epoch": e, "changed": c, "n_clusters": n, "nmi": m}
               for e, c, n, m in ((1, 0.0, 8, 0.5), (2, 0.4, 8, 0.5), (3, 0.2, 7, 0.6))]
    history[1]["dev/eer"] = 12.0
    d = run_dynamics(history, {"n_clusters": 8, "nmi": 0.45}, 2)
    assert d == {"changed": pytest.approx(0.3), "clusters_start": 8, "clusters_end": 7,
                 "nmi_start": 0.45, "nmi_end": 0.6, "dev_eer": 12.0}
    assert run_dynamics([], None, 2)["changed"] is None


def test_each_rule_gets_its_eers_paired_differences_and_label_numbers(tree):
    root, _ = tree
    rows = {r["rule"]: r for r in read_csv(root / "scaling" / "scaling.csv")}
    assert list(rows) == ["cosine", "margin"]
    eer = {v: [_eer(root, f"seed{s}/{v}") for s in (0, 1)]
           for v in ("ssrl/full", "ssrl/p-cosine-no_nlm", "ssrl/p-margin",
                     "ssrl/p-margin-no_nlm", "iterative/e2/round2")}
    by_hand = {
        "cosine": {"eer": np.mean(eer["ssrl/full"]),
                   "ssrl_minus_round": np.mean(np.subtract(eer["ssrl/full"],
                                                           eer["iterative/e2/round2"])),
                   "no_nlm_minus_full": np.mean(np.subtract(eer["ssrl/p-cosine-no_nlm"],
                                                            eer["ssrl/full"]))},
        "margin": {"eer": np.mean(eer["ssrl/p-margin"]),
                   "ssrl_minus_round": np.mean(np.subtract(eer["ssrl/p-margin"],
                                                           eer["iterative/e2/round2"])),
                   "no_nlm_minus_full": np.mean(np.subtract(eer["ssrl/p-margin-no_nlm"],
                                                            eer["ssrl/p-margin"]))}}
    for rule, expected in by_hand.items():
        row = rows[rule]
        assert row["round_eer"] == pytest.approx(np.mean(eer["iterative/e2/round2"]))
        assert row["eer_sd"] == pytest.approx(np.std(
            eer["ssrl/full" if rule == "cosine" else "ssrl/p-margin"], ddof=1))
        for key, value in expected.items():
            assert row[key] == pytest.approx(value), (rule, key)
            assert row[f"{key}_ci_low"] <= row[key] <= row[f"{key}_ci_high"], (rule, key)
        # changed per relabelling (epochs >= 2): seed 0 (0.5+0.3+0.1)/3, seed 1 0.2
        assert (row["changed"], row["changed_min"], row["changed_max"]) == pytest.approx(
            (0.25, 0.2, 0.3))
        assert (row["clusters_start"], row["clusters_end"], row["clusters_removed"],
                row["clusters_removed_min"], row["clusters_removed_max"]) == pytest.approx(
            (8, 6.5, 1.5, 1, 2))
        assert (row["nmi_gain"], row["nmi_gain_min"], row["nmi_gain_max"]) == pytest.approx(
            (0.075, 0.05, 0.1))
        assert (row["dev_eer"], row["dev_eer_min"], row["dev_eer_max"]) == (30.5, 30, 31)
        assert (row["seeds"], row["utterances_per_cluster"], row["passes_per_epoch"],
                row["status"]) == (2, 4, 0.25, "ok")


def test_dynamics_csv_starts_each_run_at_its_k_means_clustering(tree):
    root, _ = tree
    rows = read_csv(root / "scaling" / "dynamics.csv")
    runs = {(r["rule"], r["run"], r["seed"]) for r in rows}
    assert len(runs) == 2 * 2 * 2  # rules x (with, without NLM) x seeds
    first = [r for r in rows if r["rule"] == "margin" and r["run"] == "no_nlm" and r["seed"] == 1]
    assert [r["epoch"] for r in first] == [0, 1, 2, 3, 4]
    assert (first[0]["n_clusters"], first[0]["nmi"]) == START
    assert [r["changed"] for r in first[1:]] == pytest.approx(CHANGED[1])


def test_the_markdown_marks_significance_and_the_figure_is_drawn(tree, tmp_path):
    root, _ = tree
    md = (root / "scaling" / "scaling.md").read_text()
    row = next(r for r in read_csv(root / "scaling" / "scaling.csv") if r["rule"] == "cosine")
    line = next(x for x in md.splitlines() if "| cosine |" in x)
    cells = [c.strip() for c in line.strip("|").split("|")]
    delta = cells[10]
    assert delta.startswith(f"{row['ssrl_minus_round']:.2f} [")
    lo, hi = row["ssrl_minus_round_ci_low"], row["ssrl_minus_round_ci_high"]
    assert delta.endswith("*") == (lo > 0 or hi < 0)
    assert cells[12] == "25.0 (20.0…30.0)" and cells[13] == "8 → 6.5 (6…7)"
    assert (root / "scaling" / "scaling.png").stat().st_size > 10_000
    # two experiments' folders merge into one table and figure, rows in the order given
    merged = merge_scaling([root / "scaling", root / "scaling"], tmp_path / "both")
    assert [r["rule"] for r in merged] == ["cosine", "margin"] * 2
    assert len(read_csv(tmp_path / "both" / "dynamics.csv")) == 2 * len(
        read_csv(root / "scaling" / "dynamics.csv"))
    assert (tmp_path / "both" / "scaling.png").is_file()
    with open(tmp_path / "both" / "scaling.csv") as f:
        assert len(list(csv.DictReader(f))) == 4


def test_a_run_that_failed_leaves_its_cells_empty_and_the_row_missing(tree, tmp_path):
    """What `--keep-going` writes to scaling/partial/ after a crashed variant: its cells empty,
    its row `missing`, the other rows and the figure as usual."""
    root, cfg = tree
    cfg = copy.deepcopy(cfg)
    cfg["systems"].append(_row("ssrl-gone-seed0", "ssrl", 0, "seed0/ssrl/gone", variant="gone"))
    cfg["scaling"]["points"][0]["runs"]["margin"]["no_nlm"] = "gone"
    rows = {r["rule"]: r for r in write_scaling(cfg, root, tmp_path / "partial")}
    assert rows["margin"]["status"] == "missing" and rows["cosine"]["status"] == "ok"
    assert rows["margin"].get("no_nlm_minus_full") is None
    assert rows["margin"]["ssrl_minus_round"] is not None
    line = next(x for x in (tmp_path / "partial" / "scaling.md").read_text().splitlines()
                if "| margin |" in x)
    assert [c.strip() for c in line.strip("|").split("|")][11] == "–"
    assert (tmp_path / "partial" / "scaling.png").is_file()
