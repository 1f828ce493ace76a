"""Experiment tracking with MLflow: a job's run. With `mlflow_store` (opening and repairing a
store, relocating artifacts, the saved UI views) the only modules of the project that import
mlflow.

A `Tracker` is one MLflow run per workflow job; a job that is not tracked gets `NULL_TRACKER`
(the same interface, doing nothing), never None. Three things make it safe for long jobs:

- Resume. The run id is kept in `<state_dir>/mlflow_run.json`; a job restarted after a crash
  or kill continues the SAME run (status set back to RUNNING, params already logged skipped)
  -- but only when the job's fingerprint (its config and inputs, see
  `ssrl.training.checkpoints`) is the one the run was opened with. A job whose values changed
  opens a new run, so a run's params always describe the result it holds.
- Never fail training. When the store cannot be reached (tracking server down, network gone,
  a locked database) every record - metrics, params, tags, artifact paths, the final status -
  is appended to `<state_dir>/mlflow_buffer.jsonl` and replayed in order on a later call or at
  exit; the file is removed once everything is sent. If it still cannot be sent at exit, the
  file stays (a warning names it) and `replay_buffer(state_dir, uri)` sends it later.
  Records the store rejects as invalid (HTTP 4xx) are dropped with a warning instead, so one
  bad record cannot block the buffer for good.
- Fail fast. While the tracker talks to the store it sets `MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`
  and `MLFLOW_HTTP_REQUEST_TIMEOUT=5` (restored afterwards), and after a failure it waits
  `retry_interval` seconds before contacting the store again, so an outage costs at most a
  few seconds per attempt instead of MLflow's minutes of retries on every log call.

Runs of one sweep (an ablation grid, the iterative rounds) share a parent run: with
`parent_run_name` the tracker finds or creates a run of that name in the experiment (created
already FINISHED - it is only a folder for its children), sets `mlflow.parentRunId` and the tag
`sweep=<name>`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from ssrl.files import InputError, OutputError, atomic_path, read_json, write_json
from ssrl.tracking.mlflow_store import open_client

log = logging.getLogger(__name__)

STATE_FILE = "mlflow_run.json"
BUFFER_FILE = "mlflow_buffer.jsonl"
_FAST_FAIL_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
_BATCH = 100  # MLflow accepts at most 100 params or tags per log_batch call


def resolve_tracking_uri(config_uri: str | None, results_dir: Path) -> str:
    """MLFLOW_TRACKING_URI if set, else the config value, else `<results_dir>/mlflow.db`."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if config_uri:
        return config_uri
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Refuse to start a workflow whose MLflow server does not answer (a typo in the URI would
    otherwise only show as buffered records). A file or SQLite store needs no check; a server
    (`http(s)://`) must answer `/health`, a database URI must accept a connection."""
    import socket
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme in ("", "file", "sqlite") or not parts.hostname:
        return
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    shown = parts._replace(netloc=host).geturl()  # no user name or password in messages
    try:
        if parts.scheme in ("http", "https"):
            health = f"{parts.scheme}://{host}{parts.path.rstrip('/')}/health"
            urllib.request.urlopen(health, timeout=timeout).close()
        else:
            default = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}.get(
                parts.scheme.split("+")[0], 0)
            socket.create_connection((parts.hostname, parts.port or default),
                                     timeout=timeout).close()
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):  # a server behind authentication: it answers
            return
        raise InputError(f"MLflow tracking URI {shown}: the server answered HTTP {err.code} "
                         "on /health; is it an MLflow server?") from None
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise InputError(f"MLflow tracking URI {shown} is unreachable ({reason}): start the "
                         "server, or unset MLFLOW_TRACKING_URI / tracking.uri to log to SQLite "
                         "under the results folder") from None


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts -> {"a.b": "value"}; every value stringified (MLflow params are strings)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def git_commit(cwd: Path | None = None) -> str:
    """HEAD of the git checkout holding this package (or `cwd`); "unknown" outside git."""
    cwd = Path(__file__).resolve().parent if cwd is None else cwd
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def experiment_tags(experiment: str) -> dict[str, str]:
    """MLflow 3 opens an experiment on its GenAI view (traces, tokens) unless told it holds
    model training; and the description is what the UI shows on top."""
    return {"mlflow.experimentKind": "custom_model_development",
            "mlflow.note.content": (
                f"ssrl experiment `{experiment}`: self-supervised speaker embeddings. One run "
                "per workflow job: DINO (stage 1), the iterative baseline's rounds (parent "
                "`iterative-...`), SSRL and its ablation grid (parent `ablation-...`), the "
                "supervised topline and the MFCC-statistics floor. Final test numbers are "
                "`test/eer`, `test/mindcf_0.01`, `test/mindcf_0.05` with intervals "
                "(`test/eer_low`, `test/eer_high`; the tables' numbers); per-epoch curves are "
                "`dev/...` and the pseudo labels `labels/clusters`, `labels/nmi` (epoch 0: the "
                "k-means start); per-step training curves are `step/...`. `ssrl mlflow-ui` "
                "prints links to the saved views: systems by test EER, SSRL variants charted.")}


class Tracking(Protocol):
    """What a job logs to: a `Tracker` (an MLflow run) or `NULL_TRACKER` (not tracked)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...


class NullTracker:
    """What a job gets when it is not tracked (the non-main `torchrun` processes, commands run
    by hand, tests): the Tracker's interface, doing nothing. "Not tracked" is always this
    object, never None, so no caller checks."""

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, *exc: object) -> bool:
        return False

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        pass


#: The one "not tracked" tracker (it holds no state).
NULL_TRACKER = NullTracker()


class Tracker:
    """One MLflow run for one job; use as a context manager.

    On exit the run ends FINISHED, FAILED (an exception) or KILLED (KeyboardInterrupt or
    SystemExit, i.e. a signal turned into an exception by the caller). Tracking errors never
    propagate into the job.
    """

    def __init__(self, uri: str, experiment: str, run_name: str, state_dir: Path,
                 tags: dict[str, str] | None = None, params: dict | None = None,
                 parent_run_name: str | None = None, retry_interval: float = 30.0,
                 fingerprint: str | None = None) -> None:
        for name in (experiment, run_name, parent_run_name or ""):
            if "'" in name or '"' in name:
                raise ValueError(f"experiment and run names may not contain quotes: {name!r}")
        self.uri = uri
        self.experiment = experiment
        self.run_name = run_name
        self.parent_run_name = parent_run_name
        self.state_dir = Path(state_dir)
        self.retry_interval = retry_interval
        self.fingerprint = fingerprint
        self.run_id: str | None = None
        self._started = False  # run created or resumed in the store by this object
        self._resume_status = True  # set a resumed run back to RUNNING (not when replaying)
        self._tags = {"git_commit": git_commit(), **(tags or {})}
        if parent_run_name:
            self._tags["sweep"] = parent_run_name
        self._params = flatten_params(params or {})
        self._client_obj: Any = None
        self._next_try = 0.0  # time.monotonic() before which the store is not contacted again
        self._outage = False
        self._announce = True  # say when buffered records were sent

    # ----------------------------------------------------------------- context manager
    def __enter__(self) -> Tracker:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state = self._read_state()
        if state.get("tracking_uri") == self.uri:
            if state.get("fingerprint") == self.fingerprint:
                self.run_id = state.get("run_id")
            elif state.get("run_id"):
                log.info("opening a new MLflow run: the job's config or inputs changed since "
                         "run %s", state["run_id"])
                self._retire_buffer(state)
        self._drop_end_records()  # a resumed run is running again
        self._write_state()
        self._flush(force=True)  # starts (or resumes) the run, then replays an old buffer
        self.set_tags(self._tags)
        if self._params:
            self._submit({"op": "params", "params": self._params})
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt | SystemExit):
            status = "KILLED"
        else:
            status = "FAILED"
        self._submit({"op": "end", "status": status, "time": _now_ms()}, force=True)
        if self.buffer_path.exists():
            log.warning("MLflow store %s unreachable: %d tracking records kept in %s; "
                        "send them later with ssrl.tracking.replay_buffer",
                        self.uri, len(_read_buffer(self.buffer_path)), self.buffer_path)
            if self.run_id is not None:
                with contextlib.suppress(Exception), _fast_fail():
                    self._client().set_tag(self.run_id, "incomplete", "true")
        return False

    # ------------------------------------------------------------------------ logging API
    @property
    def buffer_path(self) -> Path:
        return self.state_dir / BUFFER_FILE

    @property
    def state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        values = {str(k): float(v) for k, v in metrics.items()}
        self._submit({"op": "metrics", "metrics": values, "step": int(step), "time": _now_ms()})

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log (nested) params; keys already on the run are skipped, changed values warned."""
        self._submit({"op": "params", "params": flatten_params(params)})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._submit({"op": "tags", "tags": {str(k): str(v) for k, v in tags.items()}})

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a file or folder; buffered as a path (the file must still exist at replay)."""
        self._submit({"op": "artifact", "path": str(Path(path).resolve()),
                      "artifact_path": artifact_path})

    # ------------------------------------------------------------------------- internals
    def _submit(self, record: dict[str, Any], force: bool = False) -> None:
        """Send one record now, or queue it behind the records already buffered."""
        if not self._started or self.buffer_path.exists():
            _append_buffer(self.buffer_path, record)
            self._flush(force=force)
            return
        try:
            with _fast_fail():
                self._send(record)
        except Exception as err:
            if not _is_transient(err):
                log.warning("MLflow rejected a %s record, dropped: %s", record["op"], err)
                return
            _append_buffer(self.buffer_path, record)
            self._went_down(err)

    def _flush(self, force: bool = False) -> bool:
        """Start the run if needed and replay the buffer in order; True when nothing is left."""
        if self._started and not self.buffer_path.exists():
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        records = _read_buffer(self.buffer_path) if self.buffer_path.exists() else []
        try:
            with _fast_fail():
                self._start_run()
                for i, record in enumerate(records):
                    try:
                        self._send(record)
                    except Exception as err:
                        if _is_transient(err):
                            _write_buffer(self.buffer_path, records[i:])
                            raise
                        log.warning("MLflow rejected a buffered %s record, dropped: %s",
                                    record["op"], err)
                if records:
                    self.buffer_path.unlink(missing_ok=True)
                    with contextlib.suppress(Exception):
                        self._client().delete_tag(self.run_id, "incomplete")
        except Exception as err:  # never let tracking break the job
            if not _is_transient(err):
                log.warning("MLflow run could not be started in %s: %s", self.uri, _short(err))
            self._went_down(err)
            return False
        if self._outage or (records and self._announce):
            log.warning("MLflow store %s reachable again: %d buffered records sent",
                        self.uri, len(records))
        self._outage = False
        return True

    def _went_down(self, err: BaseException) -> None:
        self._next_try = time.monotonic() + self.retry_interval
        if not self._outage:
            log.warning("MLflow store %s unreachable (%s); buffering to %s",
                        self.uri, _short(err), self.buffer_path)
        self._outage = True

    def _send(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        client, run_id, op = self._client(), self.run_id, record["op"]
        if op == "metrics":
            metrics = [Metric(k, v, record["time"], record["step"])
                       for k, v in record["metrics"].items()]
            for chunk in _chunks(metrics, 1000):
                client.log_batch(run_id, metrics=chunk)
        elif op == "params":
            existing = client.get_run(run_id).data.params
            new = {k: v for k, v in record["params"].items() if k not in existing}
            changed = {k: v for k, v in record["params"].items()
                       if k in existing and existing[k] != v}
            for chunk in _chunks([Param(k, v) for k, v in new.items()], _BATCH):
                client.log_batch(run_id, params=chunk)
            if changed:
                # MLflow params are immutable: keep the first value, record the new one as a tag.
                log.warning("params changed since the run started (kept the old values, new "
                            "ones as changed_param.* tags): %s", ", ".join(sorted(changed)))
                tags = [RunTag(f"changed_param.{k}", v) for k, v in changed.items()]
                for chunk in _chunks(tags, _BATCH):
                    client.log_batch(run_id, tags=chunk)
        elif op == "tags":
            tags = [RunTag(k, v) for k, v in record["tags"].items()]
            for chunk in _chunks(tags, _BATCH):
                client.log_batch(run_id, tags=chunk)
        elif op == "artifact":
            path = Path(record["path"])
            if path.is_dir():
                client.log_artifacts(run_id, str(path), record["artifact_path"])
            elif path.is_file():
                client.log_artifact(run_id, str(path), record["artifact_path"])
            else:
                log.warning("artifact %s no longer exists, not uploaded", path)
        elif op == "end":
            client.set_terminated(run_id, status=record["status"], end_time=record["time"])
        else:
            log.warning("unknown tracking record %r, dropped", op)

    def _start_run(self) -> None:
        """Resume the stored run (status back to RUNNING) or create a new one."""
        from mlflow.exceptions import MlflowException

        client = self._client()
        if self.run_id is not None:
            try:
                run = client.get_run(self.run_id)
            except MlflowException as err:
                if _is_transient(err):
                    raise
                log.warning("run %s not found in %s; starting a new run", self.run_id, self.uri)
                self.run_id = None
            else:
                if self._resume_status and run.info.status != "RUNNING":
                    client.update_run(self.run_id, status="RUNNING")
                self._started = True
                return
        experiment_id = self._experiment_id()
        tags: dict[str, str] = {}
        if self.parent_run_name:
            tags["mlflow.parentRunId"] = self._parent_run_id(experiment_id)
        run = client.create_run(experiment_id, run_name=self.run_name, tags=tags)
        self.run_id = run.info.run_id
        self._started = True
        self._write_state()

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        client = self._client()
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            try:
                experiment_id = client.create_experiment(
                    self.experiment, artifact_location=self._artifact_location(),
                    tags=experiment_tags(self.experiment))
                return experiment_id
            except MlflowException as err:  # created meanwhile by a parallel job
                exp = client.get_experiment_by_name(self.experiment)
                if exp is None:
                    raise err from None
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id

    def _artifact_location(self) -> str | None:
        """Next to a sqlite database (MLflow's default would be ./mlruns under the cwd)."""
        if not self.uri.startswith("sqlite:///"):
            return None
        db = Path(self.uri[len("sqlite:///"):]).resolve()
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", self.experiment)
        return (db.parent / "mlartifacts" / safe).as_uri()

    def _parent_run_id(self, experiment_id: str) -> str:
        """The oldest run named `parent_run_name` marked as a sweep parent; created if none."""
        client = self._client()
        found = find_sweep_parent(client, experiment_id, self.parent_run_name)
        if found is not None:
            return found
        parent = client.create_run(experiment_id, run_name=self.parent_run_name, tags={
            "sweep": self.parent_run_name, "sweep_parent": "true",
            "git_commit": self._tags["git_commit"]})
        client.set_terminated(parent.info.run_id, status="FINISHED")
        return parent.info.run_id

    def _client(self) -> Any:
        if self._client_obj is None:
            self._client_obj = open_client(self.uri)
        return self._client_obj

    def _read_state(self) -> dict[str, Any]:
        return read_json(self.state_path) if self.state_path.exists() else {}

    def _write_state(self) -> None:
        write_json(self.state_path, {
            "run_id": self.run_id, "tracking_uri": self.uri, "experiment": self.experiment,
            "run_name": self.run_name, "parent_run_name": self.parent_run_name,
            "fingerprint": self.fingerprint})

    def _retire_buffer(self, state: dict[str, Any]) -> None:
        """Records buffered for an earlier run of this job go to that run, not this one."""
        if not self.buffer_path.exists():
            return
        if not replay_buffer(self.state_dir):
            kept = self.state_dir / f"mlflow_buffer.{state['run_id']}.jsonl"
            os.replace(self.buffer_path, kept)
            log.warning("records buffered for run %s kept in %s (replay them with "
                        "ssrl.tracking.mlflow_run.replay_buffer)", state["run_id"], kept)

    def _drop_end_records(self) -> None:
        if self.buffer_path.exists():
            records = _read_buffer(self.buffer_path)
            kept = [r for r in records if r["op"] != "end"]
            if len(kept) != len(records):
                _write_buffer(self.buffer_path, kept)


def replay_buffer(state_dir: Path, uri: str | None = None, announce: bool = True) -> bool:
    """Send a job's buffered tracking records (e.g. after the server came back).

    Uses the run recorded in `state_dir/mlflow_run.json` (created if it never reached the
    store); `uri` overrides the stored tracking URI. True when nothing is left to send.
    """
    state_dir = Path(state_dir)
    state = read_json(state_dir / STATE_FILE)
    uri = uri or state["tracking_uri"]
    tracker = Tracker(uri, state["experiment"], state["run_name"], state_dir,
                      parent_run_name=state.get("parent_run_name"),
                      fingerprint=state.get("fingerprint"))
    tracker._resume_status = False
    tracker._announce = announce
    if state.get("tracking_uri") == uri:
        tracker.run_id = state.get("run_id")
    if not tracker.buffer_path.exists():
        return True
    return tracker._flush(force=True)


# ---------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _fast_fail() -> Iterator[None]:
    """No retries and a short timeout for MLflow HTTP calls, for the duration of the block."""
    saved = {k: os.environ.get(k) for k in _FAST_FAIL_ENV}
    os.environ.update(_FAST_FAIL_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _is_transient(err: BaseException) -> bool:
    """Store unreachable or failing (retry later) vs a record the store rejects (drop it)."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        return err.get_http_status_code() >= 500
    if isinstance(err, OSError):  # includes requests' ConnectionError and Timeout
        return True
    with contextlib.suppress(ImportError):
        from sqlalchemy.exc import OperationalError

        return isinstance(err, OperationalError)  # e.g. "database is locked"
    return False


def _append_buffer(path: Path, record: dict[str, Any]) -> None:
    # Plain append: a crash can at worst tear the last line, which _read_buffer skips.
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
    except OSError as err:  # a full disk: one line naming the file, not a traceback
        raise OutputError(f"{path}: could not write output ({err.strerror or err}); the "
                          "tracking record was not kept") from err


def _read_buffer(path: Path) -> list[dict[str, Any]]:
    records = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s:%d: unreadable tracking record skipped", path, lineno)
    return records


def _write_buffer(path: Path, records: list[dict[str, Any]]) -> None:
    if not records:
        path.unlink(missing_ok=True)
        return
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _short(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:200]


def find_sweep_parent(client: Any, experiment_id: str, name: str) -> str | None:
    """The id of the oldest run named `name` marked as a sweep parent, or None."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.run_name = '{name}' and tags.sweep_parent = 'true'",
        order_by=["attributes.start_time ASC"], max_results=1)
    return found[0].info.run_id if found else None


def _log_to_run(client: Any, run_id: str, metrics: Mapping[str, float],
                tags: Mapping[str, str], artifacts: list[Path],
                artifact_path: str | None = None) -> None:
    """Metrics (at step 0), tags and artifact files added to an existing run."""
    from mlflow.entities import Metric, RunTag

    now = _now_ms()
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, str(v)) for k, v in tags.items()])
    for path in artifacts:
        client.log_artifact(run_id, str(path), artifact_path)


def annotate_run(state_dir: Path, metrics: Mapping[str, float] | None = None,
                 tags: Mapping[str, str] | None = None,
                 artifacts: list[Path] | None = None, artifact_path: str | None = None) -> bool:
    """Add metrics (step 0), tags and artifacts to the finished run of a job, leaving its
    status alone: how the score step puts the final test numbers on the run of the model it
    scored. The records go through the job's buffer like every other tracking record: when the
    store cannot be reached they stay in `mlflow_buffer.jsonl` and are replayed later
    (`replay_buffer`, `python -m ssrl mlflow-sync`). False (with a warning) when they stay."""
    state_dir = Path(state_dir)
    state_path = state_dir / STATE_FILE
    if not state_path.exists():
        log.warning("%s: no MLflow run recorded; the test metrics stay in metrics.json",
                    state_path)
        return False
    now = _now_ms()
    buffer = state_dir / BUFFER_FILE
    if metrics:
        _append_buffer(buffer, {"op": "metrics", "step": 0, "time": now,
                                "metrics": {str(k): float(v) for k, v in metrics.items()}})
    if tags:
        _append_buffer(buffer, {"op": "tags", "tags": {str(k): str(v) for k, v in tags.items()}})
    for path in artifacts or []:
        _append_buffer(buffer, {"op": "artifact", "path": str(Path(path).resolve()),
                                "artifact_path": artifact_path})
    if replay_buffer(state_dir, announce=False):
        return True
    log.warning("MLflow run of %s not updated yet: the records stay in %s (sent by the next "
                "run, or by python -m ssrl mlflow-sync)", state_dir, buffer)
    return False


def pending_buffers(root: Path) -> list[Path]:
    """Every tracking buffer under a results folder (records not yet in the MLflow store)."""
    return sorted(p for p in Path(root).rglob("mlflow_buffer*.jsonl") if p.is_file())


def sync_buffers(root: Path, send: bool = True) -> list[tuple[Path, int]]:
    """Replay every job's buffer under `root` (e.g. after the disk was freed or the server came
    back); returns each buffer still left with its record count. Run it when no job of the
    folder is running (the workflow does at its end, under its lock); `send=False` only
    lists."""
    left = []
    for path in pending_buffers(root):
        if not send:
            pass
        elif path.name == BUFFER_FILE and (path.parent / STATE_FILE).is_file():
            with contextlib.suppress(Exception):
                replay_buffer(path.parent)
        elif path.name == SWEEP_BUFFER_FILE:
            _replay_sweeps(path)
        if path.is_file():
            left.append((path, len(_read_buffer(path))))
    return left


#: Sweep summaries `tables` could not send, kept in its output folder (`summarize_sweep`).
SWEEP_BUFFER_FILE = "mlflow_buffer.sweeps.jsonl"


def summarize_sweep(uri: str, experiment: str, parent: str, metrics: Mapping[str, float],
                    tags: Mapping[str, str], artifacts: list[Path],
                    buffer_dir: Path | None = None) -> bool:
    """Put a sweep's summary on its parent run (which otherwise holds nothing): the table of
    its children as artifacts, their final numbers, the best child. False with a warning when
    the store or the parent cannot be reached; with `buffer_dir` the summary then waits in
    `buffer_dir/mlflow_buffer.sweeps.jsonl` for `sync_buffers` (a newer summary of the same
    sweep replaces it)."""
    record = {"op": "sweep", "uri": uri, "experiment": experiment, "parent": parent,
              "metrics": {str(k): float(v) for k, v in metrics.items()},
              "tags": {str(k): str(v) for k, v in tags.items()},
              "artifacts": [str(Path(p).resolve()) for p in artifacts]}
    buffer = Path(buffer_dir) / SWEEP_BUFFER_FILE if buffer_dir is not None else None
    if buffer is not None and buffer.exists():  # superseded by this one
        _write_buffer(buffer, [r for r in _read_buffer(buffer) if r.get("parent") != parent])
    try:
        with _fast_fail():
            client = open_client(uri)
            exp = client.get_experiment_by_name(experiment)
            run_id = None if exp is None else find_sweep_parent(client, exp.experiment_id,
                                                                 parent)
            if run_id is None:
                log.warning("no MLflow run %r in experiment %r: no sweep summary", parent,
                            experiment)
                return False
            _log_to_run(client, run_id, metrics, tags, artifacts)
    except Exception as err:  # noqa: BLE001 - tracking never fails the job
        log.warning("sweep summary not logged to %s (%s)%s", parent, _short(err),
                    f"; kept in {buffer}" if buffer is not None else "")
        if buffer is not None:
            _append_buffer(buffer, record)
        return False
    return True


def _replay_sweeps(buffer: Path) -> None:
    """Send the sweep summaries waiting in `buffer`; those that still fail stay."""
    records = _read_buffer(buffer)
    buffer.unlink()
    for r in records:
        summarize_sweep(r["uri"], r["experiment"], r["parent"], r["metrics"], r["tags"],
                        [Path(p) for p in r["artifacts"]], buffer_dir=buffer.parent)
