"""Corpus preparation on tiny fake VoxCeleb1/2, MUSAN and RIRS_NOISES trees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ssrl.data.audio import load_audio
from ssrl.data.kaldi import read_kaldi_dir, read_trials
from ssrl.data.prepare import (
    empty_dir,
    prepare_kaldi,
    prepare_musan,
    prepare_rirs,
    prepare_trials,
    prepare_voxceleb,
)
from ssrl.data.stores import WaveStore, build_wave_store
from ssrl.files import InputError

VOX1 = [f"{spk}/{video}/{n}.wav" for spk in ("id10001", "id10002")
        for video in ("1zcIwhmdeo4", "7gWzIy6yIIk") for n in ("00001", "00002")]


@pytest.fixture
def vox1(tmp_path: Path, make_wav) -> Path:
    root = tmp_path / "VoxCeleb1"
    for k, utt in enumerate(VOX1):
        make_wav(root / "wav" / utt, 0.6, seed=k)
    (root / "wav" / "id10001" / "1zcIwhmdeo4" / "notes.txt").write_text("not audio")
    return root


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_voxceleb1(vox1: Path, tmp_path: Path) -> None:
    report = prepare_voxceleb(vox1, tmp_path / "train")
    assert report == {"root": str(vox1), "n_utts": 8, "n_speakers": 2, "n_sessions": 4,
                      "formats": {".wav": 8}, "duplicates_ignored": 0}
    assert lines(tmp_path / "train" / "wav.scp") == [f"{u} {vox1 / 'wav' / u}" for u in VOX1]
    assert lines(tmp_path / "train" / "utt2spk")[:3] == [
        "id10001/1zcIwhmdeo4/00001.wav id10001", "id10001/1zcIwhmdeo4/00002.wav id10001",
        "id10001/7gWzIy6yIIk/00001.wav id10001"]
    data = read_kaldi_dir(tmp_path / "train")
    assert data.utt2sess[VOX1[-1]] == "id10002/7gWzIy6yIIk"


def test_voxceleb2_m4a(tmp_path: Path, make_m4a, make_wav) -> None:
    root = tmp_path / "vox2"
    make_m4a(root / "dev" / "aac" / "id00012" / "21Uxsk56VDQ" / "00001.m4a", freq=300.0)
    make_m4a(root / "dev" / "aac" / "id00012" / "21Uxsk56VDQ" / "00002.m4a", freq=500.0)
    # an utterance converted in place: the wav is preferred over the m4a
    make_wav(root / "dev" / "aac" / "id00012" / "21Uxsk56VDQ" / "00002.wav", 1.0, seed=9)
    report = prepare_voxceleb(root, tmp_path / "train")
    assert report["formats"] == {".m4a": 1, ".wav": 1} and report["duplicates_ignored"] == 1
    data = read_kaldi_dir(tmp_path / "train")
    assert list(data.wavs) == ["id00012/21Uxsk56VDQ/00001.wav", "id00012/21Uxsk56VDQ/00002.wav"]
    assert data.wavs["id00012/21Uxsk56VDQ/00001.wav"].suffix == ".m4a"
    assert data.wavs["id00012/21Uxsk56VDQ/00002.wav"].suffix == ".wav"
    report = build_wave_store(data, tmp_path / "store", progress=False)
    store = WaveStore(tmp_path / "store")
    np.testing.assert_array_equal(
        store.full(0), np.rint(load_audio(data.wavs[store.utt_ids[0]]) * 32768) / 32768)
    assert abs(store.lengths[0] - 16000) <= 1024


def test_voxceleb_not_found(tmp_path: Path, make_wav) -> None:
    make_wav(tmp_path / "root" / "speaker7" / "video" / "1.wav", 0.1)
    with pytest.raises(InputError) as err:
        prepare_voxceleb(tmp_path / "root", tmp_path / "out")
    assert str(err.value) == (f"{tmp_path / 'root'}: no aac/ (VoxCeleb2) or wav/ (VoxCeleb1) "
                              "folder and no id*/<video>/*.wav|m4a|flac below it: is this the "
                              "corpus root?")
    assert not (tmp_path / "out").exists()
    (tmp_path / "root" / "aac").mkdir()  # the folder is there, the speakers are not
    with pytest.raises(InputError) as err:
        prepare_voxceleb(tmp_path / "root", tmp_path / "out")
    assert str(err.value) == (f"no VoxCeleb audio found under {tmp_path / 'root'}: "
                              "expected id*/<video>/*.wav|m4a|flac")
    with pytest.raises(InputError) as err:
        prepare_voxceleb(tmp_path / "nowhere", tmp_path / "out")
    assert str(err.value) == f"{tmp_path / 'nowhere'}: directory not found"


def test_trials_in_both_formats(vox1: Path, tmp_path: Path) -> None:
    out = tmp_path / "test"
    prepare_voxceleb(vox1, out)
    vox = tmp_path / "veri_test2.txt"
    vox.write_text(f"1 {VOX1[0]} {VOX1[3]}\n0 {VOX1[0]} {VOX1[4]}\n")
    own = tmp_path / "mine.txt"
    own.write_text(f"{VOX1[4]} {VOX1[7]} target\n")
    report = prepare_trials({"O": vox, "own": own}, out)
    assert report == {"O": {"source": str(vox), "n_trials": 2, "n_target": 1},
                      "own": {"source": str(own), "n_trials": 1, "n_target": 1}}
    assert lines(out / "trials_O") == [f"{VOX1[0]} {VOX1[3]} target",
                                       f"{VOX1[0]} {VOX1[4]} nontarget"]
    assert read_kaldi_dir(out).trials == {"O": out / "trials_O", "own": out / "trials_own"}
    assert read_trials(out / "trials_own").labels.tolist() == [1]

    vox.write_text(f"1 {VOX1[0]} {VOX1[3]}\n1 {VOX1[0]} id10999/abc/00001.wav\n")
    with pytest.raises(InputError) as err:
        prepare_trials({"E": vox}, out)
    assert str(err.value) == f"{vox}:2: trial names unknown utterance 'id10999/abc/00001.wav'"
    assert not (out / "trials_E").exists()


def test_musan(tmp_path: Path, make_wav) -> None:
    root = tmp_path / "corpora" / "musan"
    make_wav(root / "music" / "fma" / "music-fma-0000.wav", 0.3)
    make_wav(root / "noise" / "free-sound" / "noise-free-sound-0000.wav", 0.3)
    make_wav(root / "noise" / "sound-bible" / "noise-sound-bible-0001.wav", 0.3)
    make_wav(root / "speech" / "librivox" / "speech-librivox-0000.wav", 0.3)
    (root / "README").write_text("MUSAN")
    report = prepare_musan(tmp_path / "corpora", tmp_path / "musan")  # parent of musan/ works
    assert report == {"root": str(root), "n_utts": 4,
                      "categories": {"music": 1, "noise": 2, "speech": 1}}
    data = read_kaldi_dir(tmp_path / "musan")
    assert data.utt2category == {"music/fma/music-fma-0000": "music",
                                 "noise/free-sound/noise-free-sound-0000": "noise",
                                 "noise/sound-bible/noise-sound-bible-0001": "noise",
                                 "speech/librivox/speech-librivox-0000": "speech"}
    with pytest.raises(InputError) as err:
        prepare_musan(tmp_path / "musan", tmp_path / "x")
    assert str(err.value) == (f"no MUSAN audio found under {tmp_path / 'musan'}: "
                              "expected {music,noise,speech}/<subset>/*.wav")


def test_rirs(tmp_path: Path, make_wav) -> None:
    root = tmp_path / "RIRS_NOISES"
    make_wav(root / "simulated_rirs" / "smallroom" / "Room001" / "Room001-00001.wav", 0.1)
    make_wav(root / "simulated_rirs" / "smallroom" / "Room001" / "Room001-00002.wav", 0.1)
    make_wav(root / "simulated_rirs" / "largeroom" / "Room003" / "Room003-00001.wav", 0.1)
    make_wav(root / "real_rirs_isotropic_noises" / "air_type1_air_binaural.wav", 0.1)
    report = prepare_rirs(root, tmp_path / "rir")
    assert report == {"root": str(root), "n_utts": 3, "rooms": {"largeroom": 1, "smallroom": 2}}
    assert list(read_kaldi_dir(tmp_path / "rir").wavs) == [
        "smallroom/Room001-00001", "smallroom/Room001-00002", "largeroom/Room003-00001"]
    assert prepare_rirs(tmp_path, tmp_path / "rir2")["n_utts"] == 3
    with pytest.raises(InputError) as err:
        prepare_rirs(tmp_path / "rir", tmp_path / "x")
    assert str(err.value) == (f"no RIRS_NOISES audio found under {tmp_path / 'rir'}: expected "
                              "simulated_rirs/{smallroom,mediumroom,largeroom}/Room*/*.wav")


def test_prepare_kaldi(tmp_path: Path, make_wav) -> None:
    src = tmp_path / "mine"
    make_wav(src / "a.wav", 0.2, seed=1)
    make_wav(src / "b.wav", 0.2, seed=2)
    (src / "wav.scp").write_text("a a.wav\nb b.wav\n")
    (src / "utt2spk").write_text("a x\nb y\n")
    (src / "trials").write_text("1 a b\n")
    report = prepare_kaldi(src, tmp_path / "out")
    assert report == {"source": str(src), "n_utts": 2, "trials": {"trials": 1}, "n_speakers": 2}
    out = tmp_path / "out"
    assert lines(out / "wav.scp") == [f"a {src / 'a.wav'}", f"b {src / 'b.wav'}"]
    assert lines(out / "utt2spk") == ["a x", "b y"]
    assert lines(out / "trials") == ["a b target"]
    assert lines(out / "utt2origin") == [f"a {src / 'wav.scp'}:1", f"b {src / 'wav.scp'}:2"]
    assert sorted(p.name for p in out.iterdir()) == [".ssrl-output", "trials", "utt2origin",
                                                     "utt2spk", "wav.scp"]

    (src / "wav.scp").write_text("a a.wav\nb b.wav\nc c.wav\n")
    with pytest.raises(InputError) as err:
        prepare_kaldi(src, tmp_path / "out")
    assert str(err.value) == f"{src / 'wav.scp'}:3: audio file not found: {src / 'c.wav'}"
    assert lines(out / "wav.scp") == [f"a {src / 'a.wav'}", f"b {src / 'b.wav'}"]  # untouched


def test_empty_set(tmp_path: Path) -> None:
    """A set the configuration leaves out (no MUSAN): an empty folder and an empty store."""
    empty_dir(tmp_path / "noise")
    assert (tmp_path / "noise" / "wav.scp").read_text() == ""
    data = read_kaldi_dir(tmp_path / "noise")
    assert data.wavs == {} and data.trials == {}
    report = build_wave_store(data, tmp_path / "store", progress=False)
    assert report["n_utts"] == 0 and report["n_skipped"] == 0
    store = WaveStore(tmp_path / "store", verify=True)
    assert len(store) == 0 and store.lengths.tolist() == [] and store.meta["shards"] == []
    with pytest.raises(InputError) as err:
        prepare_kaldi(tmp_path / "noise", tmp_path / "copy")
    assert str(err.value) == f"{tmp_path / 'noise' / 'wav.scp'}: no utterances listed"
