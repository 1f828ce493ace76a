"""The miniature VoxCeleb tree (ssrl.data.voxceleb_mini): VoxCeleb's, MUSAN's and RIRS_NOISES'
exact layouts, real AAC in .m4a, official trial formats, and the preparation step reading it
as it reads the real corpora (the whole DAG on it runs in tests/cluster/)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import yaml
from conftest import REPO, ssrl_env

from ssrl.config import check_data_paths, load_config
from ssrl.data.audio import SAMPLE_RATE, load_audio
from ssrl.data.prepare import prepare_set
from ssrl.files import InputError

VIDEO = r"[A-Za-z0-9_-]{11}"
TRIAL_LINE = re.compile(rf"^[01] id1\d{{4}}/{VIDEO}/\d{{5}}\.wav id1\d{{4}}/{VIDEO}/\d{{5}}\.wav$")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """The tree as a user (or make test-cluster) writes it: through the module's command."""
    out = tmp_path_factory.mktemp("vm") / "voxceleb-mini"
    done = subprocess.run([sys.executable, "-m", "ssrl.data.voxceleb_mini", "--out", str(out),
                           "--speakers", "4", "--utts-per-speaker", "4"],
                          env=ssrl_env(), capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def files(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.glob(pattern) if p.is_file())


def test_voxceleb_layouts(tree: Path) -> None:
    dev = files(tree / "voxceleb2/dev", "**/*")
    assert len(dev) == 16 and all(
        re.fullmatch(rf"aac/id0\d{{4}}/{VIDEO}/\d{{5}}\.m4a", str(p.relative_to(
            tree / "voxceleb2/dev"))) for p in dev)
    assert len({p.parts[-3] for p in dev}) == 4  # speakers
    assert all(len({p.parent for p in dev if p.parts[-3] == s}) == 2  # two videos each
               for s in {p.parts[-3] for p in dev})
    test2 = files(tree / "voxceleb2/test", "**/*")
    assert len(test2) == 12 and all(p.suffix == ".m4a" and p.parts[-4] == "aac" for p in test2)
    assert not {p.parts[-3] for p in dev} & {p.parts[-3] for p in test2}  # other speakers
    vox1 = files(tree / "voxceleb1/wav", "**/*")
    assert len(vox1) == 24 and all(
        re.fullmatch(rf"id1\d{{4}}/{VIDEO}/\d{{5}}\.wav", str(p.relative_to(
            tree / "voxceleb1/wav"))) for p in vox1)
    # real AAC (ffmpeg decodes it; soundfile cannot read an .m4a), 16 kHz, 4-6 s as VoxCeleb
    wave = load_audio(dev[0])
    assert 4.0 * SAMPLE_RATE <= len(wave) <= 6.1 * SAMPLE_RATE and 0.01 < abs(wave).max() <= 1
    assert dev[0].read_bytes()[4:8] == b"ftyp"  # an MP4 container
    info = sf.info(vox1[0])
    assert info.samplerate == SAMPLE_RATE and info.subtype == "PCM_16"


def test_trial_lists_in_the_official_format(tree: Path) -> None:
    lists = {name: (tree / "voxceleb1" / name).read_text().splitlines()
             for name in ("veri_test2.txt", "list_test_all2.txt", "list_test_hard2.txt")}
    for name, lines in lists.items():
        assert lines and all(TRIAL_LINE.match(line) for line in lines), name
        assert {line[0] for line in lines} == {"0", "1"}, name
        for line in lines:
            for utt in line.split()[1:]:
                assert (tree / "voxceleb1/wav" / utt).is_file(), (name, utt)
    everything = set(lists["list_test_all2.txt"])
    assert set(lists["veri_test2.txt"]) < everything
    assert set(lists["list_test_hard2.txt"]) < everything


def test_augmentation_trees(tree: Path) -> None:
    musan = files(tree / "musan", "**/*.wav")
    assert {p.relative_to(tree / "musan").parts[:2] for p in musan} == {
        ("music", "fma"), ("noise", "free-sound"), ("speech", "librivox")}
    rirs = files(tree / "RIRS_NOISES", "**/*.wav")
    assert len(rirs) == 3 and all(
        re.fullmatch(r"simulated_rirs/(small|medium|large)room/Room\d{3}/Room\d{3}-\d{5}\.wav",
                     str(p.relative_to(tree / "RIRS_NOISES"))) for p in rirs)


def test_the_shipped_overlay_prepares_it(tree: Path, tmp_path: Path) -> None:
    """config/voxceleb.yaml + config/voxceleb-mini.yaml, its data paths pointed at the tree:
    the start-up check passes and every set prepares as from the real corpora."""
    mini = yaml.safe_load((REPO / "config/voxceleb-mini.yaml").read_text())
    text = yaml.safe_dump(mini["data"]).replace("data/voxceleb-mini", str(tree))
    cfg = load_config(REPO / "config.yaml", REPO / "config/voxceleb.yaml",
                      REPO / "config/voxceleb-mini.yaml",
                      overrides={"data": yaml.safe_load(text)})
    check_data_paths(cfg)
    reports = {name: prepare_set(cfg["data"], name, tmp_path / name)
               for name in ("train", "dev", "test", "noise", "rir")}
    assert reports["train"]["n_utts"] == 16 and reports["train"]["formats"] == {".m4a": 16}
    assert reports["train"]["n_speakers"] == 4 and reports["train"]["n_sessions"] == 8
    assert reports["dev"]["drawn_trials"]["trials"] == "drawn"
    assert sorted(reports["test"]["trials"]) == ["E", "H", "O"]
    assert all(t["n_target"] > 0 for t in reports["test"]["trials"].values())
    assert reports["noise"]["categories"] == {"music": 2, "noise": 2, "speech": 2}
    assert reports["rir"]["n_utts"] == 3

    # a root without its audio folder, a missing path: one line naming the key / the file
    cfg["data"]["voxceleb"]["musan_root"] = str(tree / "no-musan")
    with pytest.raises(InputError, match=r"^config key data\.voxceleb\.musan_root: .*no-musan "
                                         r"not found$"):
        check_data_paths(cfg)
    with pytest.raises(InputError, match=r"no aac/ \(VoxCeleb2\) or wav/ \(VoxCeleb1\) folder"):
        prepare_set({**cfg["data"], "voxceleb": {**cfg["data"]["voxceleb"],
                                                 "train_root": str(tree / "musan")}},
                    "train", tmp_path / "bad")
