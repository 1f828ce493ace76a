"""The paper preset end to end on VoxCeleb's on-disk layout: a miniature tree (VoxCeleb2 dev and
test as AAC .m4a, VoxCeleb1 wav with O/E/H trial lists, MUSAN, RIRS_NOISES) written by
`python -m ssrl.data.voxceleb_mini`, then the whole DAG of `config/voxceleb.yaml` with the
shipped scale-down overlay `config/voxceleb-mini.yaml`. The tables carry the O, E and H
columns, each with its interval.

Several minutes on 2 cores: run by `make test-cluster`."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("ssrl_test_support",
                                               Path(__file__).parents[1] / "conftest.py")
support = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(support)

LISTS = ("O", "E", "H")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    wf = support.copy_workflow(tmp_path_factory.mktemp("voxmini") / "wf")
    python = Path(sys.executable)
    made = subprocess.run([str(python), "-m", "ssrl.data.voxceleb_mini", "--out",
                           "data/voxceleb-mini"], cwd=wf, env=support.ssrl_env(),
                          capture_output=True, text=True, timeout=600, check=False)
    assert made.returncode == 0, made.stderr[-3000:]
    cmd = [str(python.parent / "snakemake"), "--cores", "2", "--configfile",
           "config/voxceleb.yaml", "config/voxceleb-mini.yaml"]
    done = subprocess.run(cmd, cwd=wf, env=support.ssrl_env(), capture_output=True,
                          text=True, timeout=3000, check=False)
    (wf / "snakemake.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    return wf / "results/voxceleb-mini"


def test_every_set_came_from_the_corpus_layout(run):
    train = (run / "data/train/wav.scp").read_text().splitlines()
    assert train and all(re.match(r"^id\d{5}/[\w-]{11}/\d{5}\.wav \S+/aac/id\d{5}/[\w-]{11}/"
                                  r"\d{5}\.m4a$", line) for line in train)
    test = (run / "data/test/wav.scp").read_text().splitlines()
    assert all(line.split()[1].endswith(".wav") and "/voxceleb1/wav/" in line for line in test)
    assert sorted(p.name for p in (run / "data/test").glob("trials_*")) == [
        "trials_E", "trials_H", "trials_O"]
    assert (run / "data/dev/trials").is_file()  # drawn from VoxCeleb2 test's speakers
    noise = (run / "data/noise/utt2category").read_text().split()
    assert {"music", "noise", "speech"} <= set(noise)
    assert len((run / "data/rir/wav.scp").read_text().splitlines()) == 3


def test_tables_carry_o_e_h_with_intervals(run):
    lines = (run / "tables/main.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    main = lines[start:]
    header = [c.strip() for c in main[0].strip("|").split("|")]
    for name in LISTS:
        assert f"EER % ({name})" in header, header
    rows = []
    for line in main[2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    assert len(rows) >= 4  # the floor, DINO, SSRL, the iterative rounds, ...
    ssrl = next(r for r in rows if r[0].lower().startswith("ssrl"))
    for name in LISTS:  # every EER with its 95 % interval: `16.9 [15.1, 18.7]`
        cell = ssrl[header.index(f"EER % ({name})")]
        assert re.fullmatch(r"[\d.]+ \[[\d.]+, [\d.]+\]", cell), (name, cell)
    metrics = json.loads(next(run.glob("eval/seed0/ssrl/*/metrics.json")).read_text())
    assert sorted(metrics["trials"]) == sorted(LISTS)
    for name in LISTS:
        m = metrics["trials"][name]
        assert m["n_target"] > 0 and len(m["ci"]["eer"]) == 2


def test_the_whole_paper_grid_ran(run):
    variants = {p.name for p in (run / "seed0/ssrl").iterdir() if p.is_dir()}
    assert len(variants) == 11  # the full method and the preset's 10 ablation variants
    assert any("init_k~6" in v for v in variants) and any("init_k~10" in v for v in variants)
    rounds = sorted((run / "seed0/iterative").glob("e*/round*/model.pt"))
    assert len(rounds) == 5
