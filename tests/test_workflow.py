"""The whole smoke workflow end to end (one shared run: the `smoke_run` fixture of conftest.py,
which also crashes and then fixes one ablation variant; test_faults.py checks that part)."""

from __future__ import annotations

import re

import mlflow
import pytest

pytestmark = pytest.mark.slow

MAIN_SYSTEMS = ["MFCC statistics (classical floor)", "DINO", "Iterative round 1",
                "Iterative round 2", "SSRL", "SSRL no_nlm", "Supervised topline (true labels)"]
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
    main = table_rows((tables / "main.md").read_text().split("## Paired")[0])
    assert list(main) == MAIN_SYSTEMS
    assert all(cells[-1] == "ok" for cells in main.values())
    for system in MAIN_SYSTEMS:  # EER with its interval: "x [lo, hi]", a percentage
        value, interval = main[system][2].split(" [")
        lo, hi = (float(v) for v in interval.rstrip("]").split(", "))
        assert 0.0 <= lo <= float(value) <= hi <= 100.0
    ablation_md = (tables / "ablation.md").read_text()
    ablation = table_rows(ablation_md.split("## Paired")[0])
    assert list(ablation) == VARIANTS
    assert all(cells[-1] == "ok" for cells in ablation.values())
    header = [line for line in ablation_md.splitlines() if line.startswith("| variant")][0]
    assert header.startswith("| variant | seeds | noisy_label_modeling | scale | EER % |")
    assert ablation["no_nlm"][2:4] == ["False", "32.0"]
    assert ablation["full"][2:4] == ["True", "32.0"]
    assert "| no_nlm − full |" in ablation_md and "| crash − full |" in ablation_md
    for name in ("main", "ablation"):
        assert (tables / f"{name}.csv").read_text().count("\n") == 1 + len(
            MAIN_SYSTEMS if name == "main" else VARIANTS)


def test_one_number_everywhere(smoke_run, runs):
    """The table's EER of every system is its score step's number and its MLflow test/eer."""
    import json

    client, found = runs
    by_name = {r.info.run_name: r for r in found if r.info.status == "FINISHED"}
    for system, run in (("seed0/dino", "dino-seed0"), ("baseline", "baseline"),
                        ("seed0/iterative/e1/round2", "iterative-e1-round2-seed0"),
                        ("seed0/supervised", "supervised-seed0")):
        metrics = json.loads((smoke_run.results / "eval" / system / "metrics.json").read_text())
        eer = metrics["trials"]["trials"]["eer"]
        assert by_name[run].data.metrics["test/eer"] == eer, system
        for key in ("mindcf_0.01", "mindcf_0.05"):
            assert by_name[run].data.metrics[f"test/{key}"] == metrics["trials"]["trials"][key]


def test_plots(smoke_run):
    for name in ("dynamics.png", "trajectories.png", "det.png"):
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
    client = mlflow.MlflowClient(f"sqlite:///{smoke_run.results.parent / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    assert exp is not None
    found = client.search_runs([exp.experiment_id], max_results=100)
    return client, found


def test_mlflow_runs(runs):
    client, found = runs
    by_name: dict[str, list] = {}
    for run in found:
        by_name.setdefault(run.info.run_name, []).append(run)
    expected = ["baseline", "dino-seed0", "iterative-e1-round1-seed0", "iterative-e1-round2-seed0",
                "ssrl-full-seed0", "ssrl-no_nlm-seed0", "supervised-seed0"]
    for name in expected:
        assert [r.info.status for r in by_name[name]] == ["FINISHED"], name
    # the crashed variant's run stays FAILED; the corrected variant is a new, finished run
    assert sorted(r.info.status for r in by_name["ssrl-crash-seed0"]) == ["FAILED", "FINISHED"]
    assert set(by_name) == {*expected, "ssrl-crash-seed0", "ablation-smoke", "iterative-smoke"}

    full = by_name["ssrl-full-seed0"][0]
    assert full.data.params["ssrl.queue_len"] == "3"
    assert full.data.params["ssrl.noisy_label_modeling"] == "True"
    assert by_name["ssrl-no_nlm-seed0"][0].data.params["ssrl.noisy_label_modeling"] == "False"
    assert full.data.tags["stage"] == "ssrl" and full.data.tags["variant"] == "full"
    assert full.data.tags["seed"] == "0"
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", full.data.tags["git_commit"])
    # the k, epochs and seed each job actually used
    assert (full.data.params["job.k"], full.data.params["job.epochs"],
            full.data.params["job.seed"]) == ("6", "3", "0")
    round1 = by_name["iterative-e1-round1-seed0"][0]
    assert round1.data.params["job.epochs"] == "1" and round1.data.params["iterative.epochs"] == "1"
    assert "ssrl.epochs" in round1.data.params and "ssrl.queue_len" not in round1.data.params
    assert by_name["dino-seed0"][0].data.params["dino.epochs"] == "1"
    assert by_name["supervised-seed0"][0].data.tags["uses_labels"] == "True"

    history = client.get_metric_history(full.info.run_id, "labels/clusters")
    # the k-means start (epoch 0), then one per SSRL epoch, 1-based
    assert sorted(m.step for m in history) == [0, 1, 2, 3]
    assert all(1 <= m.value <= 6 for m in history)
    assert [m.step for m in client.get_metric_history(full.info.run_id, "dev/eer")] == [3]
    dino = by_name["dino-seed0"][0].info.run_id
    assert [m.step for m in client.get_metric_history(dino, "loss")] == [1]
    assert [m.step for m in client.get_metric_history(dino, "step/loss")] == [1]


def test_sweeps_have_parents(runs):
    _, found = runs
    parents = {r.info.run_name: r for r in found if r.data.tags.get("sweep_parent") == "true"}
    assert sorted(parents) == ["ablation-smoke", "iterative-smoke"]
    children = [r for r in found if r.info.run_name.startswith("ssrl-")]
    assert len(children) == 4
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parents["ablation-smoke"].info.run_id
        assert run.data.tags["sweep"] == "ablation-smoke"
    rounds = [r for r in found if r.info.run_name.startswith("iterative-e")]
    assert len(rounds) == 2 and all(r.data.tags["mlflow.parentRunId"] == parents[
        "iterative-smoke"].info.run_id for r in rounds)


def test_mlflow_experiment_opens_on_training_runs_and_parents_summarise(runs, smoke_run):
    client, found = runs
    exp = client.get_experiment_by_name("smoke")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "ssrl experiment `smoke`" in exp.tags["mlflow.note.content"]
    parents = {r.info.run_name: r for r in found if r.data.tags.get("sweep_parent") == "true"}
    ablation = client.get_run(parents["ablation-smoke"].info.run_id)
    assert set(ablation.data.metrics) == {"full/test/eer", "no_nlm/test/eer", "crash/test/eer"}
    assert ablation.data.tags["best"] in ("full", "no_nlm", "crash")
    files = {f.path for f in client.list_artifacts(ablation.info.run_id)}
    assert {"ablation.md", "ablation.csv", "ablation_paired.csv"} <= files
    rounds = client.get_run(parents["iterative-smoke"].info.run_id)
    assert set(rounds.data.metrics) == {"e1-round1/test/eer", "e1-round2/test/eer"}
    # every trained model is an artifact of its run; the export of the full SSRL model too
    full = next(r for r in found if r.info.run_name == "ssrl-full-seed0")
    assert [f.path for f in client.list_artifacts(full.info.run_id, "model")] == [
        "model/model.pt"]
    assert {f.path for f in client.list_artifacts(full.info.run_id, "export")} >= {
        "export/encoder.onnx", "export/encoder.ts", "export/export.json"}
    assert "trajectory.png" in {f.path for f in client.list_artifacts(full.info.run_id)}


def test_log_lines_name_their_job_and_hide_faiss_noise(smoke_run):
    logs = smoke_run.results / "logs"
    cluster = (logs / "seed0" / "cluster_dino_k6.log").read_text()
    assert "swigfaiss" not in cluster and "ModuleNotFoundError" not in cluster
    ssrl = (logs / "seed0" / "ssrl_noisy_label_modeling~False_scale~32.0.log").read_text()
    lines = [ln for ln in ssrl.splitlines() if " INFO " in ln]
    assert lines and all("[ssrl-no_nlm-seed0] INFO" in ln for ln in lines)
    assert any("epoch 3/3" in ln and "ETA" in ln for ln in lines)
    store = (logs / "wave_store_test.log").read_text()
    assert "[store/test] INFO" in store and "\r" not in store  # no progress bar in a log file


def test_a_second_run_gives_identical_numbers_and_weights(smoke_run, tmp_path):
    """Same commit, config and machine: every metric, history row (wall times aside), label
    file and model weight of a fresh second run equals the first run's, bit for bit."""
    import json
    import shutil

    import numpy as np
    import torch
    from conftest import SMOKE_CRASH, SMOKE_FIXED, SMOKE_OVERRIDES, copy_workflow, snakemake

    again = copy_workflow(tmp_path / "again")
    (again / "overrides.yaml").write_text(SMOKE_OVERRIDES.replace(SMOKE_CRASH, SMOKE_FIXED))
    proc = snakemake(again, "--cores", "2", "--configfile", "config/smoke.yaml",
                     "overrides.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = smoke_run.results, again / smoke_run.results.relative_to(smoke_run.dir)
    metrics = sorted(p.relative_to(first) for p in first.glob("eval/**/metrics.json"))
    assert len(metrics) == 8
    for rel in metrics:
        assert json.loads((first / rel).read_text()) == json.loads((second / rel).read_text())
    models = sorted(p.relative_to(first) for p in first.glob("seed0/**/model.pt"))
    assert len(models) == 7
    for rel in models:
        a, b = (torch.load(r / rel, weights_only=True)["encoder"] for r in (first, second))
        assert all(torch.equal(a[k], b[k]) for k in a), rel
        history = [[{k: v for k, v in row.items() if k != "seconds"}
                    for row in json.loads((r / rel.parent / "history.json").read_text())]
                   for r in (first, second)]
        assert history[0] == history[1], rel
    for rel in sorted(p.relative_to(first) for p in first.glob("seed0/**/labels.npz")):
        with np.load(first / rel) as a, np.load(second / rel) as b:
            assert np.array_equal(a["labels"], b["labels"]), rel
    shutil.rmtree(again)


def _num(text: str) -> float | None:
    return None if text in ("", "None") else float(text)


def test_mlflow_holds_every_number_of_the_tables(smoke_run, runs):
    """Every per-seed number of main.csv and ablation.csv is on its system's MLflow run under
    one name: test metrics with their intervals, pseudo labels (`labels/...`), cumulative
    compute, the gap closed, and the row's name as the `system` tag."""
    import csv

    client, found = runs
    by_name = {r.info.run_name: r for r in found if r.info.status == "FINISHED"}
    columns = {"EER %": "test/eer", "EER % CI low": "test/eer_low",
               "EER % CI high": "test/eer_high", "minDCF 0.01": "test/mindcf_0.01",
               "minDCF 0.01 CI low": "test/mindcf_0.01_low", "minDCF 0.05": "test/mindcf_0.05",
               "minDCF 0.05 CI high": "test/mindcf_0.05_high", "NMI": "labels/nmi",
               "clusters": "labels/clusters", "cumulative passes": "compute/cumulative_passes",
               "cumulative min": "compute/cumulative_minutes", "gap closed %": "test/gap_closed"}
    checked = 0
    for table in ("main", "ablation"):
        with open(smoke_run.results / "tables" / f"{table}.csv") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            if row["status"] != "ok":
                continue
            key = row.get("key") or f"ssrl-{row['variant']}"
            name = key if row["seed"] == "" else f"{key}-seed{row['seed']}"
            run = client.get_run(by_name[name].info.run_id)
            metrics = run.data.metrics
            if table == "main":  # the markdown table's row name
                assert run.data.tags["system"] == row["system"] + (
                    " (true labels)" if row["uses_labels"] == "True" else ""), name
            for column, metric in columns.items():
                if column not in row:
                    continue
                value = _num(row[column])
                if value is None:
                    assert metric not in metrics, (name, metric)
                else:
                    # the tables' numbers; those only the tables step logs are rounded to 4
                    # decimals (the UI prints every digit)
                    assert metrics[metric] == pytest.approx(value, rel=1e-9, abs=5e-5), (
                        name, metric)
                    checked += 1
    assert checked > 60
    # the topline has no pseudo labels; without noisy-label modelling there is no p_clean
    top = by_name["supervised-seed0"].data.metrics
    assert not any(k.startswith("labels/") for k in top)
    no_nlm = by_name["ssrl-no_nlm-seed0"].data.metrics
    assert "labels/nmi" in no_nlm and "labels/p_clean_mean" not in no_nlm
    assert "labels/p_clean_mean" in by_name["ssrl-full-seed0"].data.metrics
    # DINO's k-means start is its epoch 0
    dino = by_name["dino-seed0"].info.run_id
    assert [m.step for m in client.get_metric_history(dino, "labels/nmi")] == [0]


def test_rounds_share_a_running_epoch_axis_and_name_their_round(runs):
    client, found = runs
    by_name = {r.info.run_name: r for r in found if r.info.status == "FINISHED"}
    for r in (1, 2):
        run = by_name[f"iterative-e1-round{r}-seed0"]
        assert run.data.params["job.round"] == str(r)
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [r]


def test_params_say_what_ran_and_the_request_is_an_artifact(smoke_run, runs):
    import json

    import numpy as np

    from ssrl.data.loader import batches_per_epoch
    from ssrl.data.stores import WaveStore
    from ssrl.training.optim import teacher_momentum

    client, found = runs
    by_name = {r.info.run_name: r for r in found if r.info.status == "FINISHED"}
    for name in ("dino-seed0", "ssrl-full-seed0", "iterative-e1-round1-seed0"):
        params = by_name[name].data.params
        assert params["runtime.device"] == "cpu"  # requested: auto
        assert params["runtime.bf16"] == "False" and params["augment.on_gpu"] == "False"
        assert params["runtime.compile"] == "False"
    job = json.loads((smoke_run.results / "jobs" / "seed0" / "dino.json").read_text())
    assert job["runtime"]["device"] == "auto" and job["runtime"]["bf16"] is True
    dino = by_name["dino-seed0"]
    history = client.get_metric_history(dino.info.run_id, "step/teacher_momentum")
    assert float(dino.data.params["dino.momentum_start"]) == pytest.approx(
        history[0].value, abs=1e-6)
    # SSRL's teacher lag in epochs overrides momentum_start/end: the params give its schedule
    full = next(json.loads(p.read_text()) for p in (smoke_run.results / "jobs").glob(
        "seed0/ssrl/*.json") if json.loads(p.read_text())["job"]["name"] == "ssrl-full-seed0")
    c = full["ssrl"]
    steps = batches_per_epoch(len(WaveStore(smoke_run.results / "store" / "train")),
                              c["batch_size"], c["steps_per_epoch"])
    assert c["teacher_lag_epochs"]
    expected = np.asarray(teacher_momentum(c, steps, steps * c["epochs"]))
    params = by_name["ssrl-full-seed0"].data.params
    assert [float(params[f"ssrl.momentum_{k}"]) for k in ("start", "end")] == pytest.approx(
        [expected[0], expected[-1]], abs=1e-6)
    # the lag alone sets the schedule (momentum_* left null); the params log its momentum
    assert c["momentum_start"] is None and c["momentum_end"] is None
    assert by_name["iterative-e1-round1-seed0"].data.params["ssrl.momentum_start"] == \
        "unused (no EMA teacher)"
    files = {f.path for f in client.list_artifacts(dino.info.run_id, "config")}
    assert files == {"config/dino.json"}


def test_parents_carry_the_main_table_and_figures_and_views_open_on_test_eer(runs):
    import json

    client, found = runs
    parents = {r.info.run_name: r for r in found if r.data.tags.get("sweep_parent") == "true"}
    files = {f.path for f in client.list_artifacts(parents["iterative-smoke"].info.run_id)}
    assert {"main.md", "main.html", "dynamics.png", "det.png"} <= files
    files = {f.path for f in client.list_artifacts(parents["ablation-smoke"].info.run_id)}
    assert {"ablation.html", "trajectories.png"} <= files
    exp = client.get_experiment_by_name("smoke")
    view = json.loads(exp.tags["mlflow.sharedViewState.systems"])
    assert view["orderByKey"] == "metrics.`test/eer`" and view["orderByAsc"] is True
    assert view["selectedColumns"][:6] == [
        "tags.`system`", "metrics.`test/eer`", "metrics.`test/eer_low`",
        "metrics.`test/eer_high`", "metrics.`labels/nmi`", "metrics.`labels/clusters`"]
    # the filter keeps exactly the scored runs: no sweep parent, no failed run
    shown = client.search_runs([exp.experiment_id], view["searchFilter"], max_results=100)
    assert sorted(r.info.run_name for r in shown) == sorted(
        r.info.run_name for r in found if "test/eer" in r.data.metrics)
    assert all(r.info.status == "FINISHED" for r in shown) and len(shown) == 8
    ssrl = json.loads(exp.tags["mlflow.sharedViewState.ssrl"])
    assert [c.get("metricKey") for c in ssrl["compareRunCharts"]][0] == "test/eer"
    assert exp.tags["mlflow.experiment.primaryMetric.name"] == "test/eer"
