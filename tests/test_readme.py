"""The README's commands work as pasted: each runs in the project's environment by its own
path (`.venv/bin/...`), and the "Using a trained model" commands run, unchanged, in a fresh
shell (no inherited PATH, no activated environment) on a model file at the README's path."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from ssrl.models.encoders import build_encoder
from ssrl.models.frontend import Frontend
from ssrl.models.model_file import save_model_file

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def test_every_command_names_the_environment():
    commands = [line.split("#")[0].strip() for block in bash_blocks()
                for line in block.replace("\\\n", " ").splitlines()]
    bare = [c for c in commands if re.match(r"(python3?|snakemake|mlflow|pytest)\b", c)]
    assert bare == []
    assert "source .venv/bin/activate" in README and "`make venv`" in README


@pytest.mark.skipif(not (REPO / ".venv" / "bin" / "python").exists(),
                    reason="needs the project's .venv (make venv)")
def test_using_a_trained_model_runs_as_pasted_in_a_fresh_shell(tmp_path, make_wav):
    block = next(b for b in bash_blocks() if "ssrl embed" in b)
    model = re.search(r"--model (\S+)", block)[1]
    torch.manual_seed(0)
    cfg = {"preset": "ecapa_tiny", "channels": 16, "embed_dim": 8, "se_channels": 8,
           "attention_channels": 8}
    save_model_file(tmp_path / model, build_encoder({**cfg, "n_mels": 80}).eval(), cfg,
                    Frontend("logmel"))
    for i, name in enumerate(("alice/a1.wav", "alice/a2.wav", "bob/b1.wav", "bob/b2.flac")):
        make_wav(tmp_path / "my_wavs" / name, 1.0 + 0.1 * i, seed=i)
    (tmp_path / "my_wavs" / "trials").write_text(
        "alice/a1 alice/a2 target\nalice/a1 bob/b1 nontarget\nbob/b1 bob/b2 target\n"
        "alice/a2 bob/b2 nontarget\n")
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["/bin/bash", "-e", "-c", block], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(tmp_path / "emb.npz") as emb:
        assert list(emb["utt_ids"]) == ["alice/a1", "alice/a2", "bob/b1", "bob/b2"]
    assert "trials: EER" in proc.stdout and (tmp_path / "metrics.json").is_file()
    assert {p.name for p in (tmp_path / "exported").iterdir()} >= {"encoder.onnx", "encoder.ts"}
    assert os.path.getsize(tmp_path / "exported" / "encoder.onnx") > 0
