"""Data folders, trial lists and audio loading: the good paths and every bad input's message."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ssrl.data.audio import AudioError, load_audio
from ssrl.data.kaldi import read_kaldi_dir, read_trials
from ssrl.files import InputError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def data_dir(tmp_path: Path, make_wav) -> Path:
    """Three utterances, one relative and two absolute paths, with maps and two trial lists."""
    d = tmp_path / "data"
    make_wav(d / "audio" / "a.wav", 0.2, seed=1)
    make_wav(tmp_path / "b.wav", 0.2, seed=2)
    make_wav(tmp_path / "c.flac", 0.2, seed=3, subtype="PCM_16")
    write(d / "wav.scp", f"a audio/a.wav\n# comment\n\nb {tmp_path / 'b.wav'}\n"
                         f"c {tmp_path / 'c.flac'}\n")
    write(d / "utt2spk", "a s1\nb s1\nc s2\n")
    write(d / "utt2sess", "a s1/v1\nb s1/v2\nc s2/v1\n")
    write(d / "trials", "a b target\na c nontarget\n")
    write(d / "trials_O", "1 a b\n0 b c\n")
    return d


def test_read_kaldi_dir(data_dir: Path, tmp_path: Path) -> None:
    d = read_kaldi_dir(data_dir)
    assert list(d.wavs) == ["a", "b", "c"]
    assert d.wavs["a"] == data_dir / "audio" / "a.wav"
    assert d.wavs["b"] == tmp_path / "b.wav"
    assert d.lines == {"a": 1, "b": 4, "c": 5}
    assert d.utt2spk == {"a": "s1", "b": "s1", "c": "s2"}
    assert d.utt2sess == {"a": "s1/v1", "b": "s1/v2", "c": "s2/v1"}
    assert d.utt2category is None
    assert d.trials == {"O": data_dir / "trials_O", "trials": data_dir / "trials"}


def test_missing_wav_scp(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(InputError) as err:
        read_kaldi_dir(tmp_path / "d")
    assert str(err.value) == f"{tmp_path / 'd' / 'wav.scp'}: file not found " \
                             "(every data folder needs a wav.scp)"


def test_duplicate_utterance_id(data_dir: Path, tmp_path: Path) -> None:
    write(data_dir / "wav.scp", f"a audio/a.wav\nb {tmp_path / 'b.wav'}\na audio/a.wav\n")
    with pytest.raises(InputError) as err:
        read_kaldi_dir(data_dir)
    assert str(err.value) == (f"{data_dir / 'wav.scp'}:3: duplicate utterance id 'a' "
                              "(first on line 1)")


def test_bad_wav_scp_line(data_dir: Path) -> None:
    write(data_dir / "wav.scp", "a audio/a.wav\nlonely\n")
    with pytest.raises(InputError) as err:
        read_kaldi_dir(data_dir)
    assert str(err.value) == f"{data_dir / 'wav.scp'}:2: expected 2 fields, got 1: 'lonely'"


def test_missing_audio_file(data_dir: Path) -> None:
    write(data_dir / "wav.scp", "a audio/a.wav\nb audio/gone.wav\n")
    for name in ("utt2spk", "utt2sess", "trials", "trials_O"):
        (data_dir / name).unlink()
    with pytest.raises(InputError) as err:
        read_kaldi_dir(data_dir)
    assert str(err.value) == (f"{data_dir / 'wav.scp'}:2: audio file not found: "
                              f"{data_dir / 'audio' / 'gone.wav'}")
    assert list(read_kaldi_dir(data_dir, check_files=False).wavs) == ["a", "b"]


def test_map_with_unknown_or_missing_utterance(data_dir: Path) -> None:
    write(data_dir / "utt2spk", "a s1\nb s1\nc s2\nzz s3\n")
    with pytest.raises(InputError) as err:
        read_kaldi_dir(data_dir)
    assert str(err.value) == f"{data_dir / 'utt2spk'}:4: unknown utterance 'zz' (not in wav.scp)"
    write(data_dir / "utt2spk", "a s1\nc s2\n")
    with pytest.raises(InputError) as err:
        read_kaldi_dir(data_dir)
    assert str(err.value) == f"{data_dir / 'utt2spk'}: no entry for utterance 'b' (wav.scp line 4)"


def test_read_trials_both_formats(tmp_path: Path) -> None:
    kaldi = read_trials(write(tmp_path / "t1", "a b target\nc d nontarget\n"))
    vox = read_trials(write(tmp_path / "t2", "1 id10270/x6uYqmx31kE/00001.wav "
                                             "id10270/8jEAjG6SegY/00008.wav\n"
                                             "0 id10270/x6uYqmx31kE/00001.wav "
                                             "id10300/ize_eiCFEg0/00003.wav\n"))
    assert (kaldi.enroll, kaldi.test, kaldi.labels.tolist()) == (["a", "c"], ["b", "d"], [1, 0])
    assert kaldi.labels.dtype == np.int8
    assert vox.enroll == ["id10270/x6uYqmx31kE/00001.wav"] * 2
    assert vox.test == ["id10270/8jEAjG6SegY/00008.wav", "id10300/ize_eiCFEg0/00003.wav"]
    assert vox.labels.tolist() == [1, 0]


def test_trial_errors(tmp_path: Path) -> None:
    file = write(tmp_path / "t", "a b target\na zz nontarget\n")
    assert len(read_trials(file)) == 2
    with pytest.raises(InputError) as err:
        read_trials(file, known={"a", "b"})
    assert str(err.value) == f"{file}:2: trial names unknown utterance 'zz'"
    write(file, "a b target\na b maybe\n")
    with pytest.raises(InputError) as err:
        read_trials(file)
    assert str(err.value) == (f"{file}:2: bad trial label 'maybe' (expected "
                              "'enroll test target|nontarget', '1|0 enroll test' or "
                              "'enroll test')")
    write(file, "a b c target\n")
    with pytest.raises(InputError) as err:
        read_trials(file)
    assert str(err.value) == f"{file}:1: expected 2 or 3 fields, got 4: 'a b c target'"


@pytest.mark.parametrize("text, message", [
    ("a b target\nc d nontarget\na b target\n",
     "3: duplicate trial a b (first on line 1)"),
    ("a b target\nc d nontarget\nb a target\n",  # the same pair in the other order
     "3: duplicate trial b a (first on line 1)"),
    ("a b target\nc d nontarget\n1 c d\n", "3: trial c d is target here but nontarget on "
     "line 2"),
    ("a b target\nc c target\n", "2: self trial: 'c' against itself"),
    ("a b target\nc d\n", "2: unlabelled line in a list whose first line is labelled"),
])
def test_trial_lists_that_would_change_the_metrics_are_refused(tmp_path: Path, text: str,
                                                                message: str) -> None:
    """Duplicated, contradictory and self trials used to be scored (30 trials became 37)."""
    file = write(tmp_path / "t", text)
    with pytest.raises(InputError) as err:
        read_trials(file)
    assert str(err.value) == f"{file}:{message}"


def test_unlabelled_trials_are_read_without_labels(tmp_path: Path) -> None:
    trials = read_trials(write(tmp_path / "t", "a b\nc d\n"))
    assert (trials.enroll, trials.test, trials.labels) == (["a", "c"], ["b", "d"], None)


def test_bom_and_latin1_tables(tmp_path: Path) -> None:
    """A byte-order mark is dropped; a latin-1 file is refused at its line, not mangled."""
    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "wav.scp").write_bytes(b"\xef\xbb\xbfa a.wav\n")
    (tmp_path / "utt2spk").write_text("a x\n")
    data = read_kaldi_dir(tmp_path)
    assert list(data.wavs) == ["a"] and data.utt2spk == {"a": "x"}
    (tmp_path / "utt2spk").write_bytes("a Jos\u00e9\n".encode("latin-1"))
    with pytest.raises(InputError) as err:
        read_kaldi_dir(tmp_path)
    assert str(err.value) == (f"{tmp_path / 'utt2spk'}:1: not UTF-8 text (byte 0xe9 at "
                              "column 6); save the file as UTF-8")


def test_trials_checked_when_reading_dir(data_dir: Path) -> None:
    write(data_dir / "trials_O", "1 a b\n0 b nobody\n")
    with pytest.raises(InputError) as err:
        read_kaldi_dir(data_dir)
    assert str(err.value) == f"{data_dir / 'trials_O'}:2: trial names unknown utterance 'nobody'"


def test_load_audio_round_trip(tmp_path: Path, make_wav) -> None:
    path = make_wav(tmp_path / "x.wav", 0.5, seed=4)
    expected, _ = sf.read(path, dtype="float32")
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.shape == (8000,)
    np.testing.assert_array_equal(wave, expected)


def peak_hz(wave: np.ndarray, sr: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[spectrum.argmax()])


@pytest.mark.parametrize("sr", [8000, 44100, 48000])
def test_resampling_keeps_length_and_frequency(tmp_path: Path, make_wav, caplog,
                                               sr: int) -> None:
    path = make_wav(tmp_path / f"s{sr}.wav", 1.0, sr=sr, freq=440.0)
    with caplog.at_level(logging.INFO, logger="ssrl.data"):
        wave = load_audio(path)
    assert wave.shape == (16000,)
    assert peak_hz(wave) == 440.0
    assert caplog.messages == [f"{path}: resampled {sr} Hz -> 16000 Hz"]


def test_stereo_is_down_mixed(tmp_path: Path, caplog) -> None:
    path = tmp_path / "st.wav"
    left = np.full(1600, 0.5, dtype=np.float32)
    sf.write(path, np.stack([left, -0.25 * np.ones_like(left)], axis=1), 16000,
             subtype="FLOAT")
    with caplog.at_level(logging.INFO, logger="ssrl.data"):
        wave = load_audio(path)
    np.testing.assert_array_equal(wave, np.full(1600, 0.125, dtype=np.float32))
    assert caplog.messages == [f"{path}: down-mixed 2 channels to mono"]


def test_m4a_is_decoded_with_ffmpeg(tmp_path: Path, make_m4a) -> None:
    wave = load_audio(make_m4a(tmp_path / "x.m4a", seconds=1.0, freq=440.0))
    assert wave.dtype == np.float32
    assert abs(len(wave) - 16000) <= 1024  # AAC works in frames of 1024 samples
    assert peak_hz(wave[:16000]) == pytest.approx(440.0, abs=2.0)
    assert 0.4 < np.abs(wave).max() < 0.6


def bad_audio_error(path: Path) -> AudioError:
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert isinstance(err.value, InputError)
    return err.value


def test_missing_and_corrupt_audio(tmp_path: Path) -> None:
    assert str(bad_audio_error(tmp_path / "nope.wav")) == f"{tmp_path / 'nope.wav'}: " \
                                                         "audio file not found"
    junk = tmp_path / "junk.wav"
    junk.write_bytes(np.random.default_rng(0).bytes(3000))
    err = bad_audio_error(junk)
    assert str(err).startswith(f"{junk}: cannot decode audio (")
    assert err.reason.startswith("cannot decode audio (")
    fake_m4a = tmp_path / "junk.m4a"
    fake_m4a.write_bytes(np.random.default_rng(1).bytes(3000))
    assert str(bad_audio_error(fake_m4a)).startswith(f"{fake_m4a}: cannot decode audio")


def test_empty_silent_and_nan_audio(tmp_path: Path) -> None:
    empty, silent, nan = tmp_path / "empty.wav", tmp_path / "silent.wav", tmp_path / "nan.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000, subtype="PCM_16")
    sf.write(silent, np.zeros(800, dtype=np.float32), 16000, subtype="PCM_16")
    bad = np.full(800, 0.1, dtype=np.float32)
    bad[100] = np.nan
    sf.write(nan, bad, 16000, subtype="FLOAT")
    assert str(bad_audio_error(empty)) == f"{empty}: empty audio (0 samples)"
    assert str(bad_audio_error(silent)) == f"{silent}: silent audio (all samples are zero)"
    assert str(bad_audio_error(nan)) == f"{nan}: audio contains NaN or infinite samples"
