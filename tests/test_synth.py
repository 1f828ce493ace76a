"""The built-in corpus: deterministic, well-formed Kaldi folders, cross-session trials."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ssrl.data import synth
from ssrl.data.synth import CorpusSpec, generate_corpus
from ssrl.files import InputError, read_json, read_map, read_table

SMALL = dict(train_speakers=3, train_utts_per_speaker=4, sessions_per_speaker=2,
             test_speakers=4, test_utts_per_speaker=4, min_dur=1.0, max_dur=2.0,
             nontargets_per_target=3, noise_files=4, rir_files=2, seed=7)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("c") / "corpus"
    generate_corpus(out, CorpusSpec(**SMALL))
    return out


def test_same_seed_same_bytes_other_seed_differs(corpus: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_corpus(again, CorpusSpec(**SMALL))
    assert _digest(again) == _digest(corpus)
    other = tmp_path / "other"
    generate_corpus(other, CorpusSpec(**SMALL | {"seed": 8}))
    a, b = _digest(corpus), _digest(other)
    assert a.keys() == b.keys()
    wavs = [k for k in a if k.endswith(".wav")]
    assert all(a[k] != b[k] for k in wavs)


def test_layout_and_summary(corpus: Path) -> None:
    assert sorted(p.name for p in corpus.iterdir()) == [
        ".ssrl-output", "dev", "noise", "rir", "summary.json", "test", "train"]
    assert (corpus / "dev" / "wav.scp").read_text() == ""  # no dev speakers in this spec
    summary = read_json(corpus / "summary.json")
    assert summary["seed"] == 7
    assert summary["train"]["utterances"] == 12 and summary["train"]["sessions"] == 6
    assert summary["test"]["utterances"] == 16 and summary["test"]["sessions"] == 8
    assert summary["noise"] == {"files": 4, "noise": 2, "music": 1, "speech": 1,
                                "seconds": summary["noise"]["seconds"]}
    assert summary["rir"] == {"files": 2}
    assert not list(corpus.parent.glob(".corpus.*"))  # no temporary folder left behind


def test_splits_disjoint_and_every_wav_valid(corpus: Path) -> None:
    spk = {}
    for split, prefix in (("train", "tr-"), ("test", "te-")):
        utt2spk = read_map(corpus / split / "utt2spk")
        utt2sess = read_map(corpus / split / "utt2sess")
        wavs = read_map(corpus / split / "wav.scp")
        assert list(wavs) == sorted(wavs) and wavs.keys() == utt2spk.keys() == utt2sess.keys()
        assert all(u.startswith(prefix) and utt2sess[u].startswith(utt2spk[u]) for u in wavs)
        for s in set(utt2spk.values()):
            sessions = {utt2sess[u] for u in utt2spk if utt2spk[u] == s}
            assert len(sessions) == 2
        spk[split] = set(utt2spk.values())
        for rel in wavs.values():
            assert not Path(rel).is_absolute()
            info = sf.info(corpus / split / rel)
            assert info.samplerate == 16000 and info.subtype == "PCM_16" and info.channels == 1
            assert 1.0 <= info.frames / 16000 <= 2.0
    assert len(spk["train"]) == 3 and len(spk["test"]) == 4
    assert not spk["train"] & spk["test"]


def test_trials_cross_session_and_complete(corpus: Path) -> None:
    test = corpus / "test"
    utt2spk, utt2sess = read_map(test / "utt2spk"), read_map(test / "utt2sess")
    rows = [f for _, f in read_table(test / "trials", ncols=3)]
    targets = [(a, b) for a, b, lab in rows if lab == "target"]
    nontargets = [(a, b) for a, b, lab in rows if lab == "nontarget"]
    # 4 speakers x (2 sessions x 2 utts): 4 cross-session pairs each.
    assert len(targets) == 16 and len(nontargets) == 48
    assert len(set(map(tuple, rows))) == len(rows)
    for a, b in targets:
        assert utt2spk[a] == utt2spk[b] and utt2sess[a] != utt2sess[b]
    for a, b in nontargets:
        assert utt2spk[a] != utt2spk[b]
    assert {u for r in rows for u in r[:2]} <= set(read_map(test / "wav.scp"))


def test_noise_and_rir_sets(corpus: Path) -> None:
    cats = read_map(corpus / "noise" / "utt2category")
    assert sorted(set(cats.values())) == ["music", "noise", "speech"]
    assert read_map(corpus / "noise" / "wav.scp").keys() == cats.keys()
    for rel in read_map(corpus / "rir" / "wav.scp").values():
        rir, sr = sf.read(corpus / "rir" / rel)
        assert sr == 16000
        peak = int(np.argmax(np.abs(rir)))
        assert peak < 0.01 * sr  # direct path first
        tail = rir[peak + 1:]
        quarter = len(tail) // 4
        assert np.sum(tail[:quarter] ** 2) > 10 * np.sum(tail[-quarter:] ** 2)  # decays


def test_failure_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(root: Path, spec: CorpusSpec) -> dict:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(synth, "_write_noise_set", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        generate_corpus(tmp_path / "corpus", CorpusSpec(**SMALL))
    assert list(tmp_path.iterdir()) == []


def _median_f0(x: np.ndarray) -> float:
    """Median autocorrelation pitch over the most energetic (voiced) 40 ms frames."""
    frames = np.lib.stride_tricks.sliding_window_view(x, 640)[::320]
    frames = frames[np.argsort((frames ** 2).sum(1))[-len(frames) // 3:]]
    lags = np.arange(16000 // 400, 16000 // 60)
    f0 = []
    for f in frames - frames.mean(1, keepdims=True):
        ac = np.correlate(f, f, mode="full")[len(f) - 1:]
        f0.append(16000 / lags[np.argmax(ac[lags])])
    return float(np.median(f0))


def test_voice_traits_persist() -> None:
    """Two utterances of a low and of a high voice: F0 tracks the speaker, not the utterance."""
    rng = np.random.default_rng(3)
    base = synth.draw_voice(rng)
    low = synth.Voice(**{**base.__dict__, "f0_median": 100.0, "f0_range": 0.5})
    high = synth.Voice(**{**base.__dict__, "f0_median": 200.0, "f0_range": 0.5})
    f0 = {name: [_median_f0(synth.synth_speech(v, 3.0, np.random.default_rng(i)))
                 for i in range(2)] for name, v in (("low", low), ("high", high))}
    for name, target in (("low", 100.0), ("high", 200.0)):
        assert all(abs(f - target) / target < 0.15 for f in f0[name]), f0
    assert abs(f0["low"][0] - f0["low"][1]) < abs(f0["low"][0] - f0["high"][0]) / 3


def test_speaker_draws_are_stored_and_reused(corpus: Path) -> None:
    traits = read_json(corpus / "train" / "speakers.json") | read_json(
        corpus / "test" / "speakers.json")
    assert sorted(traits) == sorted(set(read_map(corpus / "train" / "utt2spk").values())
                                    | set(read_map(corpus / "test" / "utt2spk").values()))
    again = synth.draw_voice(synth._rng(7, synth._PART["test"], 2, 0))
    stored = traits["te-spk0002"]
    assert stored["f0_median"] == round(again.f0_median, 5)
    assert 80 <= stored["f0_median"] <= 250 and 0.8 <= stored["formant_scale"] <= 1.2


def test_spec_from_dict_and_validation() -> None:
    assert CorpusSpec.from_dict({"seed": 3, "min_dur": 1}) == CorpusSpec(seed=3, min_dur=1)
    with pytest.raises(InputError, match="unknown key.*speakers.*valid keys are"):
        CorpusSpec.from_dict({"speakers": 3})
    with pytest.raises(InputError, match="train_speakers must be int"):
        CorpusSpec.from_dict({"train_speakers": 2.5})
    with pytest.raises(InputError, match="min_dur <= max_dur"):
        CorpusSpec(min_dur=5.0, max_dur=3.0)
    with pytest.raises(InputError, match="sessions_per_speaker"):
        CorpusSpec(sessions_per_speaker=1)


def test_make_trials_counts_sparse_and_dense() -> None:
    utt2spk = {f"s{s}-u{u:02d}": f"s{s}" for s in range(6) for u in range(10)}
    utt2sess = {u: u[:2] + str(int(u[-2:]) // 5) for u in utt2spk}
    rows = synth.make_trials(utt2spk, utt2sess, 2, np.random.default_rng(0))
    n_target = 6 * 25
    assert sum(r[2] == "target" for r in rows) == n_target
    assert sum(r[2] == "nontarget" for r in rows) == 2 * n_target
    assert rows == sorted(rows) and len(set(rows)) == len(rows)
    dense = synth.make_trials(utt2spk, utt2sess, 100, np.random.default_rng(0))
    assert sum(r[2] == "nontarget" for r in dense) == 60 * 59 // 2 - 6 * 45  # every pair


def test_each_part_alone_equals_the_whole_corpus(corpus: Path, tmp_path: Path) -> None:
    """The workflow prepares each part as its own job from only the keys it reads: the same
    bytes as the corpus written in one go, and other parts' keys do not matter."""
    full = read_json(corpus / "summary.json")["spec"]
    for part, keys in synth.PART_KEYS.items():
        mine = {k: full[k] for k in keys}
        out = tmp_path / part
        synth.generate_part(out, part, mine)
        ours = _digest(out)
        want = {k: v for k, v in _digest(corpus / part).items()}
        assert ours.keys() - {"summary.json", ".ssrl-output"} == want.keys() and all(
            ours[k] == want[k] for k in want), part
    other = {k: full[k] for k in synth.PART_KEYS["train"]}
    synth.generate_part(tmp_path / "again", "train", other | {})
    assert _digest(tmp_path / "again") == _digest(tmp_path / "train")


def test_sessions_vary_the_voice_and_domains_shift_the_language() -> None:
    rng = np.random.default_rng(0)
    v = synth.draw_voice(rng)
    heard = [synth.session_voice(v, np.random.default_rng(i), 1.0) for i in range(20)]
    shifts = [12 * np.log2(h.f0_median / v.f0_median) for h in heard]
    assert 0.5 < float(np.std(shifts)) < 2.0  # about one semitone between sessions
    assert synth.session_voice(v, rng, 0.0) is v
    d0, d1 = synth.draw_domain(7, 0), synth.draw_domain(7, 1)
    assert np.all(d0.formants == 1.0) and not np.allclose(d1.formants, 1.0)
    assert [a.rt60 for a in d0.archetypes] != [a.rt60 for a in d1.archetypes]
    assert np.allclose(synth.draw_domain(7, 1).formants, d1.formants)
