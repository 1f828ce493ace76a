"""Bad input as the command-line user meets it: `python -m ssrl wave-store|embed ...` exits 2 with
one line `ssrl <step>: error: <file>[:<line>]: <reason>` and no traceback (the library
functions behind it are tested in test_kaldi.py and test_store.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ssrl.cli import main
from ssrl.data.stores import WaveStore


@pytest.fixture(autouse=True)
def _keep_sigterm_handler():
    """`ssrl.cli.main` installs a SIGTERM handler; give the test process its own back."""
    saved = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, saved)


def cli(capsys, *argv: str) -> tuple[int, str]:
    """Run `ssrl <argv>` in this process; (exit status, what it printed to stderr)."""
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def python_m_ssrl(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ssrl", *argv], capture_output=True, text=True,
                          timeout=120, check=False, env={"OMP_NUM_THREADS": "1",
                                                         "PATH": "/usr/bin:/bin"})


def message_lines(err: str) -> list[str]:
    """stderr without the progress bar tqdm draws (and clears) while decoding."""
    return [line for line in err.replace("\r", "\n").splitlines()
            if line.strip() and "utt/s]" not in line]


def store_error(capsys, data: Path, out: Path, *extra: str) -> str:
    rc, err = cli(capsys, "wave-store", "--data", str(data), "--out", str(out), *extra)
    assert rc == 2
    assert not out.exists()
    lines = message_lines(err)
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def data(tmp_path: Path, make_wav) -> Path:
    """A valid folder: utterances a, b (1 s each) and a trial list."""
    d = tmp_path / "data"
    make_wav(d / "a.wav", 1.0, seed=1)
    make_wav(d / "b.wav", 1.0, seed=2)
    (d / "wav.scp").write_text("a a.wav\nb b.wav\n")
    (d / "trials").write_text("a b nontarget\n")
    return d


def add_utt(d: Path, utt: str, file: str) -> Path:
    with open(d / "wav.scp", "a") as f:
        f.write(f"{utt} {file}\n")
    return d / file


# --- audio that cannot be used ----------------------------------------------------------------
def test_corrupt_audio(capsys, data, tmp_path):
    wav = add_utt(data, "c", "c.wav")
    wav.write_bytes(b"RIFF\x00\x00\x00\x00garbage, not a wave file")
    line = store_error(capsys, data, tmp_path / "store")
    assert line.startswith(
        f"ssrl wave-store: error: {data}/wav.scp:3: {wav}: cannot decode audio (")


@pytest.mark.parametrize("kind, reason", [
    ("empty", "empty audio (0 samples)"),
    ("silent", "silent audio (all samples are zero)"),
    ("nan", "audio contains NaN or infinite samples"),
    ("short", "too short (0.250 s < min_seconds 0.5 s)"),
    ("cancelling", "silent audio after down-mixing 2 channels to mono (the channels cancel: "
                   "one is the other inverted)"),
])
def test_unusable_audio(capsys, data, tmp_path, kind, reason):
    wav = add_utt(data, "c", "c.wav")
    tone = np.sin(np.arange(16000) / 5)
    samples = {"empty": np.zeros(0), "silent": np.zeros(16000), "short": np.full(4000, 0.1),
               "nan": np.where(np.arange(16000) == 99, np.nan, 0.1),
               "cancelling": np.stack([tone, -tone], axis=1)}[kind]
    sf.write(wav, samples.astype(np.float32), 16000, subtype="FLOAT")
    line = store_error(capsys, data, tmp_path / "store")
    assert line == f"ssrl wave-store: error: {data}/wav.scp:3: {wav}: {reason}"


def test_min_seconds_is_the_users_threshold(capsys, data, tmp_path):
    line = store_error(capsys, data, tmp_path / "store", "--min-seconds", "1.5")
    assert line == (f"ssrl wave-store: error: {data}/wav.scp:1: {data}/a.wav: "
                    "too short (1.000 s < min_seconds 1.5 s)")


def test_missing_audio_file(capsys, data, tmp_path):
    add_utt(data, "c", "nowhere/c.wav")
    line = store_error(capsys, data, tmp_path / "store")
    assert line == (f"ssrl wave-store: error: {data}/wav.scp:3: audio file not found: "
                    f"{data}/nowhere/c.wav")


# --- folder files that are wrong ------------------------------------------------------------
def test_duplicate_utterance_id(capsys, data, tmp_path):
    add_utt(data, "a", "b.wav")
    line = store_error(capsys, data, tmp_path / "store")
    assert line == (f"ssrl wave-store: error: {data}/wav.scp:3: duplicate utterance id 'a' "
                    "(first on line 1)")


def test_bad_wav_scp_line(capsys, data, tmp_path):
    (data / "wav.scp").write_text("a a.wav\n# a comment\nlonely\nb b.wav\n")
    line = store_error(capsys, data, tmp_path / "store")
    assert line == f"ssrl wave-store: error: {data}/wav.scp:3: expected 2 fields, got 1: 'lonely'"


def test_trials_naming_unknown_utterances(capsys, data, tmp_path):
    (data / "trials_O").write_text("a b target\nb zz nontarget\n")
    line = store_error(capsys, data, tmp_path / "store")
    assert line == f"ssrl wave-store: error: {data}/trials_O:2: trial names unknown utterance 'zz'"


def test_missing_data_folder_and_wav_scp(capsys, tmp_path):
    line = store_error(capsys, tmp_path / "nope", tmp_path / "store")
    assert line == f"ssrl wave-store: error: {tmp_path}/nope: data folder not found"
    (tmp_path / "empty").mkdir()
    line = store_error(capsys, tmp_path / "empty", tmp_path / "store")
    assert line == (f"ssrl wave-store: error: {tmp_path}/empty/wav.scp: file not found "
                    "(every data folder needs a wav.scp)")


# --- the real command: exit status, stderr, skip report, resampling logged --------------------
def test_python_m_ssrl_store_prints_one_line_and_exits_2(data, tmp_path):
    wav = add_utt(data, "c", "c.wav")
    sf.write(wav, np.zeros(8000, dtype=np.float32), 16000)
    out = tmp_path / "store"
    proc = python_m_ssrl("wave-store", "--data", str(data), "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.endswith("\n")
    assert message_lines(proc.stderr) == [
        f"ssrl wave-store: error: {data}/wav.scp:3: {wav}: silent audio (all samples are zero)"]
    assert proc.stdout == ""
    assert not out.exists() and list(tmp_path.glob(".store.*")) == []


def test_skip_counts_bad_utterances_and_resamples_others(data, tmp_path, make_wav):
    t = np.arange(16000) / 16000
    tone = (0.4 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    sf.write(add_utt(data, "stereo", "stereo.wav"), np.stack([tone, tone / 2], 1), 16000)
    make_wav(add_utt(data, "lo", "lo.wav"), 1.0, sr=8000, freq=300)
    make_wav(add_utt(data, "hi", "hi.wav"), 1.0, sr=48000, freq=300)
    add_utt(data, "broken", "broken.wav").write_bytes(b"not audio")
    sf.write(add_utt(data, "quiet", "quiet.wav"), np.zeros(16000, dtype=np.float32), 16000)
    sf.write(add_utt(data, "short", "short.wav"), tone[:3200], 16000)
    with open(data / "trials", "a") as f:
        f.write("a quiet target\nshort b nontarget\nstereo hi target\n")
    out = tmp_path / "store"
    proc = python_m_ssrl("wave-store", "--data", str(data), "--out", str(out), "--on-bad", "skip")
    assert proc.returncode == 0, proc.stderr
    assert f"{data}/stereo.wav: down-mixed 2 channels to mono" in proc.stderr
    assert f"{data}/lo.wav: resampled 8000 Hz -> 16000 Hz" in proc.stderr
    assert f"{data}/hi.wav: resampled 48000 Hz -> 16000 Hz" in proc.stderr

    store = WaveStore(out)
    assert store.utt_ids == ["a", "b", "stereo", "lo", "hi"]
    assert store.lengths.tolist() == [16000] * 5
    np.testing.assert_allclose(store.full(2), 0.75 * tone, atol=1.5 / 32768)
    for i in (3, 4):  # the 300 Hz tone survives resampling (away from the edges)
        np.testing.assert_allclose(store.full(i)[500:-500], 0.5 * np.sin(2 * np.pi * 300 * t)
                                   [500:-500], atol=0.01)
    report = json.loads((out / "meta.json").read_text())["report"]
    assert report["n_utts"] == 5 and report["n_skipped"] == 3
    assert [(s["utt"], s["reason"].split(" (")[0]) for s in report["skipped"]] == [
        ("broken", "cannot decode audio"), ("quiet", "silent audio"), ("short", "too short")]
    assert report["skipped"][2]["path"] == f"{data}/short.wav"
    assert report["n_trials"] == {"trials": 2} and report["trials_dropped"] == {"trials": 2}
    assert (out / "trials" / "trials").read_text() == "a b nontarget\nstereo hi target\n"


# --- model files ------------------------------------------------------------------------------
def _model_file(path: Path, weights_cfg: dict, claimed_cfg: dict) -> Path:
    from ssrl.models.encoders import build_encoder
    from ssrl.models.frontend import Frontend
    from ssrl.models.model_file import save_model_file

    torch.manual_seed(0)
    encoder = build_encoder({**weights_cfg, "n_mels": 16})
    save_model_file(path, encoder, claimed_cfg, Frontend("logmel", n_mels=16))
    return path


TINY = {"preset": "ecapa_tiny", "channels": 16, "embed_dim": 8, "se_channels": 8,
        "attention_channels": 8}


def test_embed_with_a_model_of_another_configuration(capsys, data, tmp_path):
    # weights of a 16-channel encoder in a file that claims 24 channels
    model = _model_file(tmp_path / "model.pt", TINY, {**TINY, "channels": 24})
    out = tmp_path / "emb.npz"
    rc, err = cli(capsys, "embed", "--model", str(model), "--data", str(data), "--out", str(out))
    assert rc == 2 and not out.exists()
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"ssrl embed: error: {model}: checkpoint does not match the "
                          "configured model (")
    assert err.endswith("was it trained with another model config?\n")


def test_embed_with_a_training_checkpoint_or_garbage(capsys, data, tmp_path):
    ckpt = tmp_path / "last.pt"
    torch.save({"student": {}, "epoch": 1, "step": 0}, ckpt)
    rc, err = cli(capsys, "embed", "--model", str(ckpt), "--data", str(data),
                  "--out", str(tmp_path / "emb.npz"))
    assert rc == 2
    assert err == (f"ssrl embed: error: {ckpt}: not a model file (no encoder weights or model "
                   "config; a training checkpoint? give the stage's model.pt)\n")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a torch file")
    rc, err = cli(capsys, "embed", "--model", str(junk), "--data", str(data),
                  "--out", str(tmp_path / "emb.npz"))
    assert rc == 2 and err.startswith(f"ssrl embed: error: {junk}: cannot load model file (")
    rc, err = cli(capsys, "embed", "--model", str(tmp_path / "none.pt"), "--data", str(data),
                  "--out", str(tmp_path / "emb.npz"))
    assert (rc, err) == (2, f"ssrl embed: error: {tmp_path}/none.pt: model file not found\n")


def test_embed_of_a_kaldi_folder_works_with_a_matching_model(capsys, data, tmp_path):
    model = _model_file(tmp_path / "model.pt", TINY, TINY)
    out = tmp_path / "emb.npz"
    rc, err = cli(capsys, "embed", "--model", str(model), "--data", str(data), "--out", str(out))
    assert rc == 0, err
    with np.load(out) as z:
        assert z["utt_ids"].tolist() == ["a", "b"] and z["emb"].shape == (2, 8)


# --- nothing the user owns is deleted -----------------------------------------------------------
@pytest.fixture
def thesis(tmp_path: Path) -> Path:
    """A folder of the user's that an output path must never replace."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("\\chapter{Results}\n")
    return folder


def _refused(argv: list[str]) -> str:
    """The one line `python -m ssrl` prints when it refuses (exit 2, no traceback)."""
    proc = python_m_ssrl(*argv)
    assert proc.returncode == 2, proc.stderr
    lines = message_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_store_refuses_to_replace_a_folder_it_did_not_make(capsys, data, thesis, tmp_path):
    line = _refused(["wave-store", "--data", str(data), "--out", str(thesis)])
    assert line == (f"ssrl wave-store: error: {thesis}: folder exists and was not written by "
                    "ssrl; refusing to replace it (choose another output folder, or remove it "
                    "yourself)")
    assert (thesis / "thesis.tex").read_text() == "\\chapter{Results}\n"
    # its own input: the user's wav.scp and audio stay
    line = _refused(["wave-store", "--data", str(data), "--out", str(data)])
    assert line == (f"ssrl wave-store: error: {data}: the output would overlap the input "
                    f"{data} (--data); choose an output path outside it")
    assert (data / "wav.scp").is_file() and (data / "a.wav").is_file()
    # a folder ssrl made (it has the marker) is replaced: reruns work
    out = tmp_path / "store"
    assert cli(capsys, "wave-store", "--data", str(data), "--out", str(out))[0] == 0
    assert cli(capsys, "wave-store", "--data", str(data), "--out", str(out))[0] == 0
    assert WaveStore(out).utt_ids == ["a", "b"]


def test_features_and_prepare_refuse_a_users_folder(capsys, data, thesis, tmp_path):
    store = tmp_path / "store"
    assert cli(capsys, "wave-store", "--data", str(data), "--out", str(store))[0] == 0
    line = _refused(["feature-store", "--store", str(store), "--out", str(thesis)])
    assert line.startswith(f"ssrl feature-store: error: {thesis}: folder exists and was not")
    line = _refused(["feature-store", "--store", str(store), "--out", str(store)])
    assert "the output would overlap the input" in line
    assert WaveStore(store).utt_ids == ["a", "b"]
    for source in ({"source": "kaldi", "kaldi": {"train": str(data), "test": str(data)}},
                   {"source": "builtin", "builtin": {"train_speakers": 2,
                                                     "train_utts_per_speaker": 2,
                                                     "sessions_per_speaker": 2,
                                                     "test_speakers": 2,
                                                     "test_utts_per_speaker": 2}}):
        job = tmp_path / "prepare.json"
        job.write_text(json.dumps({"data": source}))
        line = _refused(["prepare", "--job", str(job), "--set", "train", "--out", str(thesis)])
        assert line.startswith(f"ssrl prepare: error: {thesis}: folder exists and was not")
        assert sorted(p.name for p in thesis.iterdir()) == ["thesis.tex"]
    job.write_text(json.dumps({"data": {"source": "kaldi", "kaldi": {
        "train": str(data), "test": str(data)}}}))
    line = _refused(["prepare", "--job", str(job), "--set", "test", "--out",
                     str(data / "prepared")])
    assert "the output would overlap the input" in line
    assert sorted(p.name for p in data.iterdir()) == ["a.wav", "b.wav", "trials", "wav.scp"]


# --- audio that used to be accepted quietly -------------------------------------------------------
def test_truncated_wav_is_refused(capsys, data, tmp_path):
    wav = data / "a.wav"
    raw = wav.read_bytes()
    wav.write_bytes(raw[: len(raw) // 2])
    line = store_error(capsys, data, tmp_path / "store")
    assert line == (f"ssrl wave-store: error: {data}/wav.scp:1: {wav}: truncated WAV file "
                    f"(header declares {len(raw) - 44} bytes of audio, {len(raw) // 2 - 44} "
                    "present)")


def test_float_audio_beyond_full_scale_is_scaled_and_counted(capsys, data, tmp_path):
    t = np.arange(16000) / 16000
    loud = (3.0 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    sf.write(data / "b.wav", loud, 16000, subtype="FLOAT")
    out = tmp_path / "store"
    proc = python_m_ssrl("wave-store", "--data", str(data), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"{data}/wav.scp: 1 utterance(s) had samples beyond [-1, 1]" in proc.stderr
    store = WaveStore(out)
    assert store.meta["report"]["n_rescaled"] == 1
    b = store.full(store.index_of("b"))
    np.testing.assert_allclose(b, loud / 3.0, atol=2 / 32768)  # the shape kept, not clipped


def test_errors_inside_the_workflow_name_the_users_file(capsys, tmp_path, make_wav):
    """A bad file found while the store is built names the user's wav.scp line, not the
    prepared copy (results/<exp>/data/...)."""
    mine = tmp_path / "mine"
    make_wav(mine / "a.wav", 1.0, seed=1)
    make_wav(mine / "b.wav", 1.0, seed=2)
    (mine / "c.wav").write_bytes(b"RIFF\x00\x00\x00\x00not a wave")
    (mine / "wav.scp").write_text("# my corpus\n\na a.wav\n\nb b.wav\nc c.wav\n")
    job = tmp_path / "prepare.json"
    job.write_text(json.dumps({"data": {"source": "kaldi", "kaldi": {
        "train": str(mine), "test": str(mine)}}}))
    assert cli(capsys, "prepare", "--job", str(job), "--set", "train", "--out",
               str(tmp_path / "prepared"))[0] == 0
    line = store_error(capsys, tmp_path / "prepared", tmp_path / "store")
    assert line.startswith(f"ssrl wave-store: error: {mine}/wav.scp:6: {mine}/c.wav: "
                           "cannot decode audio (")


# --- scoring ------------------------------------------------------------------------------------
@pytest.fixture
def embeddings(tmp_path: Path) -> Path:
    from ssrl.evaluation.scoring import save_embeddings

    path = tmp_path / "emb.npz"
    save_embeddings(path, ["a", "b", "c"], np.eye(3, dtype=np.float32))
    return path


def test_score_takes_a_trial_path_that_holds_an_equals_sign(capsys, tmp_path, embeddings):
    folder = tmp_path / "run=1"
    folder.mkdir()
    (folder / "trials").write_text("a b target\na c nontarget\n")
    out = tmp_path / "m.json"
    rc, _ = cli(capsys, "score", "--embeddings", str(embeddings), "--trials",
                str(folder / "trials"), "--replicates", "0", "--out", str(out))
    assert rc == 0
    assert json.loads(out.read_text())["trials"]["trials"]["n_trials"] == 2
    rc, _ = cli(capsys, "score", "--embeddings", str(embeddings), "--trials",
                f"mine={folder / 'trials'}", "--replicates", "0", "--out", str(out))
    assert rc == 0 and list(json.loads(out.read_text())["trials"]) == ["mine"]


def test_a_list_without_targets_is_one_line_and_writes_nothing(capsys, tmp_path, embeddings):
    trials = tmp_path / "trials"
    trials.write_text("a b nontarget\na c nontarget\n")
    out = tmp_path / "scored" / "metrics.json"
    rc, err = cli(capsys, "score", "--embeddings", str(embeddings), "--trials", str(trials),
                  "--out", str(out))
    assert rc == 2
    assert message_lines(err) == [
        f"ssrl score: error: {trials}: no target trials: EER and minDCF are undefined (remove "
        "the labels to score it without metrics)"]
    assert not (tmp_path / "scored").exists()


# --- no step writes over (or into) its own inputs ----------------------------------------------
def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture
def user(tmp_path: Path, make_wav) -> Path:
    """The user's folder U: a Kaldi folder with trials, embeddings, a model, a store-like
    folder S and a job file: every input a step can be given."""
    u = tmp_path / "U"
    make_wav(u / "a.wav", 1.0, seed=1)
    make_wav(u / "b.wav", 1.0, seed=2)
    make_wav(u / "c.wav", 1.0, seed=3)
    (u / "wav.scp").write_text("a a.wav\nb b.wav\nc c.wav\n")
    (u / "trials").write_text("a b nontarget\na c target\n")
    (u / "scores_x.txt").write_text("a b nontarget\na c target\n")
    np.savez(u / "emb.npz", utt_ids=np.array(["a", "b", "c"]),
             emb=np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32))
    _model_file(u / "model.pt", TINY, TINY)
    (u / "S").mkdir()
    (u / "S" / "index.npz").write_bytes(b"the store's index")
    (u / "job.json").write_text("{}\n")
    return u


def overwrite_cases(u: Path) -> list[list[str]]:
    """One command per step (and the four cases of issue 19) whose output is one of its
    inputs, lies inside one, or contains one."""
    return [
        ["embed", "--model", f"{u}/model.pt", "--data", str(u), "--out", f"{u}/wav.scp"],
        ["score", "--embeddings", f"{u}/emb.npz", "--trials", f"{u}/trials",
         "--replicates", "0", "--out", f"{u}/trials"],
        ["score", "--embeddings", f"{u}/emb.npz", "--trials", f"{u}/trials",
         "--replicates", "0", "--out", f"{u}/emb.npz"],
        ["embed", "--model", f"{u}/model.pt", "--data", f"{u}/S", "--out", f"{u}/S/index.npz"],
        ["embed", "--model", f"{u}/model.pt", "--feats", f"{u}/S", "--out", f"{u}/S/e.ark"],
        ["embed", "--model", f"{u}/model.pt", "--data", str(u), "--out", f"{u}/model.scp"],
        ["embed", "--model", f"{u}/model.pt", "--data", f"{u}/wav.scp", "--out", f"{u}/a.wav"],
        ["baseline", "--store", f"{u}/wav.scp", "--out", f"{u}/e.npz"],
        ["score", "--embeddings", f"{u}/emb.npz", "--trials", f"x={u}/scores_x.txt",
         "--replicates", "0", "--scores-dir", str(u), "--out", f"{u}/../m.json"],
        ["score", "--embeddings", f"{u}/emb.npz", "--trials", f"{u}/trials", "--replicates",
         "0", "--out", f"{u}/job.json", "--job", f"{u}/job.json"],
        ["wave-store", "--data", str(u), "--out", f"{u}/S"],
        ["feature-store", "--store", f"{u}/S", "--out", f"{u}/S/feats"],
        ["baseline", "--store", f"{u}/S", "--out", f"{u}/S/index.npz"],
        ["cluster", "--job", f"{u}/job.json", "--model", f"{u}/model.pt", "--train", f"{u}/S",
         "--out", str(u)],
        ["dino", "--job", f"{u}/job.json", "--train", f"{u}/S", "--noise", str(u),
         "--out", f"{u}/dino"],
        ["ssrl", "--job", f"{u}/job.json", "--train", f"{u}/S", "--init", f"{u}/model.pt",
         "--labels", f"{u}/emb.npz", "--out", f"{u}/emb.npz"],
        ["iterative", "--job", f"{u}/job.json", "--train", f"{u}/S", "--init",
         f"{u}/model.pt", "--labels", f"{u}/emb.npz", "--out", f"{u}/S/run"],
        ["supervised", "--job", f"{u}/job.json", "--train", f"{u}/S", "--init",
         f"{u}/model.pt", "--dev", f"{u}/S", "--out", str(u.parent)],
        ["export", "--model", f"{u}/model.pt", "--out-dir", str(u)],
        ["tables", "--job", f"{u}/job.json", "--root", str(u), "--out-dir", str(u)],
        ["plots", "--job", f"{u}/job.json", "--root", f"{u}/S", "--out-dir", str(u)],
    ]


def test_no_step_writes_over_its_inputs(user):
    before = _snapshot(user.parent)
    steps = set()
    for argv in overwrite_cases(user):
        line = _refused(argv)
        steps.add(argv[0])
        assert line.startswith(f"ssrl {argv[0]}: error: "), line
        assert "the output would overlap the input " in line, line
        assert _snapshot(user.parent) == before, argv
    # every step with an output path and an input is covered
    assert steps == {"embed", "score", "wave-store", "feature-store", "baseline", "cluster",
                     "dino", "ssrl", "iterative", "supervised", "export", "tables", "plots"}


def test_the_overwrite_message_names_output_input_and_option(user):
    assert _refused(["embed", "--model", f"{user}/model.pt", "--data", str(user),
                     "--out", f"{user}/wav.scp"]) == (
        f"ssrl embed: error: {user}/wav.scp: the output would overlap the input {user} "
        "(--data); choose an output path outside it")
    assert _refused(["score", "--embeddings", f"{user}/emb.npz", "--trials", f"{user}/trials",
                     "--out", f"{user}/trials"]) == (
        f"ssrl score: error: {user}/trials: the output would overlap the input {user}/trials "
        "(--trials); choose an output path outside it")
    # a symbolic link to an input is that input
    link = user.parent / "link.npz"
    link.symlink_to(user / "emb.npz")
    line = _refused(["score", "--embeddings", f"{user}/emb.npz", "--trials", f"{user}/trials",
                     "--out", str(link)])
    assert line.startswith(f"ssrl score: error: {link}: the output would overlap the input")


def test_outputs_beside_the_inputs_are_fine(capsys, user, tmp_path):
    """The rule refuses overlaps only: scores next to the user's trials, tables inside the
    experiment folder they summarise."""
    rc, err = cli(capsys, "embed", "--model", f"{user}/model.pt", "--data", str(user),
                  "--out", str(tmp_path / "emb_new.npz"))
    assert rc == 0, err
    rc, err = cli(capsys, "score", "--embeddings", f"{user}/emb.npz", "--trials",
                  f"{user}/trials", "--replicates", "0", "--scores-dir", str(user),
                  "--out", str(tmp_path / "metrics.json"))
    assert rc == 0, err
    assert (user / "scores_trials.txt").read_text().splitlines()[0].split()[:2] == ["a", "b"]


# --- corrupt, diverged or edited model files; non-finite embeddings ----------------------------
def _edit_model(path: Path, edit, reseal: bool) -> None:
    """Change a model file's content as a user (or a bad disk) might; `reseal` recomputes the
    checksum, as a file saved by a training that diverged would have one."""
    from ssrl.models.model_file import checksum

    model = torch.load(path, weights_only=True)
    edit(model)
    if reseal:
        model["checksum"] = checksum(model)
    torch.save(model, path)


def _embed(model: Path, data: Path, out: Path) -> subprocess.CompletedProcess:
    return python_m_ssrl("embed", "--model", str(model), "--data", str(data), "--out", str(out))


def test_a_model_file_with_flipped_bytes_is_refused(data, tmp_path):
    model = _model_file(tmp_path / "model.pt", TINY, TINY)
    good = _embed(model, data, tmp_path / "good.npz")
    assert good.returncode == 0, good.stderr
    # the middle of the largest tensor's bytes (a small file's middle may be a zip header,
    # which torch itself reports: "cannot load model file (...)", also one line)
    import zipfile

    with zipfile.ZipFile(model) as z:
        big = max((i for i in z.infolist() if "/data/" in i.filename),
                  key=lambda i: i.file_size)
    raw = bytearray(model.read_bytes())
    name_len, extra_len = np.frombuffer(raw[big.header_offset + 26:big.header_offset + 30],
                                        dtype="<u2")
    middle = big.header_offset + 30 + int(name_len) + int(extra_len) + big.file_size // 2 - 32
    assert big.file_size >= 256
    raw[middle:middle + 64] = bytes(b ^ 0xFF for b in raw[middle:middle + 64])
    model.write_bytes(bytes(raw))
    out = tmp_path / "emb.npz"
    line = _refused(["embed", "--model", str(model), "--data", str(data), "--out", str(out)])
    assert line == (f"ssrl embed: error: {model}: model file is corrupt: the checksum of its "
                    "weights and config does not match (changed after training); restore or "
                    "retrain it")
    assert not out.exists()


@pytest.mark.parametrize("edit, reseal, reason", [
    (lambda m: m["encoder"][next(iter(m["encoder"]))].view(-1).__setitem__(0, float("nan")),
     True, "model weight {} holds NaN or infinite values (the training diverged); retrain it"),
    (lambda m: m["encoder"][next(iter(m["encoder"]))].view(-1).__setitem__(0, float("inf")),
     False, "model file is corrupt: the checksum"),
    (lambda m: m["model_cfg"].__setitem__("preset", "ecapa_huge"), True,
     "invalid model metadata (unknown model preset 'ecapa_huge'; known: "),
    (lambda m: m["frontend"].__setitem__("kind", "mfcc"), True, "invalid model metadata ("),
    (lambda m: m["frontend"].__setitem__("n_mels", 40), True,
     "invalid model metadata (model n_mels 16 but front end n_mels 40)"),
    (lambda m: m.__setitem__("meta", "dino"), True,
     "invalid model metadata (meta is not a mapping)"),
    (lambda m: m["model_cfg"].__setitem__("n_mels", 80), False, "model file is corrupt: the "),
])
def test_diverged_or_edited_model_files_are_one_line(data, tmp_path, edit, reseal, reason):
    model = _model_file(tmp_path / "model.pt", TINY, TINY)
    _edit_model(model, edit, reseal)
    first = next(iter(torch.load(model, weights_only=True)["encoder"]))
    line = _refused(["embed", "--model", str(model), "--data", str(data),
                     "--out", str(tmp_path / "emb.npz")])
    assert line.startswith(f"ssrl embed: error: {model}: " + reason.format(first)), line


def test_a_model_file_without_checksum_loads_with_a_warning(data, tmp_path):
    """Model files written before format 2 have no checksum: accepted, with a warning that
    says their weights are not verified (docs/architecture.md)."""
    model = _model_file(tmp_path / "model.pt", TINY, TINY)
    _model_file(tmp_path / "same.pt", TINY, TINY)
    _edit_model(model, lambda m: (m.pop("checksum"), m.__setitem__("format", 1)), False)
    proc = _embed(model, data, tmp_path / "old.npz")
    assert proc.returncode == 0, proc.stderr
    assert f"{model}: model file without a checksum (written before model file format 2)" \
        in proc.stderr
    assert _embed(tmp_path / "same.pt", data, tmp_path / "new.npz").returncode == 0
    with np.load(tmp_path / "old.npz") as old, np.load(tmp_path / "new.npz") as new:
        np.testing.assert_array_equal(old["emb"], new["emb"])


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_score_refuses_non_finite_embeddings(tmp_path, value):
    emb = tmp_path / "emb.npz"
    vectors = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    vectors[1, 0] = value
    np.savez(emb, utt_ids=np.array(["a", "b", "c"]), emb=vectors)
    (tmp_path / "trials").write_text("a b nontarget\na c target\n")
    out = tmp_path / "metrics.json"
    line = _refused(["score", "--embeddings", str(emb), "--trials", str(tmp_path / "trials"),
                     "--out", str(out)])
    assert line == (f"ssrl score: error: {emb}: 1 embedding(s) hold NaN or infinite values "
                    "(first: utterance 'b')")
    assert not out.exists()


def test_embed_feats_refuses_a_feature_store_of_another_front_end(capsys, data, tmp_path):
    model = _model_file(tmp_path / "model.pt", TINY, TINY)  # log-mel, 16 bands
    store = tmp_path / "store"
    assert cli(capsys, "wave-store", "--data", str(data), "--out", str(store))[0] == 0
    for name, features in (("fbank", {"frontend": "fbank", "n_mels": 16}),
                           ("logmel", {"frontend": "logmel", "n_mels": 16})):
        job = tmp_path / f"{name}.json"
        job.write_text(json.dumps({"features": features}))
        rc, err = cli(capsys, "feature-store", "--job", str(job), "--store", str(store),
                      "--out", str(tmp_path / name))
        assert rc == 0, err
    out = tmp_path / "emb.npz"
    line = _refused(["embed", "--model", str(model), "--feats", str(tmp_path / "fbank"),
                     "--out", str(out)])
    assert line == (f"ssrl embed: error: {tmp_path}/fbank/meta.json: features of another front "
                    f"end than the model {model} (kind 'fbank' here, 'logmel' in the model); "
                    "rebuild the feature store with the model's front end, or embed the wave "
                    "store (--data)")
    assert not out.exists()
    rc, err = cli(capsys, "embed", "--model", str(model), "--feats", str(tmp_path / "logmel"),
                  "--out", str(out))
    assert rc == 0, err
    with np.load(out) as z:
        assert z["utt_ids"].tolist() == ["a", "b"] and np.isfinite(z["emb"]).all()
