"""The whole smoke workflow end to end (one shared run: the `smoke_run` fixture of conftest.py,
which also crashes and then fixes one ablation variant; test_faults.py checks that part)."""

from __future__ import annotations

import re

import mlflow
import pytest

pytestmark = pytest.mark.slow

MAIN_SYSTEMS = ["MFCC mean (crude baseline)", "DINO", "Iterative round 1", "Iterative round 2",
                "SSRL"]
VARIANTS = ["full", "no_nlm", "crash"]


def table_rows(markdown: str) -> dict[str, list[str]]:
    """First cell -> all cells, for every body row of every markdown table in the text."""
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and not set(line) <= set("|-:") and cells[-1] in ("ok", "failed"):
            rows[cells[0]] = cells
    return rows


def test_workflow_finishes(smoke_run):
    assert smoke_run.fixed.returncode == 0, smoke_run.fixed.stderr[-3000:]


def test_tables(smoke_run):
    tables = smoke_run.results / "tables"
    main = table_rows((tables / "main.md").read_text())
    assert list(main) == MAIN_SYSTEMS
    assert all(cells[-1] == "ok" for cells in main.values())
    for system in MAIN_SYSTEMS:  # EER of the default trial list, a percentage
        assert 0.0 <= float(main[system][1]) <= 100.0
    ablation_md = (tables / "ablation.md").read_text()
    ablation = table_rows(ablation_md)
    assert list(ablation) == VARIANTS
    assert all(cells[-1] == "ok" for cells in ablation.values())
    header = ablation_md.splitlines()[2]
    assert header.startswith("| variant | noisy_label_modeling | student_seconds | EER % (trials)")
    assert ablation["no_nlm"][1:3] == ["False", "1.0"]
    assert ablation["full"][1:3] == ["True", "1.0"]
    for name in ("main", "ablation"):
        assert (tables / f"{name}.csv").read_text().count("\n") == 1 + len(
            MAIN_SYSTEMS if name == "main" else VARIANTS)


def test_plots(smoke_run):
    for name in ("trajectories.png", "det.png"):
        data = (smoke_run.results / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_nothing_left_to_do(smoke_run):
    proc = smoke_run.run("-n")
    assert proc.returncode == 0, proc.stderr
    assert "Nothing to be done (all requested files are present and up to date)." in (
        proc.stdout + proc.stderr)


def test_lint(smoke_run):
    proc = smoke_run.run("--lint")
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def runs(smoke_run):
    client = mlflow.MlflowClient(f"sqlite:///{smoke_run.dir / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    assert exp is not None
    found = client.search_runs([exp.experiment_id], max_results=100)
    return client, found


def test_mlflow_runs(runs):
    client, found = runs
    by_name: dict[str, list] = {}
    for run in found:
        by_name.setdefault(run.info.run_name, []).append(run)
    expected = ["dino", "iterative-round1", "iterative-round2", "ssrl-full", "ssrl-no_nlm"]
    for name in expected:
        assert [r.info.status for r in by_name[name]] == ["FINISHED"], name
    # the crashed variant's run stays FAILED; the corrected variant is a new, finished run
    assert sorted(r.info.status for r in by_name["ssrl-crash"]) == ["FAILED", "FINISHED"]
    assert set(by_name) == {*expected, "ssrl-crash", "ablation-smoke"}

    full = by_name["ssrl-full"][0]
    assert full.data.params["ssrl.queue_len"] == "5"
    assert full.data.params["ssrl.noisy_label_modeling"] == "True"
    assert by_name["ssrl-no_nlm"][0].data.params["ssrl.noisy_label_modeling"] == "False"
    assert full.data.tags["stage"] == "ssrl" and full.data.tags["variant"] == "full"
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", full.data.tags["git_commit"])
    assert by_name["dino"][0].data.params["dino.epochs"] == "1"

    history = client.get_metric_history(full.info.run_id, "n_clusters")
    assert sorted(m.step for m in history) == [0, 1, 2]  # one per SSRL epoch
    assert all(1 <= m.value <= 6 for m in history)
    assert [m.step for m in client.get_metric_history(
        by_name["dino"][0].info.run_id, "epoch_loss")] == [0]


def test_ablation_runs_share_a_sweep_parent(runs):
    _, found = runs
    parents = [r for r in found if r.data.tags.get("sweep_parent") == "true"]
    assert [r.info.run_name for r in parents] == ["ablation-smoke"]
    children = [r for r in found if r.info.run_name.startswith("ssrl-")]
    assert len(children) == 4
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.tags["sweep"] == "ablation-smoke"
    rounds = [r for r in found if r.info.run_name.startswith("iterative-")]
    assert all("mlflow.parentRunId" not in r.data.tags for r in rounds)
