"""The workflow on a user's own Kaldi folders (`data.source: kaldi`): the user's lists and audio
are inputs of the DAG. After a finished smoke run, an edited WAV, trial label or utt2spk line
reruns exactly the jobs that depend on it -- checked with `snakemake -n` before each real run --
and the tables change; an unchanged (or merely touched) corpus reruns nothing. The floor gets a
new MLflow run when its test data change instead of a second EER appended to the old one."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import mlflow
import numpy as np
import pytest
import soundfile as sf
from conftest import ODD_NAME, copy_workflow, snakemake
from test_workflow import table_rows

pytestmark = pytest.mark.slow

#: The Kaldi folders: a small built-in corpus written as plain folders (wav.scp with relative
#: paths, utt2spk, utt2sess, trials), in a folder whose name needs quoting everywhere.
CORPUS = dict(train_speakers=4, train_utts_per_speaker=4, sessions_per_speaker=2,
              test_speakers=3, test_utts_per_speaker=3, dev_speakers=2, dev_utts_per_speaker=2,
              noise_files=3, rir_files=1, min_dur=1.5, max_dur=3.0)
#: Merged over config/smoke.yaml: the smallest run that still has every kind of system.
OVERRIDES = """\
results_dir: {results}
data:
  source: kaldi
  kaldi: {kaldi}
dino: {{epochs: 1, steps_per_epoch: 1, warmup_epochs: 0}}
cluster: {{k: 6}}
ssrl: {{epochs: 2, steps_per_epoch: 1, batch_size: 8, eval_every: 2, warm_epochs: 1,
       hold_epochs: 2, queue_len: 1}}
iterative: {{epochs: 1, rounds: 1}}
eval: {{bootstrap: {{replicates: 100}}}}
ablation: {{variants: []}}
"""
TRAINED = ["seed0/dino", "seed0/iterative/e1/round1", "seed0/ssrl/full~True", "seed0/supervised"]
#: What an edit of the test set reruns: its preparation, store and features, the floor, every
#: system's test embeddings and scores, the tables and plots. No training, no other set.
TEST_SET_JOBS = Counter({"prepare_data set=test": 1, "test_wave_store": 1,
                         "feature_store set=test": 1, "baseline": 1, "embed_test": 4,
                         "score": 5, "tables": 1, "plots": 1, "all": 1})
#: What an edit of the training set reruns: its preparation and store, every training job and
#: what reads a model (embeddings, scores of the trained systems, export), tables and plots.
#: Not the test set's preparation, store or features, nor the floor or its score.
TRAIN_SET_JOBS = Counter({"prepare_data set=train": 1, "wave_store set=train": 1, "dino": 1,
                          "cluster": 1, "iterative_round": 1, "ssrl": 1, "supervised": 1,
                          "embed_test": 4, "score": 4, "export_ssrl": 1, "tables": 1,
                          "plots": 1, "all": 1})


class KaldiRun:
    def __init__(self, root: Path) -> None:
        self.corpus = root / f"corpus {ODD_NAME}"
        self.dir = copy_workflow(root / f"wf {ODD_NAME}")
        self.results = self.dir / f"res {ODD_NAME}" / "smoke"

    def run(self, *args: str):
        return snakemake(self.dir, "--cores", "2", "--configfile", "config/smoke.yaml",
                         "overrides.yaml", *args, timeout=1800)

    def planned(self) -> Counter:
        """The jobs `snakemake -n` would run."""
        proc = self.run("-n")
        assert proc.returncode == 0, proc.stderr[-3000:]
        return jobs_in(proc.stdout + proc.stderr)

    def metrics(self, system: str) -> dict:
        return json.loads((self.results / "eval" / system / "metrics.json").read_text())


def jobs_in(log: str) -> Counter:
    """The jobs a Snakemake log (or dry run) lists: rule name, with the data set for the data
    rules -> count (the job config files, rewritten unchanged, left out)."""
    jobs: Counter = Counter()
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", log)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block).group(1)
        if rule != "job_config":
            found = re.search(r"wildcards: (set=\w+)", block)
            jobs[f"{rule} {found.group(1)}" if found else rule] += 1
    return jobs


@pytest.fixture(scope="module")
def kaldi_run(tmp_path_factory: pytest.TempPathFactory) -> KaldiRun:
    from ssrl.data.synth import CorpusSpec, generate_corpus

    run = KaldiRun(tmp_path_factory.mktemp("kaldi"))
    generate_corpus(run.corpus, CorpusSpec(**CORPUS))
    kaldi = {name: str(run.corpus / name) for name in ("train", "dev", "test", "noise", "rir")}
    (run.dir / "overrides.yaml").write_text(OVERRIDES.format(
        results=json.dumps(f"res {ODD_NAME}"), kaldi=json.dumps(kaldi)))  # JSON is YAML
    proc = run.run()
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def digest_times(run: KaldiRun) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (run.results / "inputs").glob("*.json")}


def test_nothing_reruns_when_nothing_changed(kaldi_run):
    before = digest_times(kaldi_run)
    assert sorted(before) == ["dev.json", "noise.json", "rir.json", "test.json", "train.json"]
    assert kaldi_run.planned() == Counter()
    # every file of the corpus touched (new modification times, the same bytes): still nothing
    for file in kaldi_run.corpus.rglob("*"):
        if file.is_file():
            os.utime(file)
    proc = kaldi_run.run("-n")
    assert "Nothing to be done (all requested files are present and up to date)." in (
        proc.stdout + proc.stderr), proc.stdout[-3000:]
    assert digest_times(kaldi_run) == before


def replace_wav(file: Path, seed: int) -> None:
    """New samples at the same path, the same size and the old modification time (what a
    careless copy or a restored backup does): only its change time and bytes tell."""
    st = file.stat()
    x, sr = sf.read(file)
    sf.write(file, np.random.default_rng(seed).uniform(-0.5, 0.5, len(x)), sr,
             subtype="PCM_16")
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file.stat().st_size == st.st_size


def baseline_runs(run: KaldiRun) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{run.results.parent / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    found = client.search_runs([exp.experiment_id], "attributes.run_name = 'baseline'",
                               order_by=["attributes.start_time ASC"])
    return [(r, client.get_metric_history(r.info.run_id, "test/eer")) for r in found]


def test_edits_rerun_exactly_what_depends_on_them(kaldi_run):
    test_dir = kaldi_run.corpus / "test"
    floor_before = kaldi_run.metrics("baseline")["trials"]["trials"]
    table_before = (kaldi_run.results / "tables" / "main.md").read_text()
    dino_model = (kaldi_run.results / "seed0/dino/model.pt").read_bytes()
    [(first_run, history)] = baseline_runs(kaldi_run)
    assert len(history) == 1

    # 1. a test WAV replaced in place (modification time restored)
    utt, rel = (test_dir / "wav.scp").read_text().splitlines()[0].split()
    replace_wav(test_dir / rel, seed=5)
    assert kaldi_run.planned() == TEST_SET_JOBS

    # 2. then a trial label flipped: the same jobs (trial lists travel with the test store)
    trials = (test_dir / "trials").read_text().splitlines()
    target = next(i for i, line in enumerate(trials) if line.endswith(" target"))
    trials[target] = trials[target].replace(" target", " nontarget")
    (test_dir / "trials").write_text("\n".join(trials) + "\n")
    assert kaldi_run.planned() == TEST_SET_JOBS

    # ... which run for real: new test numbers everywhere, no model retrained
    proc = kaldi_run.run()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert jobs_in(proc.stdout + proc.stderr) == TEST_SET_JOBS  # what ran is what was planned
    assert (kaldi_run.results / "seed0/dino/model.pt").read_bytes() == dino_model
    floor = kaldi_run.metrics("baseline")["trials"]["trials"]
    assert floor["n_target"] == floor_before["n_target"] - 1
    table = table_rows((kaldi_run.results / "tables" / "main.md").read_text())
    old_table = table_rows(table_before)
    floor_row = "MFCC statistics (classical floor)"
    assert table[floor_row] != old_table[floor_row]
    for system in TRAINED:
        assert kaldi_run.metrics(system)["trials"]["trials"]["n_target"] == floor["n_target"]
    # the floor's changed test data opened a new MLflow run: one EER per run, each its own
    runs = baseline_runs(kaldi_run)
    assert [r.info.run_id for r, _ in runs][0] == first_run.info.run_id
    assert len(runs) == 2 and [len(h) for _, h in runs] == [1, 1]
    assert runs[1][1][0].value == floor["eer"] and runs[0][1][0].value == floor_before["eer"]
    assert runs[0][0].data.tags["mlflow.runName"] == "baseline"
    assert kaldi_run.planned() == Counter()  # and now nothing is left to do

    # 3. an utt2spk line of the training set edited: the training chain, not the test set
    utt2spk = (kaldi_run.corpus / "train" / "utt2spk").read_text().splitlines()
    utt, spk = utt2spk[0].split()
    other = next(line.split()[1] for line in utt2spk if line.split()[1] != spk)
    utt2spk[0] = f"{utt} {other}"
    (kaldi_run.corpus / "train" / "utt2spk").write_text("\n".join(utt2spk) + "\n")
    assert kaldi_run.planned() == TRAIN_SET_JOBS
