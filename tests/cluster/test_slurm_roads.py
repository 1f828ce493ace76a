"""The smoke preset through the real SLURM cluster and the PostgreSQL-backed MLflow server, end
to end: `snakemake --profile profiles/slurm` on the CPU partition, with its DINO job cancelled
(scancel) and an SSRL job requeued (scontrol requeue) in the middle of an epoch, logging to the
team server; against the same preset run by the local profile into the default SQLite store.
One SLURM run and one local run serve every comparison here."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from cluster_support import (
    CONFIGS,
    EXPERIMENT,
    EXTRA,
    SLURM_ARGS,
    SNAKEMAKE,
    freeze_mid_epoch,
    metrics_files,
    new_workflow,
    say,
    ssrl_env,
)

from ssrl.tracking.mlflow_run import BUFFER_FILE, STATE_FILE

FULL = "ssrl/noisy_label_modeling~True"


# Session scope, like local_run: pytest sets up wider-scoped fixtures first, and the SLURM
# run must start before the tests wait for the local one.
@pytest.fixture(scope="session")
def slurm_run(tmp_path_factory, slurm, mlflow_server, local_run_started) -> dict:
    """The smoke preset through profiles/slurm, logging to the PostgreSQL-backed server. Its
    DINO job is cancelled and its full SSRL job requeued, each frozen right after a mid-epoch
    checkpoint (the position it must resume from)."""
    run = new_workflow(tmp_path_factory.mktemp("slurm") / "wf", EXTRA)
    run.experiment = EXPERIMENT
    started = time.monotonic()
    run.start(*SLURM_ARGS, *CONFIGS, MLFLOW_TRACKING_URI=mlflow_server.uri)
    r = run.results

    job, epoch, step = freeze_mid_epoch(slurm, "dino", "", r / "seed0/dino/checkpoint/last.pt",
                                        run)
    subprocess.run(["scancel", job.id], check=True)
    say(f"scancel of DINO's SLURM job {job.id} at epoch {epoch} step {step}")
    cancelled = {"job": job.id, "epoch": epoch, "step": step}

    ssrl_dir = next(iter(r.glob("seed0/ssrl/noisy_label_modeling~True*")), None)
    while ssrl_dir is None:  # the folder appears when its job starts
        time.sleep(0.5)
        assert run.proc.poll() is None, run.log.read_text()[-5000:]
        ssrl_dir = next(iter(r.glob("seed0/ssrl/noisy_label_modeling~True*")), None)
    job, epoch, step = freeze_mid_epoch(slurm, "ssrl", "_True",
                                        ssrl_dir / "checkpoint/last.pt", run)
    subprocess.run(["scontrol", "requeue", job.id], check=True)
    # A requeued job waits SLURM's requeue delay (about two minutes) before it is eligible;
    # an administrator, as here, can release it at once once it is pending again.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(
            j.id == job.id and j.state == "PENDING" for j in slurm.jobs()):
        time.sleep(0.5)
    subprocess.run(["scontrol", "update", f"JobId={job.id}", "StartTime=now"], check=True)
    say(f"scontrol requeue of SSRL's SLURM job {job.id} at epoch {epoch} step {step}")
    requeued = {"job": job.id, "epoch": epoch, "step": step, "dir": ssrl_dir}

    text = run.wait()
    job_ids = re.findall(r"submitted with SLURM jobid (\d+)", text)
    say(f"profiles/slurm: smoke preset done in {time.monotonic() - started:.0f} s, "
        f"{len(job_ids)} SLURM jobs: {' '.join(job_ids)}")
    return {"run": run, "log": text, "job_ids": job_ids, "cancelled": cancelled,
            "requeued": requeued}


def test_slurm_smoke_metrics_equal_the_local_run(slurm_run, local_run):
    """Every metrics.json of the SLURM run (interrupted twice) equals the local run's."""
    local, remote = metrics_files(local_run.results), metrics_files(slurm_run["run"].results)
    assert len(local) == 7 and sorted(local) == sorted(remote)  # 6 trained systems + floor
    different = [name for name in local if local[name] != remote[name]]
    assert different == []
    eer = {Path(k).parent.name: round(v["trials"]["trials"]["eer"], 6)
           for k, v in remote.items()}
    say(f"metrics.json identical in {len(local)} systems (local vs SLURM); EER: {eer}")
    # every SLURM job asked for what it uses: nothing pended on a 2-CPU node, no GPU asked for
    assert len(slurm_run["job_ids"]) >= 30
    assert "gres" not in slurm_run["log"].lower()


def _encoder(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["encoder"]


def _same_model(a: Path, b: Path) -> bool:
    ea, eb = _encoder(a), _encoder(b)
    return list(ea) == list(eb) and all(torch.equal(ea[k], eb[k]) for k in ea)


def test_scancel_then_retry_resumes_from_the_checkpoint(slurm_run, local_run):
    cut = slurm_run["cancelled"]
    r = slurm_run["run"].results
    assert f"SLURM-job '{cut['job']}' failed, SLURM status is: 'CANCELLED'" in slurm_run["log"]
    line = f"resuming DINO at epoch {cut['epoch']} step {cut['step']}"
    log = (r / "logs/seed0/dino.log").read_text()
    assert line in log, log[-3000:]
    say(f"after scancel, the retried DINO job logged: {line!r}")
    assert _same_model(r / "seed0/dino/model.pt", local_run.results / "seed0/dino/model.pt")


def test_requeue_resumes_from_the_checkpoint(slurm_run, local_run):
    cut = slurm_run["requeued"]
    r = slurm_run["run"].results
    line = f"resuming ssrl at epoch {cut['epoch']} step {cut['step']}"
    log = next(iter((r / "logs/seed0").glob("ssrl_noisy_label_modeling~True*.log"))).read_text()
    assert line in log, log[-3000:]
    say(f"after scontrol requeue, SLURM job {cut['job']} logged: {line!r}")
    name = cut["dir"].name
    assert _same_model(cut["dir"] / "model.pt", local_run.results / "seed0/ssrl" / name
                       / "model.pt")


def _runs(uri: str) -> dict[str, mlflow.entities.Run]:
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None, f"no experiment {EXPERIMENT} in {uri}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return {run.info.run_name: run for run in runs}


def _results(run: mlflow.entities.Run) -> dict[str, float]:
    """A run's final metrics, without the ones that measure time."""
    return {k: v for k, v in run.data.metrics.items()
            if not k.startswith("compute/") and "seconds" not in k}


def test_postgres_runs_equal_the_sqlite_runs(slurm_run, local_run, mlflow_server):
    sqlite = _runs(f"sqlite:///{local_run.dir / 'results' / 'mlflow.db'}")
    postgres = _runs(mlflow_server.uri)
    assert sorted(postgres) == sorted(sqlite) and len(sqlite) >= 9  # 7 jobs, 2 sweep parents
    for name, run in postgres.items():
        assert run.info.status == "FINISHED", name
        assert run.data.params == sqlite[name].data.params, name
        assert _results(run) == _results(sqlite[name]), name
        assert "incomplete" not in run.data.tags, name
    full = postgres["ssrl-full-seed0"]
    assert full.data.metrics["test/eer"] == sqlite["ssrl-full-seed0"].data.metrics["test/eer"]
    say(f"PostgreSQL-backed server {mlflow_server.uri}: {len(postgres)} runs in experiment "
        f"{EXPERIMENT}; params and final metrics equal the SQLite store's "
        f"(ssrl-full-seed0 test/eer {full.data.metrics['test/eer']:.6f})")


def test_server_killed_mid_run_loses_nothing(local_run, mlflow_server, tmp_path):
    """A training job logging to the server while the server is killed and started again:
    its records are buffered and replayed, and the run equals one logged without an outage."""
    r = local_run.results
    cfg = json.loads((r / "jobs/seed0/dino.json").read_text())
    cfg["dino"].update(epochs=2, steps_per_epoch=3)
    cfg["job"].update(experiment=f"{EXPERIMENT}-outage", results_dir=str(tmp_path))
    job = tmp_path / "dino.json"
    job.write_text(json.dumps(cfg))

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "ssrl", "dino", "--job", str(job), "--train",
                str(r / "store/train"), "--noise", str(r / "store/noise"), "--rir",
                str(r / "store/rir"), "--out", str(out)]

    sqlite = f"sqlite:///{tmp_path / 'mlflow.db'}"
    subprocess.run(command(tmp_path / "ref"), env=ssrl_env(MLFLOW_TRACKING_URI=sqlite),
                   check=True, capture_output=True, timeout=600)
    out, log = tmp_path / "cut", tmp_path / "cut.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(command(out), stdout=f, stderr=subprocess.STDOUT,
                                env=ssrl_env(MLFLOW_TRACKING_URI=mlflow_server.uri))
    try:
        _wait_for(lambda: (out / STATE_FILE).exists() and "run_id" in
                  json.loads((out / STATE_FILE).read_text() or "{}"), proc, log)
        proc.send_signal(signal.SIGSTOP)  # its run is open on the server: kill the server
        mlflow_server.kill()
        say("MLflow server killed (SIGKILL) while a DINO job logs to it")
        proc.send_signal(signal.SIGCONT)
        _wait_for(lambda: (out / BUFFER_FILE).exists(), proc, log)
        proc.send_signal(signal.SIGSTOP)  # records are buffering: bring the server back
        mlflow_server.start()
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        proc.kill() if proc.poll() is None else None
    text = log.read_text()
    assert "unreachable" in text and "buffered records sent" in text, text[-3000:]
    assert not (out / BUFFER_FILE).exists()
    replayed = re.search(r"reachable again: (\d+) buffered records sent", text).group(1)

    run_id = json.loads((out / STATE_FILE).read_text())["run_id"]
    client, ref_client = mlflow.MlflowClient(mlflow_server.uri), mlflow.MlflowClient(sqlite)
    ref_id = json.loads((tmp_path / "ref" / STATE_FILE).read_text())["run_id"]
    run, ref = client.get_run(run_id), ref_client.get_run(ref_id)
    assert run.info.status == "FINISHED" and "incomplete" not in run.data.tags
    assert run.data.params == ref.data.params
    assert _results(run) == _results(ref)
    for key in ("step/loss", "loss"):
        history = [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        assert sorted(history) == sorted(
            (m.step, m.value) for m in ref_client.get_metric_history(ref_id, key)), key
        assert history
    say(f"server outage: {replayed} buffered records replayed; the PostgreSQL run equals "
        "the one logged without an outage")


def _wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"job ended early:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)


@pytest.mark.parametrize("extra, env, message", [
    ("runtime: {partition: nosuch}\n", {},
     "runtime.partition: no partition 'nosuch' on this SLURM cluster (sinfo lists: cpu)"),
    ("", {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
     "MLflow tracking URI http://127.0.0.1:9 is unreachable"),
])
def test_bad_cluster_input_is_one_clear_line(extra, env, message, slurm, tmp_path):
    run = new_workflow(tmp_path / "wf", extra)
    proc = subprocess.run([SNAKEMAKE, "-n", *SLURM_ARGS, *CONFIGS], cwd=run.dir,
                          env=ssrl_env(**env), capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr  # snakemake prints its errors on standard output
    assert proc.returncode != 0
    lines = [line for line in out.splitlines() if message in line]
    assert len(lines) == 1, out[-3000:]
    say(f"bad input, one line: {lines[0]}")
