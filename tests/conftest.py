"""Shared test fixtures: small audio files written on demand."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def _signal(seconds: float, sr: int, channels: int, seed: int, freq: float | None,
            amplitude: float) -> np.ndarray:
    n = int(round(seconds * sr))
    if freq is None:
        x = np.random.default_rng(seed).uniform(-amplitude, amplitude, (n, channels))
    else:
        x = np.repeat(amplitude * np.sin(2 * np.pi * freq * np.arange(n) / sr)[:, None],
                      channels, axis=1)
    return x.astype(np.float32)


@pytest.fixture
def make_wav() -> Callable[..., Path]:
    """make_wav(path, seconds, sr=16000, channels=1, seed=0, freq=None, amplitude=0.5,
    subtype="PCM_16") writes uniform noise (or a sine of `freq` Hz) and returns the path."""

    def make(path: str | Path, seconds: float, sr: int = 16000, channels: int = 1,
             seed: int = 0, freq: float | None = None, amplitude: float = 0.5,
             subtype: str = "PCM_16") -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, _signal(seconds, sr, channels, seed, freq, amplitude), sr,
                 subtype=subtype)
        return path

    return make


@pytest.fixture
def make_m4a() -> Callable[..., Path]:
    """make_m4a(path, seconds=1.0, freq=440.0, sr=16000) encodes a sine as AAC with ffmpeg."""
    import imageio_ffmpeg

    def make(path: str | Path, seconds: float = 1.0, freq: float = 440.0,
             sr: int = 16000) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pcm = (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr) * 32767)
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y",
               "-f", "s16le", "-ar", str(sr), "-ac", "1", "-i", "-",
               "-c:a", "aac", "-b:a", "64k", str(path)]
        subprocess.run(cmd, input=pcm.astype("<i2").tobytes(), check=True,
                       capture_output=True)
        return path

    return make


#: The files whose tests use the `smoke_run` fixture: under `make test` (pytest-xdist, two
#: workers) they run on one worker, so the session builds the smoke run once.
SMOKE_FILES = ("test_faults.py", "test_workflow.py")


def pytest_xdist_make_scheduler(config: pytest.Config, log) -> object:
    """`make test` runs the suite on two workers, a file at a time on one worker (its module
    fixtures built once), the smoke run's users together. (pytest-xdist's `xdist_group`
    marks do not reach its scheduler under pytest 9: the files are grouped here.)"""
    from xdist.scheduler import LoadFileScheduling

    class SmokeTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "smoke_run" if Path(path).name in SMOKE_FILES else path

    return SmokeTogether(config, log)


def pytest_itemcollected(item: pytest.Item) -> None:
    if "smoke_run" in getattr(item, "fixturenames", ()) and item.path.name not in SMOKE_FILES \
            and item.path.parent.name != "cluster":
        raise pytest.UsageError(f"{item.path.name} uses smoke_run: add it to conftest.SMOKE_FILES"
                                " (else each make test worker builds its own smoke run)")


def _descendants(pid: int) -> list[int]:
    """Live descendant processes of `pid` (from /proc; zombies already exited and are left out)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            try:
                state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                found.append(child)
            found += _descendants(child)
    return found


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_suite():
    """Every process a test starts (MLflow servers, torchrun, snakemake) is gone at the end."""
    import contextlib
    import os
    import time

    yield
    deadline = time.monotonic() + 30
    while (left := _descendants(os.getpid())) and time.monotonic() < deadline:
        time.sleep(0.5)
    commands = []
    for pid in left:
        with contextlib.suppress(OSError):
            commands.append(Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:200])
    assert not commands, f"processes left running after the test suite: {commands}"


# --- end-to-end fixtures (test_workflow.py, test_faults.py, cluster/test_ddp.py) -----------
# One smoke workflow run for the whole session, in a temporary copy of the workflow, with the
# smoke preset shrunk further and one ablation variant that crashes (run with --keep-going):
# an AAM scale of 1e39 overflows float32, so its first loss is NaN and the job fails there.

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "workflow", "config.yaml", "config", "envs")
#: Merged over config/smoke.yaml. The variant `crash` has an AAM scale that overflows: its
#: SSRL job fails at its first step, the others must not be affected.
#: The smoke run lives in a folder, and writes to a results folder, whose names hold a space,
#: a quote, a `$` and a non-ASCII letter: every rule must quote every path (no shell expansion).
ODD_NAME = "odd 'q' $HOME é"
SMOKE_OVERRIDES = f"""\
results_dir: "res {ODD_NAME}"
data:
  builtin: {{train_speakers: 4, train_utts_per_speaker: 4, test_speakers: 3,
            test_utts_per_speaker: 3, dev_speakers: 2, dev_utts_per_speaker: 2,
            noise_files: 3, rir_files: 1}}
dino: {{epochs: 1, steps_per_epoch: 1, warmup_epochs: 0}}
cluster: {{k: 6}}
ssrl: {{epochs: 3, steps_per_epoch: 1, batch_size: 8, eval_every: 3}}
iterative: {{epochs: 1}}
eval: {{bootstrap: {{replicates: 100}}}}
ablation:
  variants:
    - {{name: no_nlm, noisy_label_modeling: false}}
    - {{name: crash, scale: 1.0e+39}}
"""
SMOKE_CRASH = "{name: crash, scale: 1.0e+39}"
SMOKE_FIXED = "{name: crash, scale: 24.0}"


def ssrl_env(**extra: str) -> dict[str, str]:
    """Environment for `python -m ssrl` / snakemake subprocesses: this venv first on PATH, the
    repository importable, one thread, and no MLflow server inherited from the caller."""
    import os
    import sys

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def copy_workflow(dest: Path) -> Path:
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest / name)
    return dest


def snakemake(cwd: Path, *args: str, timeout: float = 600,
              **env: str) -> subprocess.CompletedProcess:
    import sys

    cmd = [str(Path(sys.executable).parent / "snakemake"), *args]
    return subprocess.run(cmd, cwd=cwd, env=ssrl_env(**env), capture_output=True, text=True,
                          timeout=timeout, check=False)


class SmokeRun:
    """The smoke workflow in `dir`, run twice: `crashed` with the crashing variant and
    --keep-going, then `fixed` after the variant's value was corrected (a plain run).
    `after_crash` holds the tables as the first run left them (path under results/smoke)."""

    def __init__(self, dir: Path) -> None:
        self.dir = dir
        self.results = dir / f"res {ODD_NAME}" / "smoke"
        self.crashed: subprocess.CompletedProcess | None = None
        self.fixed: subprocess.CompletedProcess | None = None
        self.after_crash: dict[str, str] = {}

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return snakemake(self.dir, "--cores", "2", "--configfile", "config/smoke.yaml",
                         "overrides.yaml", *args)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> SmokeRun:
    run = SmokeRun(copy_workflow(tmp_path_factory.mktemp("smoke") / f"wf {ODD_NAME}"))
    (run.dir / "overrides.yaml").write_text(SMOKE_OVERRIDES)
    run.crashed = run.run("--keep-going")
    # what the failed run left: tables/*.md only from successful runs, tables/partial/ always
    run.after_crash = {str(p.relative_to(run.results)): p.read_text()
                       for p in run.results.glob("tables/**/*.md")}
    # the user fixes the broken variant and runs again: only that variant is redone
    (run.dir / "overrides.yaml").write_text(SMOKE_OVERRIDES.replace(SMOKE_CRASH, SMOKE_FIXED))
    run.fixed = run.run()
    return run


def smoke_job(smoke: SmokeRun, name: str, results: Path, changes: dict | None = None) -> dict:
    """The config file the smoke workflow wrote for job `name` (e.g. "seed0/dino"), with
    `changes` merged in and its MLflow store moved under `results`: what a rule's shell
    command reads, ready for `python -m ssrl <stage> --job`."""
    import json

    from snakemake.utils import update_config

    cfg = json.loads((smoke.results / "jobs" / f"{name}.json").read_text())
    update_config(cfg, changes or {})
    cfg["job"]["results_dir"] = str(results)
    return cfg


def write_job(cfg: dict, path: Path) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="session")
def full_config() -> Callable[..., dict]:
    """full_config(overrides=None, base="config/smoke.yaml") -> the validated, default-filled
    config as the workflow hands it to `python -m ssrl` (config.yaml < base < overrides)."""
    import copy

    import yaml
    from snakemake.utils import update_config, validate

    def make(overrides: dict | None = None, base: str | None = "config/smoke.yaml") -> dict:
        cfg = yaml.safe_load((REPO / "config.yaml").read_text())
        for extra in ([yaml.safe_load((REPO / base).read_text())] if base else []) + [
                yaml.safe_load(SMOKE_OVERRIDES), overrides or {}]:
            update_config(cfg, copy.deepcopy(extra))
        validate(cfg, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
        return cfg

    return make


def tiny_corpus(root: Path, sets: tuple[str, ...] = ("train", "test", "noise", "rir"),
                **spec: float) -> Path:
    """A small built-in corpus under root/data with wave stores under root/store."""
    from ssrl.data.kaldi import read_kaldi_dir
    from ssrl.data.stores import build_wave_store
    from ssrl.data.synth import CorpusSpec, generate_corpus

    generate_corpus(root / "data", CorpusSpec(**spec))
    for name in sets:
        build_wave_store(read_kaldi_dir(root / "data" / name), root / "store" / name,
                         min_seconds=0.0, progress=False)
    return root / "store"


class FakeTestSet:
    """A labelled test set for the report tests: utterances `s<speaker>u<n>` of 0.1 s noise,
    every pair a trial, in a wave store at `store`; `score(root, row, embeddings)` scores a
    system of a systems table on it as the score step does (`replicates` speaker resamples)."""

    def __init__(self, data: Path, store: Path, n_spk: int, n_utt: int,
                 replicates: int = 200) -> None:
        from ssrl.data.kaldi import read_kaldi_dir
        from ssrl.data.stores import build_wave_store

        data.mkdir(parents=True, exist_ok=True)
        self.data, self.replicates = data, replicates
        self.utts = [f"s{s}u{u}" for s in range(n_spk) for u in range(n_utt)]
        rng = np.random.default_rng(0)
        for utt in self.utts:
            sf.write(data / f"{utt}.wav", 0.1 * rng.standard_normal(1600), 16000)
        (data / "wav.scp").write_text("".join(f"{u} {u}.wav\n" for u in self.utts))
        (data / "utt2spk").write_text("".join(f"{u} {u[:2]}\n" for u in self.utts))
        pairs = [(a, b) for i, a in enumerate(self.utts) for b in self.utts[i + 1:]]
        (data / "trials").write_text("".join(
            f"{a} {b} {'target' if a[:2] == b[:2] else 'nontarget'}\n" for a, b in pairs))
        build_wave_store(read_kaldi_dir(data), store, min_seconds=0.0, progress=False)

    @property
    def speakers(self) -> list[int]:
        """Each utterance's speaker index (rows of `centres[...]`)."""
        return [int(u[1:].split("u")[0]) for u in self.utts]

    def score(self, root: Path, row: dict, embeddings: np.ndarray) -> None:
        from ssrl.evaluation.scoring import save_embeddings, score_lists

        save_embeddings(root / row["eval"] / "emb.npz", self.utts, embeddings)
        score_lists(root / row["eval"] / "emb.npz", {"trials": self.data / "trials"},
                    root / row["metrics"], utt2spk={u: u[:2] for u in self.utts},
                    scores_dir=root / row["eval"], replicates=self.replicates, seed=0)
