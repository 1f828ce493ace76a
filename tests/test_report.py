"""Tables and plots from a results tree made by the real score step: a systems table with two
seeds, one crashed variant, the classical floor and the supervised topline. The tables' numbers
are the score step's numbers (one number everywhere) with their intervals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FakeTestSet

from ssrl.report.plots import plot_history, write_plots
from ssrl.report.tables import write_tables

N_SPK, N_UTT, DIM = 8, 4, 16
# How well each system separates speakers (larger: better), per seed.
QUALITY = {"baseline": {None: 0.6}, "dino": {0: 0.9, 1: 1.0}, "round1": {0: 1.1, 1: 1.2},
           "round2": {0: 1.3, 1: 1.3}, "full": {0: 1.6, 1: 1.5}, "no_nlm": {0: 1.2, 1: 1.4},
           "queue_1": {0: None, 1: 1.0}, "supervised": {0: 2.5, 1: 2.4}}


def _row(name, kind, label, seed, folder, **extra):
    trained = kind != "baseline"
    return {"name": name, "kind": kind, "label": label, "seed": seed, "dir": folder,
            "model": f"{folder}/model.pt" if trained else None,
            "history": f"{folder}/history.json" if trained else None,
            "compute": f"{folder}/compute.json" if trained else None, "labels": None,
            "eval": f"eval/{folder}", "metrics": f"eval/{folder}/metrics.json",
            "uses_labels": kind == "supervised", "variant": None, "round": None, "k": 8,
            "epochs": 4, "switches": {}, "quality": None, "chain": [], **extra}


def systems() -> list[dict]:
    rows = [_row("baseline", "baseline", "MFCC statistics (classical floor)", None, "baseline")]
    for s in (0, 1):
        dino = f"dino-seed{s}"
        rows.append(_row(dino, "dino", "DINO", s, f"seed{s}/dino", chain=[dino],
                         quality=f"seed{s}/cluster/dino_k8/quality.json"))
        for r in (1, 2):
            chain = [dino] + [f"iterative-round{i}-seed{s}" for i in range(1, r + 1)]
            rows.append(_row(f"iterative-round{r}-seed{s}", "iterative", f"Iterative round {r}",
                             s, f"seed{s}/iterative/round{r}", round=r, chain=chain,
                             quality=f"seed{s}/cluster/dino_k8/quality.json"))
        for v, switches in (("full", {"queue_len": 5, "noisy_label_modeling": True}),
                            ("no_nlm", {"queue_len": 5, "noisy_label_modeling": False}),
                            ("queue_1", {"queue_len": 1, "noisy_label_modeling": True})):
            name = f"ssrl-{v}-seed{s}"
            rows.append(_row(name, "ssrl", "SSRL" if v == "full" else f"SSRL {v}", s,
                             f"seed{s}/ssrl/{v}", variant=v, switches=switches,
                             chain=[dino, name],
                             quality=f"seed{s}/cluster/dino_k8/quality.json"))
        rows.append(_row(f"supervised-seed{s}", "supervised", "Supervised topline", s,
                         f"seed{s}/supervised", chain=[dino, f"supervised-seed{s}"]))
    return rows


def _key(row: dict) -> str:
    return {"iterative": f"round{row['round']}", "ssrl": row["variant"]}.get(row["kind"],
                                                                               row["kind"])


@pytest.fixture(scope="module")
def tree(tmp_path_factory, ) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("results") / "fake"
    test = FakeTestSet(root.parent / "data", root / "store" / "test", N_SPK, N_UTT)
    centres = np.random.default_rng(1).standard_normal((N_SPK, DIM))
    cfg = {"experiment": "fake", "data": {"source": "builtin"}, "systems": systems(),
           "test_store": "store/test", "trial_order": ["trials"],
           "eval": {"bootstrap": {"replicates": 200, "seed": 0, "confidence": 0.95}}}
    for i, row in enumerate(cfg["systems"]):
        quality = QUALITY[_key(row)][row["seed"]]
        if quality is None:
            continue  # crashed: no files at all
        noise = np.random.default_rng(100 + i).standard_normal((len(test.utts), DIM))
        test.score(root, row, quality * centres[test.speakers] + noise)
        if row["kind"] == "baseline":
            continue
        seed = row["seed"]  # the seeds end in different places, so per-seed rows can differ
        history = [{"epoch": e, "loss": 3.0 - 0.1 * e, "n_clusters": 8 - (e > 2) - seed,
                    "nmi": 0.5 + 0.05 * e + 0.01 * seed, "p_clean_mean": 0.8, "seconds": 15.0}
                   for e in range(1, 5)]
        (root / row["dir"]).mkdir(parents=True, exist_ok=True)
        (root / row["history"]).write_text(json.dumps(history))
        (root / row["compute"]).write_text(json.dumps(
            {"wall_seconds": 60.0 * (1 + (row["kind"] == "dino")) + 6.0 * seed, "epochs": 4,
             "utterance_passes": 4.0}))
        if row.get("quality"):
            (root / row["quality"]).parent.mkdir(parents=True, exist_ok=True)
            (root / row["quality"]).write_text(json.dumps({"nmi": 0.45, "n_clusters": 8}))
    write_tables(cfg, root, root / "tables")
    write_plots(cfg, root, root / "plots")
    return root, cfg


def _metrics(root: Path, folder: str) -> dict:
    return json.loads((root / "eval" / folder / "metrics.json").read_text())["trials"]["trials"]


def md_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and not set(line) <= set("|-: "):
            rows[cells[0]] = cells
    return rows


def test_single_seed_cells_are_the_score_steps_numbers(tree):
    root, _ = tree
    main = md_rows((root / "tables" / "main.md").read_text())
    m = _metrics(root, "baseline")
    lo, hi = m["ci"]["eer"]
    assert main["MFCC statistics (classical floor)"][2] == f"{m['eer']:.1f} [{lo:.1f}, {hi:.1f}]"
    assert main["MFCC statistics (classical floor)"][1] == "1"


def test_seed_rows_give_mean_and_sd_and_csv_has_every_seed(tree):
    root, _ = tree
    main = md_rows((root / "tables" / "main.md").read_text())
    eers = [_metrics(root, f"seed{s}/ssrl/full")["eer"] for s in (0, 1)]
    cell = main["SSRL"][2]
    assert main["SSRL"][1] == "2"
    assert cell.startswith(f"{np.mean(eers):.1f} ± {np.std(eers, ddof=1):.1f} [")
    with open(root / "tables" / "main.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["key"] == "ssrl-full"]
    assert [r["seed"] for r in rows] == ["0", "1", "mean"]
    assert float(rows[0]["EER %"]) == pytest.approx(eers[0])
    assert float(rows[0]["EER % CI low"]) == pytest.approx(
        _metrics(root, "seed0/ssrl/full")["ci"]["eer"][0])
    assert float(rows[2]["EER %"]) == pytest.approx(np.mean(eers))
    assert float(rows[2]["EER % CI low"]) < float(rows[2]["EER %"]) < float(
        rows[2]["EER % CI high"])


def test_each_seed_row_has_its_own_labels_compute_and_gap(tree):
    root, _ = tree
    with open(root / "tables" / "main.csv") as f:
        rows = {r["seed"]: r for r in csv.DictReader(f) if r["key"] == "ssrl-full"}
    assert [float(rows[s]["clusters"]) for s in ("0", "1", "mean")] == [7, 6, 6.5]
    assert [float(rows[s]["NMI"]) for s in ("0", "1")] == pytest.approx([0.7, 0.71])
    assert [float(rows[s]["stage min"]) for s in ("0", "1")] == pytest.approx([1.0, 1.1])
    m = {k: _metrics(root, f"seed1/{k}")["eer"] for k in ("ssrl/full", "dino", "supervised")}
    gap = 100 * (m["dino"] - m["ssrl/full"]) / (m["dino"] - m["supervised"])
    assert float(rows["1"]["gap closed %"]) == pytest.approx(gap)
    with open(root / "tables" / "ablation.csv") as f:
        rows = {r["seed"]: r for r in csv.DictReader(f) if r["variant"] == "no_nlm"}
    assert [float(rows[s]["clusters"]) for s in ("0", "1", "mean")] == [7, 6, 6.5]
    assert rows["1"]["queue_len"] == "5"


def test_paired_comparisons_and_gap_closed(tree):
    root, _ = tree
    text = (root / "tables" / "main.md").read_text()
    paired = md_rows(text.split("## Paired comparisons")[1])
    # the paper's questions first, then the floor comparisons
    assert list(paired)[1:6] == ["SSRL − Iterative round 2", "SSRL − DINO",
                                 "SSRL no_nlm − SSRL", "Iterative round 2 − DINO",
                                 "DINO − MFCC statistics (classical floor)"]
    m = {k: [_metrics(root, f"seed{s}/{k}")["eer"] for s in (0, 1)]
         for k in ("ssrl/full", "dino", "supervised")}
    delta = np.mean(np.subtract(m["ssrl/full"], m["dino"]))
    assert paired["SSRL − DINO"][1].startswith(f"{delta:.1f} [")
    with open(root / "tables" / "main_paired.csv") as f:
        rows = {(r["comparison"], r["metric"]): r for r in csv.DictReader(f)}
    row = rows[("SSRL − DINO", "eer")]
    assert float(row["delta"]) == pytest.approx(delta) and row["n_seeds"] == "2"
    assert row["excludes_zero"] == str(float(row["ci_high"]) < 0 or float(row["ci_low"]) > 0)
    verdict = paired["SSRL − DINO"][-1]  # names the better side of the comparison
    assert verdict == ("no" if row["excludes_zero"] == "False" else
                       "yes: SSRL better" if delta < 0 else "yes: DINO better")
    gap = np.mean([100 * (d - s) / (d - t) for d, s, t in zip(m["dino"], m["ssrl/full"],
                                                            m["supervised"])])
    with open(root / "tables" / "main.csv") as f:
        mean_row = next(r for r in csv.DictReader(f)
                        if r["key"] == "ssrl-full" and r["seed"] == "mean")
    assert float(mean_row["gap closed %"]) == pytest.approx(gap)
    main = md_rows(text.split("## Paired comparisons")[0])
    assert main["SSRL"][7].startswith(f"{gap:.0f} [")
    assert main["Supervised topline (true labels)"][-1] == "ok"


def test_crashed_variant_is_failed_not_hidden(tree):
    root, _ = tree
    ablation = (root / "tables" / "ablation.md").read_text()
    rows = md_rows(ablation.split("## Paired comparisons")[0])
    assert rows["queue_1"][-1] == "failed" and rows["full"][-1] == "ok"
    assert rows["no_nlm"][2:4] == ["False", "5"] and rows["queue_1"][2:4] == ["True", "1"]
    paired = md_rows(ablation.split("## Paired comparisons")[1])
    delta = np.mean([_metrics(root, f"seed{s}/ssrl/no_nlm")["eer"]
                     - _metrics(root, f"seed{s}/ssrl/full")["eer"] for s in (0, 1)])
    assert paired["no_nlm − full"][1].startswith(f"{delta:.1f} [")
    with open(root / "tables" / "ablation_paired.csv") as f:
        row = next(r for r in csv.DictReader(f)
                   if r["comparison"] == "no_nlm − full" and r["metric"] == "eer")
    assert float(row["delta"]) == pytest.approx(delta)
    significant = float(row["ci_high"]) < 0 or float(row["ci_low"]) > 0
    assert paired["no_nlm − full"][-1] == ("no" if not significant else
                                           "yes: no_nlm better" if delta < 0 else
                                           "yes: full better")


def test_compute_columns_add_up_the_chain(tree):
    root, _ = tree
    main = md_rows((root / "tables" / "main.md").read_text().split("## Paired")[0])
    header = list(md_rows((root / "tables" / "main.md").read_text())["system"])
    col = header.index("cumulative passes")
    assert main["Iterative round 2"][col] == "12.0"  # DINO 4 + rounds 4 + 4
    assert main["SSRL"][col] == "8.0"


def test_plots_written(tree):
    root, _ = tree
    for name in ("dynamics.png", "trajectories.png", "det.png"):
        data = (root / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plot_history_skips_missing_keys(tmp_path):
    plot_history([{"epoch": 1, "loss": 1.0, "seconds": 1.0}], tmp_path / "t.png", "x")
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_html_page_escapes_and_renders_code_spans():
    from ssrl.report.tables import html_page

    intro = "`*`: the interval excludes 0 <always>"
    page = html_page("t <1>", [("h", intro, ["c"], [{"c": 1.25}])])
    assert "<p><code>*</code>: the interval excludes 0 &lt;always&gt;</p>" in page
    assert "<title>t &lt;1&gt;</title>" in page and "`" not in page


def test_minDCF_columns_of_about_one_become_one_line():
    """Every system's minDCF ≈ 1 with overlapping intervals: one sentence, no column; a
    system below the floor, or intervals that do not overlap, keep the column."""
    from ssrl.report.comparisons import Estimate
    from ssrl.report.results import Group
    from ssrl.report.tables import flat_mindcf, flat_note

    class Comp:
        def __init__(self, values):
            self.values = values

        def summary(self, group, name):
            v = self.values[group.key]
            return {"eer": Estimate(20.0, 19.0, 21.0),
                    "mindcf_0.01": Estimate(v[0], v[0] - 0.01, min(v[0] + 0.01, 1.0)),
                    "mindcf_0.05": Estimate(v[1], v[1] - 0.2, min(v[1] + 0.01, 1.0))}

    groups = [Group(k, k, "dino") for k in ("a", "b")]
    flat = flat_mindcf(Comp({"a": (0.999, 0.985), "b": (1.0, 0.80)}), groups, ["trials"])
    assert flat == {"mindcf_0.01": (0.999, 1.0)}  # 0.05: b is at 0.80, the column stays
    assert flat_mindcf(Comp({"a": (0.96, 0.99), "b": (1.0, 0.99)}), groups,
                       ["trials"]) == {"mindcf_0.05": (0.99, 0.99)}  # 0.01: [0.95, 0.97]
    # against [0.99, 1.0]: the intervals do not overlap
    note = flat_note(flat, "main.csv")
    assert "minDCF 0.01 between 0.999 and 1.000 for every system" in note and "main.csv" in note


def test_main_table_defines_gap_closed(tree):
    root, _ = tree
    text = (root / "tables" / "main.md").read_text()
    assert "DINO→topline gap closed % = 100 × (EER of DINO − EER of the system) / (EER of " \
           "DINO − EER of the topline)" in text
    assert "gap closed" in (root / "tables" / "main.html").read_text()


# --- captions against figures ------------------------------------------------------------------

def _caption(name: str) -> str:
    return " ".join((Path(__file__).resolve().parents[1] / "workflow" / "report" /
                     f"{name}.rst").read_text().split())


def _legend(fig) -> dict[str, object]:
    legend = fig.legends[0]
    return {t.get_text(): h for t, h in zip(legend.get_texts(), legend.legend_handles)}


def test_trajectories_caption_matches_the_figure(tree, tmp_path):
    from ssrl.report.plots import plot_trajectories
    from ssrl.report.results import load_groups

    root, cfg = tree
    fig = plot_trajectories(load_groups(cfg, root), tmp_path / "t.png")
    caption = _caption("trajectories")
    nmi_axis = fig.axes[1]
    rounds = [ln for ln in nmi_axis.get_lines() if ln.get_label().startswith("iterative rounds")]
    assert "dark grey squares on a dotted line" in caption
    assert len(rounds) == 1 and rounds[0].get_marker() == "s" and rounds[0].get_linestyle() == ":"
    assert "dashed grey line is DINO's k-means" in caption and "drawn under" in caption
    for ax in fig.axes[:4]:
        dino = [ln for ln in ax.get_lines() if ln.get_label() == "DINO k-means (epoch 0)"]
        variants = [ln for ln in ax.get_lines() if ln.get_label().startswith("SSRL ")]
        for ref in dino:
            assert ref.get_linestyle() == "--"
            assert all(v.get_zorder() > ref.get_zorder() for v in variants)
    assert set(_legend(fig)) >= {"SSRL full", "SSRL no_nlm", "DINO k-means (epoch 0)"}
    # "the title says 'one seed' or how many": the tree has two seeds
    assert 'the title says "one seed" or how many' in caption
    assert fig._suptitle.get_text() == "SSRL ablation trajectories (mean over 2 seeds)"


def test_det_caption_matches_the_figure_and_every_point_is_inside(tree, tmp_path):
    from matplotlib.lines import Line2D

    from ssrl.report.plots import plot_det
    from ssrl.report.results import load_groups

    root, cfg = tree
    groups = load_groups(cfg, root)
    curves = {}
    for g in groups.values():
        m = g.members[0]
        if m.ok and (g.kind != "ssrl" or g.row["variant"] == "full"):
            entry = m.list_metrics("trials")
            from ssrl.evaluation.scoring import read_scores

            curves[g.label] = read_scores(root / m.row["eval"] / entry["scores"])
    fig = plot_det(curves, tmp_path / "det.png", "DET curves on the test trials, seed 0")
    caption = _caption("det")
    assert "open circle: p_target 0.01, open square: 0.05" in caption
    legend = _legend(fig)
    for label, marker in (("minDCF point, p_target 0.01", "o"),
                          ("minDCF point, p_target 0.05", "s")):
        assert legend[label].get_marker() == marker
        assert legend[label].get_markerfacecolor() == "none"
    for system in ("MFCC statistics", "DINO", "Iterative round 2", "SSRL", "Supervised"):
        assert any(t.startswith(system) for t in legend), system
    ax = fig.axes[0]
    assert ax.get_title() == "DET curves on the test trials, seed 0"
    points = [ln for ln in ax.get_lines() if isinstance(ln, Line2D) and len(ln.get_xdata()) == 1]
    assert len(points) == 2 * len(curves)  # every system's two minDCF points ...
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    for ln in points:  # ... inside the axes
        assert x0 <= ln.get_xdata()[0] <= x1 and y0 <= ln.get_ydata()[0] <= y1


def test_dynamics_caption_matches_the_figure(tree, tmp_path):
    from ssrl.report.plots import plot_dynamics
    from ssrl.report.results import load_groups

    root, cfg = tree
    fig = plot_dynamics(load_groups(cfg, root), tmp_path / "d.png")
    caption = _caption("dynamics")
    assert "one line per seed" in caption and "Epoch 0 is the k-means start" in caption
    assert set(_legend(fig)) == {"SSRL seed 0", "SSRL seed 1"}
    for ax in fig.axes[:2]:
        assert all(ln.get_xdata()[0] == 0 for ln in ax.get_lines())
