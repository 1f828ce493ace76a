"""Wave and feature stores: round trip, crops, checksums, atomicity and bad utterances."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import ssrl.data.stores
from ssrl.data.kaldi import read_kaldi_dir
from ssrl.data.stores import FeatStore, WaveStore, build_feat_store, build_wave_store
from ssrl.files import InputError

LENGTHS = {"u1": 0.75, "u2": 1.0, "u3": 0.5, "u4": 1.25}  # seconds


@pytest.fixture
def data_dir(tmp_path: Path, make_wav) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    lines, spk, cat = [], [], []
    for k, (utt, seconds) in enumerate(LENGTHS.items()):
        make_wav(d / f"{utt}.wav", seconds, seed=k)
        lines.append(f"{utt} {utt}.wav\n")
        spk.append(f"{utt} s{k % 2}\n")
        cat.append(f"{utt} {'noise' if k % 2 else 'music'}\n")
    (d / "wav.scp").write_text("".join(lines))
    (d / "utt2spk").write_text("".join(spk))
    (d / "utt2category").write_text("".join(cat))
    (d / "trials_O").write_text("1 u1 u3\n0 u1 u2\n0 u2 u4\n")
    return d


def test_round_trip(data_dir: Path, tmp_path: Path) -> None:
    # bytes per utterance 24000, 32000, 16000, 40000: with 50000 per shard u2+u3 share one
    report = build_wave_store(read_kaldi_dir(data_dir), tmp_path / "store",
                              shard_bytes=50000, progress=False)
    store = WaveStore(tmp_path / "store", verify=True)
    assert len(store) == 4 and store.utt_ids == list(LENGTHS)
    assert store.lengths.tolist() == [12000, 16000, 8000, 20000]
    assert store.lengths.dtype == np.int64 and store.sample_rate == 16000
    assert store.spk == ["s0", "s1", "s0", "s1"] and store.sess is None
    assert store.categories == ["music", "noise", "music", "noise"]
    assert [s["file"] for s in store.meta["shards"]] == [
        "shards/00000.bin", "shards/00001.bin", "shards/00002.bin"]
    assert [s["n_samples"] for s in store.meta["shards"]] == [12000, 24000, 20000]
    with np.load(tmp_path / "store" / "index.npz") as index:
        assert index["shard"].tolist() == [0, 1, 1, 2]
        assert index["offset"].tolist() == [0, 0, 16000, 0]
    assert store.meta["total_samples"] == 56000 and store.meta["n_utts"] == 4
    for i, utt in enumerate(LENGTHS):
        pcm, _ = sf.read(data_dir / f"{utt}.wav", dtype="int16")
        wave = store.wave(i)
        assert wave.dtype == np.int16 and isinstance(wave, np.memmap)
        np.testing.assert_array_equal(wave, pcm)
        np.testing.assert_array_equal(store.full(i), pcm.astype(np.float32) / 32768)
    assert store.index_of("u3") == 2
    assert report == {"source": str(data_dir), "n_utts": 4, "n_skipped": 0, "skipped": [],
                      "n_rescaled": 0, "total_seconds": 3.5, "n_trials": {"O": 3},
                      "trials_dropped": {"O": 0}}
    assert store.trials == {"O": tmp_path / "store" / "trials" / "O"}
    assert store.trials["O"].read_text() == "u1 u3 target\nu1 u2 nontarget\nu2 u4 nontarget\n"
    assert store.meta["trials"] == {"O": str(tmp_path / "store" / "trials" / "O")}
    (tmp_path / "store").rename(tmp_path / "moved")
    assert WaveStore(tmp_path / "moved").trials == {"O": tmp_path / "moved" / "trials" / "O"}


def test_crops_and_tiling(data_dir: Path, tmp_path: Path) -> None:
    build_wave_store(read_kaldi_dir(data_dir), tmp_path / "store", progress=False)
    store = WaveStore(tmp_path / "store")
    full = store.full(1)
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(20):
        crop = store.crop(1, 4000, rng)
        assert crop.dtype == np.float32 and crop.shape == (4000,)
        matches = [s for s in np.flatnonzero(full[:len(full) - 3999] == crop[0])
                   if (full[s:s + 4000] == crop).all()]
        assert len(matches) == 1
        starts.add(matches[0])
    assert len(starts) > 10  # random offsets, not a fixed one
    tiled = store.crop(2, 20000, rng)  # u3 has 8000 samples: repeated 2.5 times
    short = store.full(2)
    np.testing.assert_array_equal(tiled, np.concatenate([short, short, short[:4000]]))
    np.testing.assert_array_equal(store.crop(2, 8000, rng), short)


def test_checksum_catches_a_flipped_byte(data_dir: Path, tmp_path: Path) -> None:
    build_wave_store(read_kaldi_dir(data_dir), tmp_path / "store", progress=False)
    shard = tmp_path / "store" / "shards" / "00000.bin"
    raw = bytearray(shard.read_bytes())
    raw[1234] ^= 0x01
    shard.write_bytes(bytes(raw))
    WaveStore(tmp_path / "store")  # sizes still match: only verify can tell
    with pytest.raises(InputError) as err:
        WaveStore(tmp_path / "store", verify=True)
    assert str(err.value) == (f"{shard}: checksum mismatch (the store is corrupt or was "
                              "changed after it was built; rebuild it)")
    shard.write_bytes(bytes(raw[:-2]))
    with pytest.raises(InputError) as err:
        WaveStore(tmp_path / "store")
    assert str(err.value) == (f"{shard}: shard has {len(raw) - 2} bytes, expected {len(raw)} "
                              "(truncated or changed)")


def test_missing_or_corrupt_index(data_dir: Path, tmp_path: Path) -> None:
    build_wave_store(read_kaldi_dir(data_dir), tmp_path / "store", progress=False)
    index = tmp_path / "store" / "index.npz"
    index.write_bytes(b"not a zip file")
    with pytest.raises(InputError) as err:
        WaveStore(tmp_path / "store")
    assert str(err.value).startswith(f"{index}: corrupt index (")
    index.unlink()
    with pytest.raises(InputError) as err:
        WaveStore(tmp_path / "store")
    assert str(err.value) == f"{index}: file not found (not a store, or an unfinished one)"


def test_failure_mid_build_leaves_nothing(data_dir: Path, tmp_path: Path,
                                          monkeypatch) -> None:
    calls = []
    real = ssrl.data.stores.load_audio

    def flaky(path, sample_rate=16000):
        calls.append(path)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real(path, sample_rate)

    monkeypatch.setattr(ssrl.data.stores, "load_audio", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        build_wave_store(read_kaldi_dir(data_dir), tmp_path / "out" / "store", progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def add_bad_files(data_dir: Path) -> None:
    """Append a too-short and a silent utterance, and trials naming them."""
    sf.write(data_dir / "short.wav", np.full(4000, 0.1, dtype=np.float32), 16000)
    sf.write(data_dir / "zero.wav", np.zeros(16000, dtype=np.float32), 16000)
    with open(data_dir / "wav.scp", "a") as f:
        f.write("short short.wav\nzero zero.wav\n")
    with open(data_dir / "utt2spk", "a") as f:
        f.write("short s0\nzero s1\n")
    with open(data_dir / "utt2category", "a") as f:
        f.write("short noise\nzero noise\n")
    with open(data_dir / "trials_O", "a") as f:
        f.write("1 u1 short\n0 zero u2\n")


def test_bad_utterance_is_an_error_by_default(data_dir: Path, tmp_path: Path) -> None:
    add_bad_files(data_dir)
    with pytest.raises(InputError) as err:
        build_wave_store(read_kaldi_dir(data_dir), tmp_path / "store", progress=False)
    assert str(err.value) == (f"{data_dir / 'wav.scp'}:5: {data_dir / 'short.wav'}: too short "
                              "(0.250 s < min_seconds 0.5 s)")
    assert not (tmp_path / "store").exists()


def test_all_utterances_bad_is_an_error(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    sf.write(d / "zero.wav", np.zeros(16000, dtype=np.float32), 16000)
    (d / "wav.scp").write_text("zero zero.wav\n")
    with pytest.raises(InputError) as err:
        build_wave_store(read_kaldi_dir(d), tmp_path / "store", on_bad="skip", progress=False)
    assert str(err.value) == f"{d / 'wav.scp'}: no usable utterances (all 1 skipped as bad)"
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_mode_reports_and_drops_trials(data_dir: Path, tmp_path: Path,
                                            workers: int) -> None:
    add_bad_files(data_dir)
    report = build_wave_store(read_kaldi_dir(data_dir), tmp_path / "store", on_bad="skip",
                              progress=False, workers=workers)
    assert report["n_utts"] == 4 and report["n_skipped"] == 2
    assert report["skipped"] == [
        {"utt": "short", "path": str(data_dir / "short.wav"),
         "reason": "too short (0.250 s < min_seconds 0.5 s)"},
        {"utt": "zero", "path": str(data_dir / "zero.wav"),
         "reason": "silent audio (all samples are zero)"}]
    assert report["trials_dropped"] == {"O": 2} and report["n_trials"] == {"O": 3}
    store = WaveStore(tmp_path / "store", verify=True)
    assert store.utt_ids == list(LENGTHS) and store.spk == ["s0", "s1", "s0", "s1"]
    assert json.loads((tmp_path / "store" / "meta.json").read_text())["report"] == report
    assert len(store.trials["O"].read_text().splitlines()) == 3
    for i, utt in enumerate(LENGTHS):
        np.testing.assert_array_equal(store.wave(i), sf.read(data_dir / f"{utt}.wav",
                                                              dtype="int16")[0])


def test_feature_store(data_dir: Path, tmp_path: Path) -> None:
    build_wave_store(read_kaldi_dir(data_dir), tmp_path / "store", progress=False)
    store = WaveStore(tmp_path / "store")

    def frontend(wave: torch.Tensor) -> torch.Tensor:
        """Frames of 160 samples; 'mel' bin k = mean of the frame times (k + 1)."""
        frames = wave[:, : wave.shape[1] // 160 * 160].reshape(1, -1, 160).mean(-1)
        return frames[:, None, :] * torch.arange(1, 4, dtype=torch.float32)[None, :, None]

    meta = build_feat_store(store, frontend, tmp_path / "feats", {"name": "toy"},
                            progress=False)
    feats = FeatStore(tmp_path / "feats")
    assert meta["n_mels"] == 3 and feats.meta["frontend"] == {"name": "toy"}
    assert feats.utt_ids == list(LENGTHS) and len(feats) == 4
    assert feats.n_frames.tolist() == [75, 100, 50, 125]
    for i in range(4):
        expected = frontend(torch.from_numpy(store.full(i))[None])[0].numpy()
        got = feats.feats(i)
        assert got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected.astype(np.float16).astype(np.float32))


def test_store_pickles_without_open_maps(data_dir: Path, tmp_path: Path) -> None:
    """DataLoader workers get a copy of the store; it must reopen its maps there."""
    build_wave_store(read_kaldi_dir(data_dir), tmp_path / "store", progress=False)
    store = WaveStore(tmp_path / "store")
    first = store.wave(0).copy()
    copy = pickle.loads(pickle.dumps(store))
    assert copy._maps._maps == {}
    np.testing.assert_array_equal(copy.wave(0), first)
