"""MLflow tracking against real stores: a sqlite file and a real `mlflow server` subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from ssrl.tracking.mlflow_run import (
    BUFFER_FILE,
    STATE_FILE,
    Tracker,
    flatten_params,
    git_commit,
    replay_buffer,
    resolve_tracking_uri,
)

MLFLOW_BIN = Path(sys.executable).parent / "mlflow"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _history(client: mlflow.MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def _buffer(state_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (state_dir / BUFFER_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One database for the module (creating its tables is the slow part)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


# ------------------------------------------------------------------------- pure helpers
def test_resolve_tracking_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, tmp_path / "res") == f"sqlite:///{tmp_path}/res/mlflow.db"
    assert resolve_tracking_uri("http://h:5000", tmp_path) == "http://h:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:1")
    assert resolve_tracking_uri("http://h:5000", tmp_path) == "http://env:1"


def test_flatten_params_nests_with_dots_and_stringifies():
    flat = flatten_params({"dino": {"lr": 0.25, "head": {"k": 65536}}, "q": None, "ks": [1, 2]})
    assert flat == {"dino.lr": "0.25", "dino.head.k": "65536", "q": "None", "ks": "[1, 2]"}


def test_git_commit_of_a_checkout_and_outside_git(tmp_path):
    assert git_commit(tmp_path) == "unknown"
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], cwd=repo, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()
    assert len(head) == 40
    assert git_commit(repo) == head


# ------------------------------------------------------------------------- sqlite store
def test_run_round_trip(sqlite_uri, tmp_path):
    job = tmp_path / "job"
    artifact = tmp_path / "summary.txt"
    artifact.write_text("eer 1.0\n")
    with Tracker(sqlite_uri, "roundtrip", "dino-c512", job, tags={"stage": "dino"},
                 params={"dino": {"lr": 0.25, "epochs": 150}, "seed": 1}) as tr:
        for step, loss in enumerate([4.0, 3.5, 3.25]):
            tr.log_metrics({"loss": loss}, step=step)
        tr.log_metrics({"eer": 0.02}, step=2)
        tr.log_artifact(artifact, artifact_path="tables")
    client = mlflow.MlflowClient(sqlite_uri)
    run = client.get_run(tr.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "dino-c512"
    assert run.data.params == {"dino.lr": "0.25", "dino.epochs": "150", "seed": "1"}
    assert run.data.tags["stage"] == "dino"
    assert run.data.tags["git_commit"] == git_commit()
    assert _history(client, tr.run_id, "loss") == [(0, 4.0), (1, 3.5), (2, 3.25)]
    assert _history(client, tr.run_id, "eer") == [(2, 0.02)]
    assert [a.path for a in client.list_artifacts(tr.run_id, "tables")] == ["tables/summary.txt"]
    # artifacts of a sqlite store sit next to the database, not under the cwd
    db_dir = Path(sqlite_uri[len("sqlite:///"):]).parent
    assert (db_dir / "mlartifacts" / "roundtrip" / tr.run_id / "artifacts" / "tables"
            / "summary.txt").read_text() == "eer 1.0\n"
    assert json.loads((job / STATE_FILE).read_text())["run_id"] == tr.run_id
    assert not (job / BUFFER_FILE).exists()


def test_exception_marks_run_failed_and_propagates(sqlite_uri, tmp_path):
    with pytest.raises(ValueError, match="boom"), \
            Tracker(sqlite_uri, "status", "crash", tmp_path / "a") as tr:
        raise ValueError("boom")
    with pytest.raises(KeyboardInterrupt), \
            Tracker(sqlite_uri, "status", "interrupted", tmp_path / "b") as tr2:
        raise KeyboardInterrupt
    client = mlflow.MlflowClient(sqlite_uri)
    assert client.get_run(tr.run_id).info.status == "FAILED"
    assert client.get_run(tr2.run_id).info.status == "KILLED"


def test_resume_continues_the_same_run(sqlite_uri, tmp_path, caplog):
    job = tmp_path / "job"
    with pytest.raises(RuntimeError), \
            Tracker(sqlite_uri, "resume", "ssrl", job, params={"lr": 0.1, "q": 5}) as first:
        first.log_metrics({"loss": 2.0}, step=0)
        raise RuntimeError("killed")
    client = mlflow.MlflowClient(sqlite_uri)
    assert client.get_run(first.run_id).info.status == "FAILED"
    with Tracker(sqlite_uri, "resume", "ssrl", job, params={"lr": 0.2, "q": 5}) as second:
        assert client.get_run(second.run_id).info.status == "RUNNING"
        second.log_metrics({"loss": 1.0}, step=1)
    assert second.run_id == first.run_id
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert _history(client, first.run_id, "loss") == [(0, 2.0), (1, 1.0)]
    # params are immutable in MLflow: the first value stays, the new one is kept as a tag
    assert run.data.params == {"lr": "0.1", "q": "5"}
    assert run.data.tags["changed_param.lr"] == "0.2"
    assert "params changed" in caplog.text
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_resume_replays_an_old_buffer_but_not_its_end_status(sqlite_uri, tmp_path):
    # A job whose store went away at exit leaves metrics and its final status buffered; when
    # it is resumed, the metrics are replayed but the old status must not end the new session.
    job = tmp_path / "job"
    with Tracker(sqlite_uri, "resume-buffer", "ssrl", job) as first:
        first.log_metrics({"loss": 3.0}, step=0)
    now = int(time.time() * 1000)
    lines = [{"op": "metrics", "metrics": {"loss": 2.0}, "step": 1, "time": now},
             {"op": "end", "status": "KILLED", "time": now}]
    (job / BUFFER_FILE).write_text("".join(json.dumps(r) + "\n" for r in lines))
    client = mlflow.MlflowClient(sqlite_uri)
    with Tracker(sqlite_uri, "resume-buffer", "ssrl", job) as second:
        assert not (job / BUFFER_FILE).exists()
        assert client.get_run(second.run_id).info.status == "RUNNING"
        second.log_metrics({"loss": 1.0}, step=2)
    assert second.run_id == first.run_id
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert _history(client, first.run_id, "loss") == [(0, 3.0), (1, 2.0), (2, 1.0)]


def test_runs_of_a_sweep_share_one_parent(sqlite_uri, tmp_path):
    ids = []
    for variant in ("no-nlm", "q1"):
        with Tracker(sqlite_uri, "sweeps", variant, tmp_path / variant,
                     tags={"variant": variant}, parent_run_name="ablation") as tr:
            ids.append(tr.run_id)
    client = mlflow.MlflowClient(sqlite_uri)
    exp = client.get_experiment_by_name("sweeps")
    parents = client.search_runs([exp.experiment_id], "attributes.run_name = 'ablation'")
    assert len(parents) == 1
    assert parents[0].data.tags["sweep_parent"] == "true"
    for run_id in ids:
        tags = client.get_run(run_id).data.tags
        assert tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert tags["sweep"] == "ablation"


def test_rejected_record_is_dropped_not_buffered(sqlite_uri, tmp_path, caplog):
    job = tmp_path / "job"
    with Tracker(sqlite_uri, "rejects", "r", job) as tr:
        tr.log_metrics({"bad\x00name": 1.0}, step=0)  # invalid metric name: MLflow says 400
        tr.log_metrics({"loss": 3.0}, step=0)
    client = mlflow.MlflowClient(sqlite_uri)
    assert "rejected" in caplog.text
    assert list(client.get_run(tr.run_id).data.metrics) == ["loss"]
    assert not (job / BUFFER_FILE).exists()


def test_unreachable_server_buffers_everything_and_replays(sqlite_uri, tmp_path, caplog):
    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    job = tmp_path / "job"
    with Tracker(dead, "offline", "r", job, tags={"stage": "ssrl"}, params={"k": 8000},
                 retry_interval=0) as tr:
        tr.log_metrics({"loss": 5.0}, step=0)
        tr.log_metrics({"loss": 4.0}, step=1)
    assert tr.run_id is None
    assert [r["op"] for r in _buffer(job)] == ["tags", "params", "metrics", "metrics", "end"]
    assert "records kept in" in caplog.text
    # a later replay (here into another store, as `uri` allows) creates the run and sends all
    assert replay_buffer(job, uri=sqlite_uri)
    assert not (job / BUFFER_FILE).exists()
    client = mlflow.MlflowClient(sqlite_uri)
    run_id = json.loads((job / STATE_FILE).read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"k": "8000"}
    assert run.data.tags["stage"] == "ssrl"
    assert _history(client, run_id, "loss") == [(0, 5.0), (1, 4.0)]


# ------------------------------------------------------------------------- server mode
class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 that a test can stop and start again."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start the server; a no-op while it runs (a second server would orphan the first)."""
        if self.running:
            return
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job workers
        env.pop("MLFLOW_TRACKING_URI", None)
        log_file = open(self.root / "server.log", "a")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [str(MLFLOW_BIN), "server", "--backend-store-uri",
             f"sqlite:///{self.root / 'db.sqlite'}", "--artifacts-destination",
             str(self.root / "art"), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"],
            stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log_file.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited:\n{(self.root / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        pytest.fail("mlflow server did not answer /health within 60 s")

    def stop(self) -> None:
        """Stop the server's process group (only what start() launched) and free the port."""
        if self.proc is None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the uvicorn child may outlive its parent briefly
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    break
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # leftovers of the group, if any
        self.proc = None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    srv = MlflowServer(tmp_path_factory.mktemp("server"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_server_mode_round_trip(server, tmp_path, monkeypatch):
    artifact = tmp_path / "model.txt"
    artifact.write_text("weights\n")
    with Tracker(server.uri, "remote", "dino", tmp_path / "job", tags={"dataset": "synth"},
                 params={"dino": {"lr": 0.25}}) as tr:
        tr.log_metrics({"loss": 2.0}, step=0)
        tr.log_metrics({"loss": 1.5}, step=1)
        tr.log_artifact(artifact)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    runs = mlflow.search_runs(experiment_names=["remote"])
    assert list(runs["run_id"]) == [tr.run_id]
    row = runs.iloc[0]
    assert row["status"] == "FINISHED"
    assert row["params.dino.lr"] == "0.25"
    assert row["tags.dataset"] == "synth"
    assert row["metrics.loss"] == 1.5
    client = mlflow.MlflowClient(server.uri)
    assert _history(client, tr.run_id, "loss") == [(0, 2.0), (1, 1.5)]
    assert [a.path for a in client.list_artifacts(tr.run_id)] == ["model.txt"]


def test_server_down_mid_run_is_buffered_then_replayed(server, tmp_path, caplog):
    job = tmp_path / "job"
    with Tracker(server.uri, "outage", "ssrl", job, retry_interval=0) as tr:
        tr.log_metrics({"loss": 1.0}, step=0)
        server.stop()
        tr.log_metrics({"loss": 0.5}, step=1)  # must not raise
        tr.log_metrics({"nmi": 0.9}, step=1)
        records = _buffer(job)
        assert [(r["op"], r["step"], r["metrics"]) for r in records] == [
            ("metrics", 1, {"loss": 0.5}), ("metrics", 1, {"nmi": 0.9})]
        assert "unreachable" in caplog.text
        server.start()  # same port, same backend store
        tr.log_metrics({"loss": 0.25}, step=2)  # the next call replays the buffer first
        assert not (job / BUFFER_FILE).exists()
    client = mlflow.MlflowClient(server.uri)
    run = client.get_run(tr.run_id)
    assert run.info.status == "FINISHED"
    assert "incomplete" not in run.data.tags
    assert _history(client, tr.run_id, "loss") == [(0, 1.0), (1, 0.5), (2, 0.25)]
    assert _history(client, tr.run_id, "nmi") == [(1, 0.9)]


def test_artifacts_survive_moving_the_results_folder(tmp_path):
    """MLflow keeps artifact locations as absolute paths; after the results folder moved,
    `relocate_artifacts` (run by `python -m ssrl mlflow-ui`) points them at the new place."""
    import shutil

    from ssrl.tracking.mlflow_store import relocate_artifacts

    old = tmp_path / "results"
    artifact = tmp_path / "table.md"
    artifact.write_text("| a |\n")
    with Tracker(f"sqlite:///{old / 'mlflow.db'}", "exp", "job", old / "job") as tr:
        tr.log_artifact(artifact)
    run_id = json.loads((old / "job" / STATE_FILE).read_text())["run_id"]
    new = tmp_path / "archive" / "run 1"
    new.parent.mkdir()
    shutil.move(old, new)
    assert relocate_artifacts(new / "mlflow.db") == 2  # the experiment and its run
    client = mlflow.MlflowClient(f"sqlite:///{new / 'mlflow.db'}")
    assert client.get_run(run_id).info.artifact_uri.startswith((new / "mlartifacts").as_uri())
    got = client.download_artifacts(run_id, "table.md", str(tmp_path))
    assert Path(got).read_text() == "| a |\n"
    assert relocate_artifacts(new / "mlflow.db") == 0  # nothing moved since


def test_mlflow_ui_serves_the_moved_store_without_mlflow_job_workers(tmp_path, monkeypatch):
    """`python -m ssrl mlflow-ui` relocates the artifacts, then becomes `mlflow ui` on the
    folder's store, with MLflow 3's GenAI job runner (eight ~280 MB workers) switched off."""
    from ssrl.cli import main

    old = tmp_path / "results"
    with Tracker(f"sqlite:///{old / 'mlflow.db'}", "exp", "job", old / "job"):
        pass
    new = tmp_path / "moved"
    old.rename(new)
    called = {}

    def fake_execve(path, argv, env):
        called.update(path=path, argv=argv, env=env)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execve", fake_execve)
    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    with pytest.raises(SystemExit):
        main(["mlflow-ui", "--results", str(new), "--port", "5123"])
    assert called["path"] == sys.executable
    assert called["argv"][1:6] == ["-m", "mlflow", "ui", "--backend-store-uri",
                                   f"sqlite:///{new / 'mlflow.db'}"]
    assert called["argv"][-2:] == ["--port", "5123"]
    assert called["env"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    client = mlflow.MlflowClient(f"sqlite:///{new / 'mlflow.db'}")
    assert client.get_experiment_by_name("exp").artifact_location.startswith(new.as_uri())


def test_mlflow_ui_refuses_a_busy_port_in_one_line(tmp_path):
    """`mlflow ui` on a busy port failed after start-up and exited 0; now: one line, exit 2."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "ssrl", "mlflow-ui", "--results",
                               str(tmp_path), "--port", str(port)], capture_output=True,
                              text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"ssrl mlflow-ui: error: --port {port}: 127.0.0.1:{port} is not free (Address already "
        "in use); is an MLflow UI already running? choose another --port"]


# ------------------------------------------------------------- a full disk under the store
def _limited(limit: int):
    """preexec_fn: files may grow to `limit` bytes (RLIMIT_FSIZE), as on a nearly full disk;
    a write beyond fails with EFBIG instead of killing the process."""
    def apply() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


#: Room for the job's own small files but not for a new MLflow database (about 1 MB).
FULL_DISK = 300_000


def _ssrl(*argv: str, limit: int | None = None) -> subprocess.CompletedProcess:
    from conftest import ssrl_env

    return subprocess.run([sys.executable, "-m", "ssrl", *argv], capture_output=True, text=True,
                          timeout=300, check=False, env=ssrl_env(),
                          preexec_fn=_limited(limit) if limit else None)


def test_store_left_half_created_by_a_full_disk_is_rebuilt(tmp_path):
    """MLflow creates a new database migration by migration; a full disk in between leaves
    one it cannot open again ("table ... already exists"). ssrl rebuilds it (it holds no runs)
    and then tracks as usual."""
    db = tmp_path / "mlflow.db"
    make = ("import sys; from mlflow import MlflowClient; "
            "MlflowClient(tracking_uri=sys.argv[1]).search_experiments()")
    for limit in (200_000, 600_000):  # two places MLflow's own creation breaks off
        db.unlink(missing_ok=True)
        made = subprocess.run([sys.executable, "-c", make, f"sqlite:///{db}"],
                              capture_output=True, text=True, timeout=300, check=False,
                              preexec_fn=_limited(limit))
        assert made.returncode != 0 and db.is_file()
        reopened = subprocess.run([sys.executable, "-c", make, f"sqlite:///{db}"],
                                  capture_output=True, text=True, timeout=300, check=False)
        assert "already exists" in reopened.stderr  # MLflow alone cannot open it any more
        state = tmp_path / f"job{limit}"
        with Tracker(f"sqlite:///{db}", "exp", "job", state) as tr:
            tr.log_metrics({"test/eer": 12.5}, step=0)
        assert not (state / BUFFER_FILE).exists()
        run_id = json.loads((state / STATE_FILE).read_text())["run_id"]
        run = mlflow.MlflowClient(f"sqlite:///{db}").get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.metrics["test/eer"] == 12.5
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".mlflow.db.")) \
        == [".mlflow.db.lock"]


def test_full_disk_buffers_every_record_and_mlflow_sync_sends_them(tmp_path, make_wav):
    """Issue 19: with the disk full while the store is first created, a job (here the floor's
    `baseline`) and the `score` that puts `test/eer` on its run (annotate_run) keep everything
    in their buffer and leave no half-made database; once there is room, `mlflow-sync` sends
    every number and nothing stays buffered."""
    data = tmp_path / "data"
    for i, utt in enumerate("abcd"):
        make_wav(data / f"{utt}.wav", 1.0, seed=i)
    (data / "wav.scp").write_text("".join(f"{u} {u}.wav\n" for u in "abcd"))
    (data / "utt2spk").write_text("a s1\nb s1\nc s2\nd s2\n")
    (data / "trials").write_text("a b target\na c nontarget\nc d target\nb d nontarget\n")
    results = tmp_path / "results"
    store = results / "store"
    assert _ssrl("wave-store", "--data", str(data), "--out", str(store)).returncode == 0
    job = results / "job.json"
    job.write_text(json.dumps({"job": {"results_dir": str(results), "experiment": "exp",
                                       "name": "floor", "stage": "baseline"}}))
    run_dir, emb = results / "baseline", results / "eval" / "emb.npz"
    metrics = results / "eval" / "metrics.json"

    base = _ssrl("baseline", "--job", str(job), "--store", str(store), "--out", str(emb),
                 "--run-dir", str(run_dir), limit=FULL_DISK)
    assert base.returncode == 0, base.stderr  # tracking never fails the job
    score = _ssrl("score", "--job", str(job), "--embeddings", str(emb), "--store", str(store),
                  "--replicates", "0", "--run-dir", str(run_dir), "--out", str(metrics),
                  limit=FULL_DISK)
    assert score.returncode == 0, score.stderr
    assert "MLflow run of" in score.stderr and "not updated yet" in score.stderr
    assert not (results / "mlflow.db").exists()  # no half-created database
    assert not list(results.glob(".mlflow.db.*.tmp"))
    ops = [r["op"] for r in _buffer(run_dir)]
    assert ops[0] == "tags" and ops[-2:] == ["end", "metrics"]

    still = _ssrl("mlflow-sync", "--results", str(results), limit=FULL_DISK)
    assert still.returncode == 0
    assert f"still buffered in {run_dir / BUFFER_FILE}" in still.stderr
    listed = _ssrl("mlflow-sync", "--list", "--results", str(results))  # what onerror runs
    assert f"{len(ops)} tracking record(s) still buffered in {run_dir / BUFFER_FILE}" \
        in listed.stderr
    assert not (results / "mlflow.db").exists()

    synced = _ssrl("mlflow-sync", "--results", str(results))  # space freed
    assert synced.returncode == 0, synced.stderr
    assert "nothing buffered" in synced.stderr
    assert not (run_dir / BUFFER_FILE).exists()
    run_id = json.loads((run_dir / STATE_FILE).read_text())["run_id"]
    run = mlflow.MlflowClient(f"sqlite:///{results / 'mlflow.db'}").get_run(run_id)
    eer = json.loads(metrics.read_text())["trials"]["trials"]["eer"]
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "baseline"
    assert run.data.metrics == {"test/eer": eer, **{
        k: v for k, v in run.data.metrics.items() if k != "test/eer"}}
    assert {"test/eer", "test/mindcf_0.01", "test/mindcf_0.05"} <= set(run.data.metrics)
    assert "incomplete" not in run.data.tags


def test_a_sweep_summary_that_cannot_be_sent_waits_for_mlflow_sync(tmp_path, caplog):
    """`tables` puts each sweep's summary on its parent run; when the store cannot be written
    the summary waits in the tables folder, and `mlflow-sync` sends it once it can."""
    from ssrl.tracking.mlflow_run import SWEEP_BUFFER_FILE, summarize_sweep, sync_buffers

    results = tmp_path / "results"
    db = results / "mlflow.db"
    db.mkdir(parents=True)  # something in the way of the database: it cannot be created
    tables = results / "tables"
    tables.mkdir()
    (tables / "ablation.md").write_text("| variant | EER |\n")
    uri = f"sqlite:///{db}"
    for eer in (9.0, 7.5):  # a second summary of the same sweep replaces the first
        assert not summarize_sweep(uri, "exp", "ablation-exp", {"full/test/eer": eer},
                                   {"best": "full"}, [tables / "ablation.md"],
                                   buffer_dir=tables)
    waiting = _buffer_lines(tables / SWEEP_BUFFER_FILE)
    assert [r["metrics"] for r in waiting] == [{"full/test/eer": 7.5}]
    assert sync_buffers(results) == [(tables / SWEEP_BUFFER_FILE, 1)]

    db.rmdir()  # the way is free again; the sweep's runs exist
    with Tracker(uri, "exp", "ssrl-full", results / "full", parent_run_name="ablation-exp"):
        pass
    assert sync_buffers(results) == []
    client = mlflow.MlflowClient(uri)
    parent = client.search_runs([client.get_experiment_by_name("exp").experiment_id],
                                "tags.sweep_parent = 'true'")[0]
    assert parent.data.metrics == {"full/test/eer": 7.5} and parent.data.tags["best"] == "full"
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["ablation.md"]


def _buffer_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_concurrent_writers_on_a_new_store_lose_nothing(tmp_path):
    """Four jobs start at once on a store that does not exist yet (one creates it under the
    lock, atomically; the others wait and use it) and each logs 100 metrics: all arrive."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = ("import sys; from pathlib import Path; from ssrl.tracking.mlflow_run import "
              "Tracker\nwith Tracker(sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]),"
              " retry_interval=0) as tr:\n    for i in range(100):\n"
              "        tr.log_metrics({'m': float(i)}, step=i)\n")
    jobs = [(f"exp{i % 2}", f"job{i}", tmp_path / f"job{i}") for i in range(4)]
    procs = [subprocess.Popen([sys.executable, "-c", script, uri, exp, name, str(state)],
                              stderr=subprocess.PIPE, text=True) for exp, name, state in jobs]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    client = mlflow.MlflowClient(uri)
    for exp, name, state in jobs:
        assert not (state / BUFFER_FILE).exists()
        run_id = json.loads((state / STATE_FILE).read_text())["run_id"]
        assert _history(client, run_id, "m") == [(i, float(i)) for i in range(100)]
        info = client.get_run(run_id).info
        assert (info.status, info.run_name) == ("FINISHED", name)
        assert info.experiment_id == client.get_experiment_by_name(exp).experiment_id
    assert not list(tmp_path.glob(".mlflow.db.*.tmp"))
