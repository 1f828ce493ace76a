"""Fixtures of `make test-cluster`: the one-node SLURM cluster and the PostgreSQL-backed MLflow
server that infra/ starts (the Makefile starts both before pytest and stops them after, even on
failure). Helpers live in cluster_support.py. These tests are collected only by
`make test-cluster` (pyproject's addopts ignore this folder)."""

from __future__ import annotations

import subprocess

import pytest
from cluster_support import PARTITION, MlflowServer, Slurm, say


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
