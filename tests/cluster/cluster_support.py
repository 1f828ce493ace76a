"""Helpers of the tests under tests/cluster/ (the fixtures are in conftest.py): the cluster's
SLURM client commands, the MLflow server's process, workflow runs in a copy of the workflow,
and freezing a SLURM job right after a mid-epoch checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
WORKFLOW_FILES = ("Snakefile", "workflow", "config.yaml", "config", "envs", "profiles")
CLUSTER_DIR = Path(os.environ.get("SSRL_CLUSTER_DIR", "/tmp/ssrl-cluster"))
PARTITION = os.environ.get("SSRL_SLURM_PARTITION", "cpu")
MLFLOW_URI = f"http://127.0.0.1:{os.environ.get('SSRL_MLFLOW_PORT', '5055')}"
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
#: What every workflow run of these tests adds to its preset: the CPU partition overlay, and a
#: checkpoint after every step (not part of any result: see checkpoints.RESULT_RUNTIME_KEYS),
#: so that a job can be cancelled in the middle of an epoch.
CPU_OVERLAY = "config/slurm-cpu.yaml"
STEP_CHECKPOINTS = "runtime: {checkpoint_every_steps: 1}\n"
#: The SLURM plugin's options for this cluster: no accounting (no slurmdbd), and a short first
#: status poll (its default, 40 s, is meant for big clusters).
#: One MLflow experiment per session (the server's database outlives a session), for every run.
EXPERIMENT = f"cluster-{uuid.uuid4().hex[:8]}"
EXTRA = f"experiment: {EXPERIMENT}\n"
CONFIGS = ("--configfile", "config/smoke.yaml", CPU_OVERLAY, "extra.yaml")
#: The plugin's options for this cluster: no account (no slurmdbd; plugin 2.8.0 still tries to
#: guess one and says so), and a short first status poll (its default, 40 s, is for big clusters).
SLURM_ARGS = ("--profile", "profiles/slurm", "--slurm-no-account",
              "--slurm-init-seconds-before-status-checks", "5")


def say(*args: object) -> None:
    """A line in `make test-cluster`'s log (pytest runs with -s there)."""
    print("[test-cluster]", *args, flush=True)


def ssrl_env(**extra: str) -> dict[str, str]:
    """This venv first on PATH, the repository importable (also inside SLURM jobs, which get
    the submitting environment), one thread per process; no MLflow server unless given."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def copy_workflow(dest: Path) -> Path:
    """The workflow and its profiles in `dest` (its own .snakemake/, results/ and logs)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest / name)
    return dest


# --- SLURM ---------------------------------------------------------------------------------
@dataclass
class SlurmJob:
    id: str
    state: str
    comment: str  # the plugin's `rule_<name>_wildcards_<values>`


class Slurm:
    """The running cluster, seen through its client commands."""

    partition = PARTITION

    def jobs(self) -> list[SlurmJob]:
        out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i|%T|%k"],
                             capture_output=True, text=True, check=True, timeout=30).stdout
        return [SlurmJob(*line.split("|", 2)) for line in out.splitlines() if line.strip()]

    def running(self, rule: str, wildcard: str = "") -> SlurmJob | None:
        """The running job of `rule` whose comment (`rule_<rule>_wildcards_<values joined
        by _>`) ends with `wildcard`."""
        for job in self.jobs():
            if (job.state == "RUNNING" and job.comment.startswith(f"rule_{rule}")
                    and job.comment.endswith(wildcard)):
                return job
        return None

    def pids(self, job_id: str) -> list[int]:
        out = subprocess.run(["scontrol", "listpids", job_id], capture_output=True, text=True,
                             check=False, timeout=30).stdout
        return [int(line.split()[0]) for line in out.splitlines()[1:] if line.split()
                and line.split()[0].isdigit()]

    def signal(self, job_id: str, sig: signal.Signals) -> None:
        for pid in self.pids(job_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)



# --- the MLflow server -----------------------------------------------------------------------
class MlflowServer:
    """The server infra/mlflow/setup.sh runs (PostgreSQL backend), stopped and started again
    through the same scripts' PID file and setup."""

    uri = MLFLOW_URI
    pid_file = CLUSTER_DIR / "mlflow" / "mlflow.pid"

    def healthy(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.uri}/health", timeout=3).close()
        except OSError:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL the server's whole process group (what a crash does)."""
        pgid = int(self.pid_file.read_text().split()[0])
        os.killpg(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while self.healthy() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not self.healthy()

    def start(self) -> None:
        subprocess.run([str(REPO / "infra" / "mlflow" / "setup.sh")], check=True, timeout=600)
        assert self.healthy()



# --- workflow runs ---------------------------------------------------------------------------
@dataclass
class WorkflowRun:
    """A copy of the workflow in `dir` and its results `dir/results/<experiment>`."""

    dir: Path
    experiment: str = "smoke"
    proc: subprocess.Popen | None = None
    started: float = 0.0
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.dir / "snakemake.log"

    @property
    def results(self) -> Path:
        return self.dir / "results" / self.experiment

    def start(self, *args: str, **env: str) -> WorkflowRun:
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen([SNAKEMAKE, *args], cwd=self.dir, stdout=f,
                                         stderr=subprocess.STDOUT, env=ssrl_env(**env))
        return self

    def wait(self, timeout: float = 1800) -> str:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGINT)  # the plugin cancels its jobs on exit
            self.proc.wait(timeout=120)
            pytest.fail(f"workflow run timed out:\n{self.log.read_text()[-5000:]}")
        text = self.log.read_text()
        assert rc == 0, text[-8000:]
        return text


def new_workflow(root: Path, extra: str = "") -> WorkflowRun:
    """A fresh copy of the workflow with `extra.yaml` (step checkpoints + `extra`)."""
    run = WorkflowRun(copy_workflow(root))
    (run.dir / "extra.yaml").write_text(STEP_CHECKPOINTS + extra)
    return run


def read_checkpoint(path: Path) -> tuple[int, int] | None:
    """(epoch, step) of the next step a checkpoint resumes at; None while unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError):
        return None
    return int(state["epoch"]), int(state["step"])


def freeze_mid_epoch(slurm: Slurm, rule: str, wildcard: str, checkpoint: Path,
                     run: WorkflowRun, timeout: float = 900) -> tuple[SlurmJob, int, int]:
    """Wait for `rule`'s SLURM job to write a checkpoint inside an epoch, then freeze the job's
    processes (SIGSTOP) so that the checkpoint is the one it resumes from. The caller cancels
    or requeues the frozen job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert run.proc is None or run.proc.poll() is None, run.log.read_text()[-5000:]
        job = slurm.running(rule, wildcard)
        if job and checkpoint.exists():
            slurm.signal(job.id, signal.SIGSTOP)
            where = read_checkpoint(checkpoint)
            if where and where[1] > 0:
                return job, *where
            slurm.signal(job.id, signal.SIGCONT)
        time.sleep(0.02)
    pytest.fail(f"no mid-epoch checkpoint of rule {rule} appeared in {checkpoint}")


def metrics_files(results: Path) -> dict[str, dict]:
    return {str(p.relative_to(results)): json.loads(p.read_text())
            for p in sorted(results.glob("eval/**/metrics.json"))}
