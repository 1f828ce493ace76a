"""Wave and feature stores: round trip, crops, checksums, atomicity and bad utterances."""

from __future__ import annotations

import json
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import ssrl.data.audio
import ssrl.data.stores
from ssrl.data.audio import AudioError, load_audio, load_audio_many
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
    real = ssrl.data.audio.load_audio

    def flaky(path, sample_rate=16000):
        calls.append(path)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real(path, sample_rate)

    monkeypatch.setattr(ssrl.data.audio, "load_audio", flaky)
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


def test_feature_store_keeps_the_lists_once_the_wave_store_is_gone(data_dir: Path, tmp_path: Path,
                                                                    capsys) -> None:
    """The workflow deletes the test set's wave store (temp()) once its features exist: the
    feature store alone must give scoring its trial lists and speakers, with the same
    metrics as the wave store gave."""
    import shutil

    from ssrl.cli import main
    from ssrl.data.stores import ids_digest, open_store
    from ssrl.evaluation.scoring import save_embeddings

    build_wave_store(read_kaldi_dir(data_dir), tmp_path / "store", progress=False)
    build_feat_store(WaveStore(tmp_path / "store"), lambda w: w[:, None, :160], tmp_path / "feats",
                     {"name": "toy"}, progress=False)
    emb = np.array([[1, 0], [0, 1], [1, 0.2], [0.6, 0.8]], dtype=np.float32)  # u1..u4
    save_embeddings(tmp_path / "emb.npz", list(LENGTHS), emb)
    metrics = {}
    for name in ("store", "feats"):
        out = tmp_path / f"{name}.json"
        assert main(["score", "--embeddings", str(tmp_path / "emb.npz"), "--store",
                     str(tmp_path / name), "--replicates", "0", "--out", str(out)]) == 0
        metrics[name] = json.loads(out.read_text())["trials"]["O"]
        if name == "store":
            shutil.rmtree(tmp_path / "store")  # what temp() does once the features exist
    # trial u1-u3 (target, cos 0.98) outscores both non-targets (0, 0.6): EER 0
    assert metrics["feats"]["eer"] == metrics["store"]["eer"] == 0.0
    assert metrics["feats"]["n_trials"] == 3
    feats = open_store(tmp_path / "feats")
    assert isinstance(feats, FeatStore) and feats.spk == ["s0", "s1", "s0", "s1"]
    assert feats.meta["utt_ids_sha256"] == ids_digest(list(LENGTHS))
    # a feature store of an older ssrl (no lists): one line naming it, not "no trial lists"
    meta = json.loads((tmp_path / "feats" / "meta.json").read_text())
    for key in ("trials", "trials_sha256", "utt_ids_sha256", "spk"):
        del meta[key]
    (tmp_path / "feats" / "meta.json").write_text(json.dumps(meta))
    assert main(["score", "--embeddings", str(tmp_path / "emb.npz"), "--store",
                 str(tmp_path / "feats"), "--out", str(tmp_path / "old.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ssrl score: error: {tmp_path / 'feats'}: a feature store without the "
                   "set's trial lists and speakers (made by an older ssrl): rebuild it, e.g. "
                   "snakemake --forcerun feature_store"]
    assert feats.trials["O"].read_text().split() == ["u1", "u3", "target", "u1", "u2",
                                                    "nontarget", "u2", "u4", "nontarget"]


def test_store_pickles_without_open_maps(data_dir: Path, tmp_path: Path) -> None:
    """DataLoader workers get a copy of the store; it must reopen its maps there."""
    build_wave_store(read_kaldi_dir(data_dir), tmp_path / "store", progress=False)
    store = WaveStore(tmp_path / "store")
    first = store.wave(0).copy()
    copy = pickle.loads(pickle.dumps(store))
    assert copy._maps._maps == {}
    np.testing.assert_array_equal(copy.wave(0), first)


# --- decoding many files: batched ffmpeg processes and decoding threads ----------------------

@pytest.fixture
def mixed_dir(tmp_path: Path, make_wav, make_m4a) -> Path:
    """m4a (one at 44.1 kHz), wav, a corrupt m4a and a too-short wav, in that mixed order."""
    d = tmp_path / "mixed"
    lines = []
    for k in range(7):
        make_m4a(d / f"m{k}.m4a", seconds=0.6 + 0.1 * k, freq=200.0 + 50 * k,
                 sr=44100 if k == 3 else 16000)
        lines.append(f"m{k} m{k}.m4a\n")
        if k % 3 == 0:
            make_wav(d / f"w{k}.wav", 0.8, seed=k)
            lines.append(f"w{k} w{k}.wav\n")
    (d / "bad.m4a").write_bytes(b"not an mp4 file" * 50)
    make_wav(d / "short.wav", 0.2, seed=9)
    lines[4:4] = ["bad bad.m4a\n", "short short.wav\n"]
    (d / "wav.scp").write_text("".join(lines))
    return d


def test_batched_ffmpeg_decoding_equals_one_by_one(mixed_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(ssrl.data.audio, "FFMPEG_BATCH", 3)
    paths = [mixed_dir / line.split()[1] for line in (mixed_dir / "wav.scp").read_text()
             .splitlines()] + [mixed_dir / "missing.m4a"]
    batches = []
    real = ssrl.data.audio._decode_ffmpeg_batch

    def spy(files, sample_rate):
        batches.append((len(files), real(files, sample_rate) is not None))
        return real(files, sample_rate)

    monkeypatch.setattr(ssrl.data.audio, "_decode_ffmpeg_batch", spy)
    many = load_audio_many(paths)
    # 8 existing m4a files in batches of 3; the batch holding the corrupt file fails as a whole
    assert batches == [(3, True), (3, False), (2, True)]
    for path, got in zip(paths, many):
        try:
            expected = load_audio(path)
        except AudioError as err:
            assert isinstance(got, AudioError) and str(got) == str(err)
            continue
        assert isinstance(got, np.ndarray) and got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)
    assert str(many[4]).startswith(f"{mixed_dir / 'bad.m4a'}: cannot decode audio")
    assert str(many[-1]) == f"{mixed_dir / 'missing.m4a'}: audio file not found"


def _store_content(folder: Path) -> dict:
    meta = json.loads((folder / "meta.json").read_text())
    with np.load(folder / "index.npz") as index:
        arrays = {k: index[k].tolist() for k in index.files}
    return {"shards": meta["shards"], "report": meta["report"], "index": arrays,
            "bytes": [(folder / s["file"]).read_bytes() for s in meta["shards"]]}


def test_store_is_identical_whatever_the_workers(mixed_dir: Path, tmp_path: Path,
                                                 monkeypatch) -> None:
    monkeypatch.setattr(ssrl.data.audio, "FFMPEG_BATCH", 2)
    monkeypatch.setattr(ssrl.data.stores, "DECODE_CHUNK", 3)
    contents = []
    for workers in (0, 1, 4):
        out = tmp_path / f"store{workers}"
        build_wave_store(read_kaldi_dir(mixed_dir), out, on_bad="skip", shard_bytes=40000,
                         progress=False, workers=workers)
        contents.append(_store_content(out))
    assert contents[0] == contents[1] == contents[2]
    report = contents[0]["report"]
    assert report["n_utts"] == 10 and [s["utt"] for s in report["skipped"]] == ["bad", "short"]
    assert len(contents[0]["shards"]) > 2  # several shards, filled in wav.scp order
    store = WaveStore(tmp_path / "store4", verify=True)
    np.testing.assert_array_equal(store.full(store.index_of("m3")),
                                  np.rint(load_audio(mixed_dir / "m3.m4a") * 32768) / 32768)


def test_bad_file_stops_the_decoding_threads(mixed_dir: Path, tmp_path: Path,
                                             monkeypatch) -> None:
    monkeypatch.setattr(ssrl.data.stores, "DECODE_CHUNK", 2)
    before = threading.active_count()
    with pytest.raises(InputError) as err:
        build_wave_store(read_kaldi_dir(mixed_dir), tmp_path / "store", progress=False,
                         workers=3)
    assert str(err.value).startswith(f"{mixed_dir / 'wav.scp'}:5: {mixed_dir / 'bad.m4a'}: "
                                     "cannot decode audio")
    assert not (tmp_path / "store").exists()
    assert threading.active_count() == before
