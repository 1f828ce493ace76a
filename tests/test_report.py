"""Tables and plots from a hand-made results tree (2 rounds, 3 SSRL variants, one crashed)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from ssrl.report.tables import parse_grid_dir, plot_history, write_plots, write_tables

K = 8
VARIANTS = {
    "full": "noisy_label_modeling~True_queue_len~5",
    "no_nlm": "noisy_label_modeling~False_queue_len~5",
    "queue_1": "noisy_label_modeling~True_queue_len~1",  # never finished: no files
}
CFG = {
    "config": {"experiment": "fake", "data": {"source": "builtin"}, "cluster": {"k": K},
               "iterative": {"rounds": 2},
               "ablation": {"variants": [{"name": "no_nlm", "noisy_label_modeling": False},
                                         {"name": "queue_1", "queue_len": 1}]}},
    "variants": VARIANTS,
    "systems": ["dino", "iterative/round1", "iterative/round2",
                *(f"ssrl/{d}" for d in VARIANTS.values())],
}
# EER per system on the single trial list "trials" (exact values checked in the tables).
EER = {"dino": 20.5, "iterative/round1": 15.25, "iterative/round2": 12.0,
       f"ssrl/{VARIANTS['full']}": 9.75, f"ssrl/{VARIANTS['no_nlm']}": 11.5}
# Wall seconds and utterance passes of each stage.
COMPUTE = {"dino": (600.0, 10.0), "iterative/round1": (120.0, 4.0),
           "iterative/round2": (180.0, 4.0), f"ssrl/{VARIANTS['full']}": (300.0, 6.0),
           f"ssrl/{VARIANTS['no_nlm']}": (240.0, 6.0)}


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _scores_file(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lines = [f"e{i} t{i} {'target' if i % 2 else 'nontarget'} {rng.normal(i % 2, 1.0):.6f}"
             for i in range(60)]
    path.write_text("\n".join(lines) + "\n")


def _ssrl_history(n_epochs: int, nmi_end: float, clusters_end: int) -> list[dict]:
    rows = []
    for e in range(n_epochs):
        rows.append({"epoch": e, "loss": 3.0 - e * 0.1, "n_clusters": float(K - e),
                     "p_clean_mean": 0.8, "seconds": 10.0,
                     "nmi": 0.5 + 0.05 * e, "purity": 0.6})
        if e % 2 == 1:
            rows[-1]["eer"] = 20.0 - e
    rows[-1].update({"nmi": nmi_end, "n_clusters": float(clusters_end)})
    return rows


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "results" / "fake"
    for i, (system, eer) in enumerate(EER.items()):
        _write(root / "eval" / system / "metrics.json",
               {"norm": "none", "trials": {"trials": {
                   "eer": eer, "mindcf_0.01": 0.9, "mindcf_0.05": 0.5 + i / 100,
                   "n_trials": 60, "n_target": 30}}})
        _scores_file(root / "eval" / system / "scores_trials.txt", i)
        seconds, passes = COMPUTE[system]
        _write(root / system / "compute.json",
               {"wall_seconds": seconds, "epochs": 4, "utterance_passes": passes})
    _write(root / "dino" / "history.json",
           [{"epoch": e, "loss": 5.0, "seconds": 1.0} for e in range(3)])
    for r in (1, 2):
        _write(root / f"iterative/round{r}" / "history.json",
               [{"epoch": e, "loss": 2.0, "n_clusters": float(K), "p_clean_mean": 1.0,
                 "nmi": 0.6 + 0.1 * r, "seconds": 1.0} for e in range(4)])
    _write(root / f"ssrl/{VARIANTS['full']}" / "history.json", _ssrl_history(6, 0.875, 6))
    _write(root / f"ssrl/{VARIANTS['no_nlm']}" / "history.json", _ssrl_history(6, 0.8125, 7))
    for source, nmi, n in (("dino", 0.625, 8), ("round1", 0.75, 8), ("round2", 0.8, 8)):
        _write(root / "cluster" / f"{source}_k{K}" / "quality.json",
               {"k": K, "n_iter": 5, "converged": True, "nmi": nmi, "purity": 0.7,
                "inverse_purity": 0.7, "hungarian_acc": 0.6, "n_clusters": n})
    _write(root / "baseline.json", {"system": "mfcc_mean", "eer": 33.5, "mindcf_0.01": 1.0,
                                    "mindcf_0.05": 0.99, "n_trials": 60, "n_target": 30})
    return root


def _csv_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path) as f:
        return {row.get("system") or row["variant"]: row for row in csv.DictReader(f)}


def test_parse_grid_dir_with_underscored_keys():
    keys = ["noisy_label_modeling", "queue_len", "dropout"]
    assert parse_grid_dir("dropout~0.5_noisy_label_modeling~False_queue_len~5", keys) == {
        "dropout": 0.5, "noisy_label_modeling": False, "queue_len": 5}
    assert parse_grid_dir("full~True") == {"full": True}
    assert parse_grid_dir("plain") == {}


def test_main_table_cells(root: Path, tmp_path: Path):
    out = tmp_path / "tables"
    write_tables(CFG, root, out)
    rows = _csv_rows(out / "main.csv")
    assert list(rows) == ["MFCC mean (crude baseline)", "DINO", "Iterative round 1",
                          "Iterative round 2", "SSRL"]
    assert float(rows["MFCC mean (crude baseline)"]["EER % (trials)"]) == 33.5
    assert float(rows["SSRL"]["EER % (trials)"]) == 9.75
    assert float(rows["Iterative round 1"]["minDCF 0.05 (trials)"]) == 0.51
    # NMI: DINO and round r from the clustering they were trained on, SSRL from its history.
    assert float(rows["DINO"]["NMI"]) == 0.625
    assert float(rows["Iterative round 1"]["NMI"]) == 0.625
    assert float(rows["Iterative round 2"]["NMI"]) == 0.75
    assert float(rows["SSRL"]["NMI"]) == 0.875
    assert rows["SSRL"]["clusters"] == "6"
    # Cumulative compute from scratch: round 2 = DINO + round 1 + round 2; SSRL = DINO + SSRL.
    assert float(rows["Iterative round 2"]["cumulative min"]) == (600 + 120 + 180) / 60
    assert float(rows["Iterative round 2"]["cumulative passes"]) == 18.0
    assert float(rows["SSRL"]["stage min"]) == 5.0
    assert float(rows["SSRL"]["cumulative min"]) == 15.0
    assert float(rows["SSRL"]["cumulative passes"]) == 16.0
    assert {r["status"] for r in rows.values()} == {"ok"}
    md = (out / "main.md").read_text()
    assert "| Iterative round 2 | 12.000 |" in md
    assert "| SSRL | 9.750 |" in md
    assert "Published" not in md  # only for VoxCeleb


def test_ablation_table_marks_missing_variant_failed(root: Path, tmp_path: Path):
    out = tmp_path / "tables"
    write_tables(CFG, root, out)
    rows = _csv_rows(out / "ablation.csv")
    assert list(rows) == ["full", "no_nlm", "queue_1"]
    assert rows["no_nlm"]["noisy_label_modeling"] == "False"
    assert rows["queue_1"]["queue_len"] == "1"
    assert float(rows["no_nlm"]["EER % (trials)"]) == 11.5
    assert float(rows["no_nlm"]["NMI"]) == 0.8125
    assert rows["no_nlm"]["clusters"] == "7"
    assert float(rows["no_nlm"]["stage min"]) == 4.0
    assert [rows[n]["status"] for n in rows] == ["ok", "ok", "failed"]
    assert rows["queue_1"]["EER % (trials)"] == ""
    md = (out / "ablation.md").read_text()
    assert "| queue_1 |" in md and "failed" in md


def test_voxceleb_tables_quote_published_numbers(root: Path, tmp_path: Path):
    cfg = json.loads(json.dumps(CFG))
    cfg["config"]["data"]["source"] = "voxceleb"
    write_tables(cfg, root, tmp_path / "t")
    md = (tmp_path / "t" / "main.md").read_text()
    published = md.split("Published (quoted, not measured here)")[1]
    assert "| WeSpeaker DINO ECAPA c1024, 150 epochs | 2.627 | 2.665 | 4.644 |" in published
    assert "| sslsv DINO ECAPA-1024 | 2.82 | – | – |" in published


def test_plots_written(root: Path, tmp_path: Path):
    out = tmp_path / "plots"
    write_plots(CFG, root, out)
    for name in ("trajectories.png", "det.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert sorted(p.name for p in out.iterdir()) == ["det.png", "trajectories.png"]


def test_plot_history_skips_missing_keys(tmp_path: Path):
    path = tmp_path / "h.png"
    plot_history([{"epoch": 0, "loss": 1.0, "n_clusters": 5.0},
                  {"epoch": 1, "loss": 0.9, "n_clusters": 4.0, "eer_O": 12.0}], path, "run")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_missing_round_is_failed_and_has_no_partial_total(root: Path, tmp_path: Path):
    (root / "eval/iterative/round2/metrics.json").unlink()
    (root / "iterative/round2/compute.json").unlink()
    write_tables(CFG, root, tmp_path / "t")
    rows = _csv_rows(tmp_path / "t" / "main.csv")
    assert rows["Iterative round 2"]["status"] == "failed"
    assert rows["Iterative round 2"]["EER % (trials)"] == ""
    assert rows["Iterative round 2"]["cumulative min"] == ""  # never a silently partial sum
    assert float(rows["Iterative round 1"]["cumulative min"]) == 12.0
    assert rows["SSRL"]["status"] == "ok"
