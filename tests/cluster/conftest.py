"""Fixtures of `make test-cluster`: the one-node SLURM cluster and the PostgreSQL-backed MLflow
server that infra/ starts (the Makefile starts both before pytest and stops them after, even on
failure). Helpers live in cluster_support.py. These tests are collected only by
`make test-cluster` (pyproject's addopts ignore this folder)."""

from __future__ import annotations

import subprocess
import time

import pytest
from cluster_support import (
    CONFIGS,
    EXPERIMENT,
    EXTRA,
    PARTITION,
    MlflowServer,
    Slurm,
    WorkflowRun,
    metrics_files,
    new_workflow,
    say,
)


@pytest.fixture(scope="session")
def slurm() -> Slurm:
    found = subprocess.run(["sinfo", "-h", "-o", "%R %T"], capture_output=True, text=True,
                           check=False, timeout=30)
    if found.returncode != 0 or PARTITION not in found.stdout.split():
        pytest.fail(f"no SLURM cluster with partition {PARTITION!r} ({found.stderr.strip()}): "
                    "make test-cluster starts one (infra/slurm/setup.sh)")
    say("SLURM:", " ".join(found.stdout.split()))
    return Slurm()


@pytest.fixture(scope="session")
def mlflow_server() -> MlflowServer:
    server = MlflowServer()
    if not server.healthy():
        pytest.fail(f"no MLflow server at {server.uri}: make test-cluster starts one "
                    "(infra/mlflow/setup.sh)")
    return server


@pytest.fixture(scope="session")
def local_run_started(tmp_path_factory) -> WorkflowRun:
    """The reference: the same preset and overlays through the local profile, into the default
    SQLite store. Started at once; it runs while the SLURM jobs wait for their turn."""
    run = new_workflow(tmp_path_factory.mktemp("local") / "wf", EXTRA)
    run.experiment = EXPERIMENT
    run.started = time.monotonic()
    return run.start("--profile", "profiles/local", "--cores", "2", *CONFIGS)


@pytest.fixture(scope="session")
def local_run(local_run_started) -> WorkflowRun:
    run = local_run_started
    run.wait()
    say(f"local profile: smoke preset done after {time.monotonic() - run.started:.0f} s, "
        f"{len(metrics_files(run.results))} metrics.json")
    return run
