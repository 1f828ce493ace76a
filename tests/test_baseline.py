"""The crude utterance-mean MFCC baseline: scores line up with the trial list."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from sklearn.metrics import roc_curve

from ssrl.evaluation.baseline import mean_mfcc, mfcc_mean_scores
from ssrl.files import InputError, read_table, write_table
from ssrl.data.synth import CorpusSpec, generate_corpus


def test_scores_follow_trials_file(tmp_path: Path) -> None:
    spec = CorpusSpec(train_speakers=1, train_utts_per_speaker=2, sessions_per_speaker=2,
                      test_speakers=3, test_utts_per_speaker=4, min_dur=1.0, max_dur=1.5,
                      noise_files=0, rir_files=0, seed=1)
    generate_corpus(tmp_path / "c", spec)
    test = tmp_path / "c" / "test"
    scores, labels = mfcc_mean_scores(test)
    rows = read_table(test / "trials", ncols=3)
    assert scores.shape == labels.shape == (len(rows),) == (60,)  # 12 targets + 4 x 12
    assert labels.tolist() == [int(f[2] == "target") for _, f in rows]
    assert np.all(np.abs(scores) <= 1 + 1e-9)
    fpr, tpr, _ = roc_curve(labels, scores)  # the project's EER is computed elsewhere
    assert 0.0 <= np.min(np.abs(1 - tpr - fpr)) <= 1.0

    utt = rows[0][1][0]
    write_table(test / "trials_bad", [(utt, "nobody", "target")])
    with pytest.raises(InputError, match="trials_bad:1: utterance 'nobody' not in wav.scp"):
        mfcc_mean_scores(test, "trials_bad")
    write_table(test / "trials_lab", [(utt, utt, "maybe")])
    with pytest.raises(InputError, match="trials_lab:1: label must be target or nontarget"):
        mfcc_mean_scores(test, "trials_lab")


def test_mean_mfcc_ignores_loudness_and_sees_colour(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    white = rng.standard_normal(16000)
    v = mean_mfcc(white)
    assert v.shape == (20,)
    np.testing.assert_allclose(mean_mfcc(10 * white), v, atol=1e-6)  # c0 left out
    brown = np.cumsum(white)
    assert mean_mfcc(brown)[0] > v[0] + 5  # low-pass colour raises c1 a lot


def test_relative_paths_resolved_against_dir(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "wav").mkdir()
    for name in ("a", "b", "c"):
        sf.write(tmp_path / "wav" / f"{name}.wav", 0.1 * rng.standard_normal(8000), 16000)
    write_table(tmp_path / "wav.scp", [(n, f"wav/{n}.wav") for n in "abc"])
    write_table(tmp_path / "trials", [("a", "b", "nontarget"), ("a", "a", "target")])
    scores, labels = mfcc_mean_scores(tmp_path)
    assert labels.tolist() == [0, 1]
    # Centred on the mean of the two utterances, a and b point in opposite directions.
    assert scores.tolist() == pytest.approx([-1.0, 1.0])
