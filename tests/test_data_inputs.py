"""The user's data as inputs of the workflow (ssrl.data.sources), fingerprints that cover data
and code, and what a killed run leaves behind. The workflow-level checks (an edited WAV, trial
label or utt2spk line reruns exactly what depends on it) are in test_workflow_data.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ssrl.data import sources
from ssrl.data.sources import update_digest
from ssrl.files import TMP_MARK, atomic_dir, clean_stale_tmp


def kaldi_folder(root: Path, make_wav) -> Path:
    root.mkdir(parents=True)
    rows = []
    for i in range(4):
        make_wav(root / "wav" / f"u{i}.wav", 0.5, seed=i)
        rows.append(f"u{i} wav/u{i}.wav\n")
    (root / "wav.scp").write_text("".join(rows))
    (root / "utt2spk").write_text("u0 a\nu1 a\nu2 b\nu3 b\n")
    (root / "trials").write_text("u0 u1 target\nu0 u2 nontarget\n")
    return root


def data_cfg(folder: Path) -> dict:
    return {"source": "kaldi", "kaldi": {"test": str(folder)}}


def test_digest_is_rewritten_only_when_content_changes(tmp_path, make_wav):
    folder = kaldi_folder(tmp_path / "test", make_wav)
    inputs = tmp_path / "inputs"
    said: list[str] = []
    assert update_digest(data_cfg(folder), "test", inputs, said.append)
    digest = inputs / "test.json"
    first = json.loads(digest.read_text())
    assert first["audio"]["files"] == 4 and first["audio"]["missing"] == 0
    assert set(first["lists"]) == {"wav.scp", "utt2spk", "trials:trials"}
    os.utime(digest, ns=(1_000_000_000, 1_000_000_000))  # old, as after a finished run

    # nothing changed; a file touched (new mtime, same bytes) changes nothing either
    os.utime(folder / "wav" / "u1.wav")
    assert not update_digest(data_cfg(folder), "test", inputs, said.append)
    assert digest.stat().st_mtime_ns == 1_000_000_000 and said == []

    # a WAV replaced in place, its modification time set back: still seen (ctime, content)
    wav = folder / "wav" / "u2.wav"
    st = wav.stat()
    make_wav(wav, 0.5, seed=99)
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert wav.stat().st_size == st.st_size
    assert update_digest(data_cfg(folder), "test", inputs, said.append)
    second = json.loads(digest.read_text())
    assert second["lists"] == first["lists"]
    assert second["audio"]["sha256"] != first["audio"]["sha256"]
    assert said == [f"the test data changed since the last run (1 audio file(s), e.g. {wav}): "
                    "its preparation and every job that depends on it rerun"]

    # a trial label flipped, an utt2spk line edited: the lists' digests say which
    (folder / "trials").write_text("u0 u1 nontarget\nu0 u2 nontarget\n")
    (folder / "utt2spk").write_text("u0 a\nu1 c\nu2 b\nu3 b\n")
    said.clear()
    assert update_digest(data_cfg(folder), "test", inputs, said.append)
    assert "(trials:trials, utt2spk)" in said[0]
    assert not update_digest(data_cfg(folder), "test", inputs, said.append)


def test_audio_is_hashed_once(tmp_path, make_wav, monkeypatch):
    folder = kaldi_folder(tmp_path / "test", make_wav)
    inputs = tmp_path / "inputs"
    hashed: list[str] = []
    real = sources.sha256_file

    def counting(path: str) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(sources, "sha256_file", counting)
    update_digest(data_cfg(folder), "test", inputs)
    assert len(hashed) == 4 + 3  # the audio and the three lists
    hashed.clear()
    update_digest(data_cfg(folder), "test", inputs)
    assert hashed == []  # every file known by its size, times and inode
    (folder / "trials").write_text("u0 u1 target\nu0 u3 nontarget\n")
    update_digest(data_cfg(folder), "test", inputs)
    assert hashed == [str(folder / "trials")]


def test_unreadable_set_gets_its_error_as_digest(tmp_path):
    cfg = {"source": "kaldi", "kaldi": {"test": str(tmp_path / "nowhere")}}
    assert update_digest(cfg, "test", tmp_path / "inputs")
    assert "directory not found" in json.loads((tmp_path / "inputs/test.json").read_text())[
        "error"]
    # a left-out set (no dev folder) is an empty digest, written once
    assert update_digest(cfg, "dev", tmp_path / "inputs")
    assert not update_digest(cfg, "dev", tmp_path / "inputs")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def fake_tmp(parent: Path, name: str, mark: str | None) -> Path:
    tmp = parent / name
    (tmp / "shards").mkdir(parents=True)
    (tmp / "shards" / "0.bin").write_bytes(b"\0" * 1000)
    if mark is not None:
        (tmp / TMP_MARK).write_text(mark)
    return tmp


def test_a_killed_writers_temporary_folder_is_removed_on_the_next_write(tmp_path):
    import socket

    host = socket.gethostname()
    killed = fake_tmp(tmp_path, ".test.abc123.tmp", f"{host} {dead_pid()}\n")
    running = fake_tmp(tmp_path, ".test.def456.tmp", f"{host} {os.getpid()}\n")
    elsewhere = fake_tmp(tmp_path, ".test.ghi789.tmp", f"other-host {dead_pid()}\n")
    users = fake_tmp(tmp_path, ".test.mine.tmp", None)  # no marker: not ssrl's
    with atomic_dir(tmp_path / "test") as out:
        (out / "x").write_text("1")
        assert not killed.exists()
    assert running.exists() and elsewhere.exists() and users.exists()
    assert sorted(p.name for p in (tmp_path / "test").iterdir()) == [".ssrl-output", "x"]
    # the workflow sweeps its whole results folder at start-up the same way
    (tmp_path / "store").mkdir()
    nested = fake_tmp(tmp_path / "store", ".train.x1.tmp", f"{host} {dead_pid()}\n")
    assert clean_stale_tmp(tmp_path, recursive=True) == [nested]
    assert running.exists() and users.exists()


def test_fingerprint_covers_code_and_store_content(tmp_path, make_wav, monkeypatch):
    from ssrl.data.kaldi import read_kaldi_dir
    from ssrl.data.stores import build_wave_store
    from ssrl.training import checkpoints

    folder = kaldi_folder(tmp_path / "test", make_wav)

    def fp() -> str:
        build_wave_store(read_kaldi_dir(folder), tmp_path / "store", min_seconds=0.0)
        return checkpoints.fingerprint({}, {"store": tmp_path / "store"})

    before = fp()
    assert fp() == before  # the same data rebuilt: the same fingerprint
    (folder / "trials").write_text("u0 u1 nontarget\nu0 u2 nontarget\n")
    assert fp() != before  # a trial label is part of the store's identity
    (folder / "trials").write_text("u0 u1 target\nu0 u2 nontarget\n")
    (folder / "utt2spk").write_text("u0 a\nu1 c\nu2 b\nu3 b\n")
    assert fp() != before  # and so is every speaker label
    (folder / "utt2spk").write_text("u0 a\nu1 a\nu2 b\nu3 b\n")
    assert fp() == before
    assert len(checkpoints.code_version()) == 16
    monkeypatch.setattr(checkpoints, "code_version", lambda: "edited")  # a source file edited
    assert fp() != before


def test_voxceleb_sets_are_digested_too(tmp_path, make_wav):
    root = tmp_path / "vox1"
    make_wav(root / "id10001" / "vid" / "00001.wav", 0.5, seed=1)
    make_wav(root / "id10002" / "vid" / "00001.wav", 0.5, seed=2)
    trials = tmp_path / "veri.txt"
    trials.write_text("1 id10001/vid/00001.wav id10002/vid/00001.wav\n")
    cfg = {"source": "voxceleb", "voxceleb": {"test_root": str(root), "trials": {"O": str(trials)}}}
    inputs = tmp_path / "inputs"
    assert update_digest(cfg, "test", inputs)
    digest = json.loads((inputs / "test.json").read_text())
    assert digest["audio"]["files"] == 2 and list(digest["lists"]) == ["trials:O"]
    assert not update_digest(cfg, "test", inputs)
    trials.write_text("0 id10001/vid/00001.wav id10002/vid/00001.wav\n")
    assert update_digest(cfg, "test", inputs)
