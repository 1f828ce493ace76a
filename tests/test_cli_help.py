"""Every command and every option of `python -m ssrl` says what it is for; `mlflow-ui`
refuses to touch the database when MLflow is missing."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from ssrl.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_of_every_command_has_help():
    parser = build_parser()
    missing = [f"ssrl {opt}" for a in parser._actions if a.option_strings and not a.help
               for opt in a.option_strings[-1:]]
    commands = _subcommands(parser)
    assert len(commands) >= 15
    for name, sub in commands.items():
        assert sub.description, name
        missing += [f"ssrl {name} {a.option_strings[-1]}" for a in sub._actions
                    if a.option_strings and a.help is None]
    assert missing == []


def test_help_of_embed_names_every_source(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ssrl", "embed", "--help"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for words in ("folder of audio files", "wav.scp-style list", "CPU threads",
                  "auto (CUDA when available)", "a model.pt written by the workflow"):
        assert words in text


def test_mlflow_ui_without_mlflow_leaves_the_database_alone(tmp_path):
    """Run by an interpreter without MLflow (simulated by a `mlflow` that cannot be found),
    the command says which environment to use and exits 2; mlflow.db is not opened."""
    results = tmp_path / "results"
    results.mkdir()
    db = results / "mlflow.db"
    db.write_bytes(b"not touched")
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoMlflow:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'mlflow' or name.startswith('mlflow.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, _NoMlflow())\n")
    env = {**os.environ, "PYTHONPATH": f"{stub}{os.pathsep}{REPO}"}
    proc = subprocess.run([sys.executable, "-m", "ssrl", "mlflow-ui", "--results", str(results)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"ssrl mlflow-ui: error: MLflow is not installed for {sys.executable}; use the "
        "project's environment (`make venv`, then `.venv/bin/python -m ssrl mlflow-ui`)"]
    assert db.read_bytes() == b"not touched"
