"""Kaldi and WeSpeaker interoperability, through `python -m ssrl` as a user meets it:
embeddings as Kaldi ark/scp (read and written through kaldiio, both ways), score files in the
`enroll test score [label]` order, a WeSpeaker data folder with its `trials/` subfolder, and
unlabelled trial lists."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import ssrl_env

from ssrl.cli import main
from ssrl.evaluation.scoring import load_embeddings, save_embeddings
from ssrl.files import InputError
from ssrl.models.encoders import build_encoder
from ssrl.models.frontend import Frontend
from ssrl.models.model_file import save_model_file

TINY = {"preset": "ecapa_tiny", "channels": 16, "embed_dim": 8, "se_channels": 8,
        "attention_channels": 8}
IDS = ["id10001/1zcIwhmdeo4/00001.wav", "id10001/1zcIwhmdeo4/00002.wav", "id10002/C7k7C/00001.wav"]


@pytest.fixture(autouse=True)
def _keep_sigterm_handler():
    """`ssrl.cli.main` installs a SIGTERM handler; give the test process its own back."""
    saved = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, saved)


def python_m_ssrl(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ssrl", *map(str, argv)], capture_output=True,
                          text=True, env=ssrl_env(), timeout=300, check=False)


def _emb(n: int = 3, dim: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


# --- embeddings files: npz, Kaldi ark/scp ----------------------------------------------------

@pytest.mark.parametrize("name", ["emb.ark", "emb.scp"])
def test_kaldiio_reads_the_ark_and_scp_we_write(tmp_path: Path, name: str):
    emb = _emb()
    save_embeddings(tmp_path / name, IDS, emb)
    ark, scp = tmp_path / "emb.ark", tmp_path / "emb.scp"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.ark", "emb.scp"]  # no temp files
    assert not ark.read_bytes().startswith(b"PK")  # not a zip under a Kaldi name
    # the scp is `key ark:offset`, pointing at the ark under its final name
    assert [line.split()[0] for line in scp.read_text().splitlines()] == IDS
    assert all(line.split()[1].startswith(f"{ark}:") for line in scp.read_text().splitlines())
    by_scp = kaldiio.load_scp(str(scp))
    by_ark = list(kaldiio.load_ark(str(ark)))
    assert [k for k, _ in by_ark] == IDS
    for i, utt in enumerate(IDS):
        assert by_scp[utt].dtype == np.float32 and by_scp[utt].shape == (5,)
        np.testing.assert_array_equal(by_scp[utt], emb[i])
        np.testing.assert_array_equal(by_ark[i][1], emb[i])
    for path in (ark, scp):  # and we read back exactly what we wrote, in order
        ids, got = load_embeddings(path)
        assert ids == IDS
        np.testing.assert_array_equal(got, emb)


def test_we_read_what_kaldiio_writes(tmp_path: Path):
    """WeSpeaker's extraction: `WriteHelper('ark,scp:...')`, one scp over several arks
    (float64 vectors here); Kaldi's text arks (`ark,t:`) too."""
    emb = _emb(4, 6, seed=1).astype(np.float64)
    for part, rows in (("000", [0, 1]), ("001", [2, 3])):
        with kaldiio.WriteHelper(f"ark,scp:{tmp_path}/xvector_{part}.ark,"
                                 f"{tmp_path}/xvector_{part}.scp") as writer:
            for i in rows:
                writer[f"utt{i}"] = emb[i]
    (tmp_path / "xvector.scp").write_text((tmp_path / "xvector_000.scp").read_text()
                                          + (tmp_path / "xvector_001.scp").read_text())
    ids, got = load_embeddings(tmp_path / "xvector.scp")
    assert ids == ["utt0", "utt1", "utt2", "utt3"] and got.dtype == np.float32
    np.testing.assert_allclose(got, emb, rtol=1e-7)
    with kaldiio.WriteHelper(f"ark,t:{tmp_path}/text.ark") as writer:
        writer["a"], writer["b"] = np.array([0.5, -1.0]), np.array([2.0, 0.25])
    ids, got = load_embeddings(tmp_path / "text.ark")
    assert ids == ["a", "b"] and got.tolist() == [[0.5, -1.0], [2.0, 0.25]]


def test_npz_stays_the_default_format(tmp_path: Path):
    save_embeddings(tmp_path / "emb.npz", IDS, _emb())
    with np.load(tmp_path / "emb.npz") as z:
        assert z["utt_ids"].tolist() == IDS and z["emb"].shape == (3, 5)


@pytest.mark.parametrize("name", ["emb.npz", "emb.ark"])
def test_an_utterance_id_given_twice_is_refused(tmp_path: Path, name: str):
    with pytest.raises(ValueError, match=r"utterance id 'b' given 2 times"):
        save_embeddings(tmp_path / name, ["a", "b", "b"], _emb())
    assert not list(tmp_path.iterdir())


def test_a_file_that_is_not_what_its_name_says(tmp_path: Path):
    save_embeddings(tmp_path / "real.npz", IDS, _emb())
    save_embeddings(tmp_path / "real.ark", IDS, _emb())
    npz_as_ark = tmp_path / "npz.ark"
    npz_as_ark.write_bytes((tmp_path / "real.npz").read_bytes())
    with pytest.raises(InputError, match=r"npz\.ark: a zip \(\.npz\) file, not a Kaldi ark"):
        load_embeddings(npz_as_ark)
    ark_as_npz = tmp_path / "ark.npz"
    ark_as_npz.write_bytes((tmp_path / "real.ark").read_bytes())
    with pytest.raises(InputError, match=r"ark\.npz: not an \.npz file \(no zip archive\)"):
        load_embeddings(ark_as_npz)
    text = tmp_path / "text.ark"
    text.write_text("hello world\n")
    with pytest.raises(InputError, match=r"text\.ark: not a Kaldi ark of embeddings \("):
        load_embeddings(text)
    with pytest.raises(InputError, match=r"emb\.txt: unknown embeddings format"):
        save_embeddings(tmp_path / "emb.txt", IDS, _emb())
    with pytest.raises(InputError, match=r"emb\.txt: unknown embeddings format"):
        load_embeddings(tmp_path / "emb.txt")


def test_bad_kaldi_content_is_named(tmp_path: Path):
    scp = tmp_path / "moved.scp"
    scp.write_text("a elsewhere/xvector.ark:5\n")
    with pytest.raises(InputError, match=r"moved\.scp: ark file elsewhere/xvector\.ark not "
                                          r"found \(an scp names its arks relative to the "
                                          r"working directory"):
        load_embeddings(scp)
    kaldiio.save_ark(str(tmp_path / "mat.ark"), {"a": np.ones((2, 3), dtype=np.float32)})
    with pytest.raises(InputError, match=r"mat\.ark: entry 'a' is not a vector"):
        load_embeddings(tmp_path / "mat.ark")
    kaldiio.save_ark(str(tmp_path / "mixed.ark"), {"a": np.ones(3, dtype=np.float32),
                                                    "b": np.ones(4, dtype=np.float32)})
    with pytest.raises(InputError, match=r"mixed\.ark: entry 'b' is not a vector like"):
        load_embeddings(tmp_path / "mixed.ark")
    save_embeddings(tmp_path / "one.ark", ["a"], _emb(1))
    (tmp_path / "twice.scp").write_text((tmp_path / "one.scp").read_text() * 2)
    with pytest.raises(InputError, match=r"twice\.scp: utterance 'a' occurs more than once"):
        load_embeddings(tmp_path / "twice.scp")


def test_score_of_a_misnamed_file_is_one_line(capsys, tmp_path: Path):
    """What a user met before: `embed --out X.ark` wrote a zip, and `score` then said
    something about pickles. Now a zip under a Kaldi name is named as what it is."""
    save_embeddings(tmp_path / "real.npz", IDS[:2], _emb(2))
    bad = tmp_path / "emb.ark"
    bad.write_bytes((tmp_path / "real.npz").read_bytes())
    (tmp_path / "trials").write_text(f"{IDS[0]} {IDS[1]}\n")
    rc = main(["score", "--embeddings", str(bad), "--trials", str(tmp_path / "trials"),
               "--out", str(tmp_path / "metrics.json")])
    err = capsys.readouterr().err
    assert rc == 2 and err == (f"ssrl score: error: {bad}: a zip (.npz) file, not a Kaldi ark; "
                               "name it .npz\n")
    assert not (tmp_path / "metrics.json").exists()


# --- through `python -m ssrl` -----------------------------------------------------------------

def _speaker_folder(root: Path, wavs_in: str = "wav", trials: str = "trials") -> Path:
    """A Kaldi/WeSpeaker data folder: VoxCeleb-style ids, 2 speakers x 3 utterances of
    distinct tones, and `trials` (labelled, `enroll test target|nontarget`)."""
    rng = np.random.default_rng(0)
    rows, spk_rows = [], []
    for spk, f0 in (("id10001", 140.0), ("id10002", 260.0)):
        for i in range(3):
            utt = f"{spk}/vid{i}/0000{i}.wav"
            path = root / wavs_in / utt
            path.parent.mkdir(parents=True, exist_ok=True)
            t = np.arange(16000) / 16000
            x = np.sin(2 * np.pi * f0 * (1 + 0.02 * i) * t) + 0.05 * rng.standard_normal(16000)
            sf.write(path, (0.3 * x).astype(np.float32), 16000)
            rows.append(f"{utt} {path}\n")
            spk_rows.append(f"{utt} {spk}\n")
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "wav.scp").write_text("".join(rows))
    (data / "utt2spk").write_text("".join(spk_rows))
    a, b = "id10001/vid{}/0000{}.wav", "id10002/vid{}/0000{}.wav"
    pairs = [(a.format(0, 0), a.format(1, 1), "target"), (b.format(0, 0), b.format(2, 2), "target"),
             (a.format(2, 2), b.format(1, 1), "nontarget"),
             (b.format(0, 0), a.format(1, 1), "nontarget"),
             (a.format(0, 0), a.format(2, 2), "target"), (a.format(0, 0), b.format(1, 1),
                                                          "nontarget")]
    trial_file = data / trials
    trial_file.parent.mkdir(parents=True, exist_ok=True)
    trial_file.write_text("".join(f"{e} {t} {lab}\n" for e, t, lab in pairs))
    return data


def test_wespeaker_folder_through_store_baseline_and_score(tmp_path: Path):
    """A WeSpeaker data folder (trial list under `trials/`) -> `wave-store` -> Kaldi embeddings
    (`baseline --out X.ark`) -> `score --store` reads the scp and the store's trial list, and
    writes scores that WeSpeaker's compute_metrics.py reads (3rd column score, 4th label)."""
    data = _speaker_folder(tmp_path, trials="trials/vox1_O_cleaned.kaldi")
    store = tmp_path / "store"
    proc = python_m_ssrl("wave-store", "--data", data, "--out", store)
    assert proc.returncode == 0, proc.stderr
    proc = python_m_ssrl("baseline", "--store", store, "--out", tmp_path / "emb" / "xvector.ark")
    assert proc.returncode == 0, proc.stderr
    ids, emb = load_embeddings(tmp_path / "emb" / "xvector.ark")
    assert len(ids) == 6 and dict(kaldiio.load_scp(str(tmp_path / "emb" / "xvector.scp"))).keys(
    ) == set(ids)
    proc = python_m_ssrl("score", "--embeddings", tmp_path / "emb" / "xvector.scp", "--store",
                         store, "--replicates", "20", "--out", tmp_path / "score" / "metrics.json")
    assert proc.returncode == 0, proc.stderr
    assert "vox1_O_cleaned: EER" in proc.stdout
    report = json.loads((tmp_path / "score" / "metrics.json").read_text())
    m = report["trials"]["vox1_O_cleaned"]
    assert m["labelled"] and m["n_trials"] == 6 and m["n_target"] == 3
    assert m["scores"] == "scores_vox1_O_cleaned.txt"
    # WeSpeaker's compute_metrics.py: `enroll test score target|nontarget`, score in column 3
    lines = (tmp_path / "score" / m["scores"]).read_text().splitlines()
    trials = (data / "trials" / "vox1_O_cleaned.kaldi").read_text().splitlines()
    assert [ln.split()[:2] for ln in lines] == [t.split()[:2] for t in trials]
    assert [ln.split()[3] for ln in lines] == [t.split()[2] for t in trials]
    scores = {tuple(ln.split()[:2]): float(ln.split()[2]) for ln in lines}
    row = {u: e for u, e in zip(ids, emb)}
    for (e, t), s in scores.items():  # the cosine of the embeddings the scp holds
        want = row[e] @ row[t] / np.linalg.norm(row[e]) / np.linalg.norm(row[t])
        assert s == pytest.approx(float(want), abs=1e-6)


def test_unlabelled_trial_list_is_scored_without_metrics(tmp_path: Path):
    """`enroll test` lines: a score file in `enroll test score` lines, no metrics, exit 0."""
    save_embeddings(tmp_path / "emb.npz", IDS, _emb())
    trials = tmp_path / "eval_trials.txt"
    trials.write_text(f"{IDS[0]} {IDS[1]}\n{IDS[2]} {IDS[0]}\n")
    proc = python_m_ssrl("score", "--embeddings", tmp_path / "emb.npz", "--trials",
                         f"eval={trials}", "--out", tmp_path / "metrics.json")
    assert proc.returncode == 0, proc.stderr
    assert "eval: 2 trials scored (no labels: no metrics)" in proc.stdout
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["trials"] == {"eval": {"n_trials": 2, "labelled": False,
                                         "scores": "scores_eval.txt"}}
    lines = [ln.split() for ln in (tmp_path / "scores_eval.txt").read_text().splitlines()]
    assert [ln[:2] for ln in lines] == [[IDS[0], IDS[1]], [IDS[2], IDS[0]]]
    assert all(len(ln) == 3 for ln in lines)
    e = _emb() / np.linalg.norm(_emb(), axis=1, keepdims=True)
    assert [float(ln[2]) for ln in lines] == pytest.approx([e[0] @ e[1], e[2] @ e[0]], abs=1e-6)


def test_embed_to_ark_equals_embed_to_npz(tmp_path: Path):
    """`ssrl embed --out X.ark` writes Kaldi ark + scp (not a zip) with the embeddings the npz
    holds, and `score` gives the same numbers from either."""
    data = _speaker_folder(tmp_path)
    torch.manual_seed(0)
    save_model_file(tmp_path / "model.pt", build_encoder({**TINY, "n_mels": 80}), TINY,
                    Frontend("logmel"))
    for out in ("emb.npz", "emb.ark"):
        proc = python_m_ssrl("embed", "--model", tmp_path / "model.pt", "--data", data,
                             "--out", tmp_path / out, "--device", "cpu")
        assert proc.returncode == 0, proc.stderr
    ids_npz, emb_npz = load_embeddings(tmp_path / "emb.npz")
    by_scp = kaldiio.load_scp(str(tmp_path / "emb.scp"))
    assert list(by_scp) == ids_npz
    np.testing.assert_array_equal(np.stack([by_scp[u] for u in ids_npz]), emb_npz)
    reports = []
    for emb in ("emb.npz", "emb.scp"):
        rc = main(["score", "--embeddings", str(tmp_path / emb), "--test-dir", str(data),
                   "--replicates", "10", "--out", str(tmp_path / f"{emb}.json")])
        assert rc == 0
        reports.append(json.loads((tmp_path / f"{emb}.json").read_text()))
    assert reports[0] == reports[1]


def test_embed_refuses_an_unknown_output_name_before_working(tmp_path: Path, capsys):
    rc = main(["embed", "--model", str(tmp_path / "missing.pt"), "--data",
               str(tmp_path / "data"), "--out", str(tmp_path / "emb.txt")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"ssrl embed: error: {tmp_path}/emb.txt: unknown "
                                      "embeddings format")
    assert err.count("\n") == 1
