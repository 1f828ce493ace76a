"""Turn corpora as distributed (VoxCeleb1/2, MUSAN, RIRS_NOISES, any Kaldi dir, the built-in
corpus) into the data folders the workflow reads: train/, dev/, test/, noise/, rir/.

Only lists are written here (wav.scp with absolute paths, utt2spk, ...); audio is decoded once,
later, when the wave store is built. Each folder is written whole into a temporary folder and
renamed, so a failed preparation never leaves a partial folder behind.

The dev set (in-training evaluation, choosing defaults) must share no speaker with test. When a
dev folder has speakers but no trial list, one is drawn here from its utt2spk (cross-session
targets, `DEV_NONTARGETS_PER_TARGET` non-targets each, at most `DEV_MAX_TARGETS` targets).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import numpy as np

from ssrl.data.kaldi import (
    UTT_MAPS,
    make_trials,
    read_kaldi_dir,
    read_trials,
    trial_rows,
)
from ssrl.files import InputError, atomic_dir, check_apart, write_table

SETS = ("train", "dev", "test", "noise", "rir")
DEV_NONTARGETS_PER_TARGET = 4
DEV_MAX_TARGETS = 20000

VOX_SUFFIXES = (".wav", ".flac", ".m4a")  # preference order when one utterance has several
MUSAN_CATEGORIES = ("music", "noise", "speech")
RIR_ROOMS = ("smallroom", "mediumroom", "largeroom")
_SPEAKER = re.compile(r"^id\d+$")
_TRIAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _abs(path: Path) -> str:
    return os.path.abspath(path)


def _require_dir(root: Path) -> None:
    if not root.is_dir():
        raise InputError(f"{root}: directory not found")


def voxceleb_audio(root: Path) -> tuple[dict[str, Path], int]:
    """utterance id -> audio file of a VoxCeleb tree (see `prepare_voxceleb`), and how many
    files were left out as another format of an utterance already found."""
    found: dict[str, Path] = {}
    duplicates = 0
    for dirpath, _dirs, files in os.walk(root, followlinks=True):
        folder = Path(dirpath)
        if not _SPEAKER.match(folder.parent.name):
            continue
        for name in files:
            file = folder / name
            if file.suffix.lower() not in VOX_SUFFIXES:
                continue
            utt = f"{folder.parent.name}/{folder.name}/{file.stem}.wav"
            if utt in found:
                duplicates += 1
                rank = VOX_SUFFIXES.index
                if rank(file.suffix.lower()) >= rank(found[utt].suffix.lower()):
                    continue
            found[utt] = file
    return found, duplicates


def prepare_voxceleb(root: str | os.PathLike, out: str | os.PathLike,
                     trials: dict[str, str | os.PathLike] | None = None,
                     draw_trials: bool = False) -> dict:
    """Index a VoxCeleb1 (wav) or VoxCeleb2 (m4a) tree into a data folder, with its trial
    lists (`trials`: name -> file) or, for a dev set without one, a drawn list.

    Any `id*/<video>/<n>.{wav,flac,m4a}` below `root` counts. The utterance id is the path from
    the speaker folder with the extension replaced by `.wav` (`id10001/1zcIwhmdeo4/00001.wav`),
    the form VoxCeleb's trial lists use. utt2spk is the speaker folder, utt2sess speaker/video.
    When one utterance exists in several formats (e.g. m4a converted to wav in place) the first
    of wav, flac, m4a is used and the others are counted in the report.
    """
    root, out = Path(root), Path(out)
    _require_dir(root)
    found, duplicates = voxceleb_audio(root)
    if not found:
        if not any((root / sub).is_dir() for sub in ("aac", "wav")):
            raise InputError(f"{root}: no aac/ (VoxCeleb2) or wav/ (VoxCeleb1) folder and no "
                             "id*/<video>/*.wav|m4a|flac below it: is this the corpus root?")
        raise InputError(f"no VoxCeleb audio found under {root}: "
                         "expected id*/<video>/*.wav|m4a|flac")
    utts = sorted(found)
    report: dict = {}
    with atomic_dir(out) as tmp:
        write_table(tmp / "wav.scp", ((u, _abs(found[u])) for u in utts))
        write_table(tmp / "utt2spk", ((u, u.split("/")[0]) for u in utts))
        write_table(tmp / "utt2sess", ((u, "/".join(u.split("/")[:2])) for u in utts))
        if trials:
            report["trials"] = prepare_trials(trials, tmp)
        elif draw_trials:
            report["drawn_trials"] = add_dev_trials(tmp, seed=0)
    return report | {
        "root": _abs(root),
        "n_utts": len(utts),
        "n_speakers": len({u.split("/")[0] for u in utts}),
        "n_sessions": len({"/".join(u.split("/")[:2]) for u in utts}),
        "formats": dict(sorted(Counter(found[u].suffix.lower() for u in utts).items())),
        "duplicates_ignored": duplicates,
    }


def prepare_trials(files: dict[str, str | os.PathLike], out: str | os.PathLike) -> dict:
    """Copy trial lists into data folder `out` as `trials_<name>` (enroll test target|nontarget).

    Accepts VoxCeleb's `1 enroll test` lists (O/E/H, cleaned) and this workflow's own format;
    every trial must name an utterance of out/wav.scp. Returns name -> counts.
    """
    out = Path(out)
    known = read_kaldi_dir(out, check_files=False).wavs
    report = {}
    for name, file in files.items():
        if not _TRIAL_NAME.match(name):
            raise InputError(f"{file}: bad trial list name {name!r} (letters, digits, _ . -)")
        trials = read_trials(file, known=known)
        write_table(out / ("trials" if name == "trials" else f"trials_{name}"),
                    trial_rows(trials))
        report[name] = {"source": _abs(Path(file)), "n_trials": len(trials),
                        "n_target": None if trials.labels is None else int(trials.labels.sum())}
    return report


def musan_audio(root: Path) -> tuple[Path, dict[str, Path]]:
    """The MUSAN folder (`root` or `root/musan`) and its utterance id -> audio file."""
    if not any((root / c).is_dir() for c in MUSAN_CATEGORIES) and (root / "musan").is_dir():
        root = root / "musan"
    wavs: dict[str, Path] = {}
    for cat in MUSAN_CATEGORIES:
        for file in sorted((root / cat).glob("*/*.wav")):
            wavs[f"{cat}/{file.parent.name}/{file.stem}"] = file
    return root, wavs


def prepare_musan(root: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Index MUSAN (`{music,noise,speech}/<subset>/*.wav`) with utt2category.

    The utterance id is the path below `root` without extension (`noise/free-sound/noise-...`).
    A `root` that holds a `musan/` folder is accepted too.
    """
    root, out = Path(root), Path(out)
    _require_dir(root)
    root, wavs = musan_audio(root)
    category = {utt: utt.split("/")[0] for utt in wavs}
    if not wavs:
        raise InputError(f"no MUSAN audio found under {root}: "
                         "expected {music,noise,speech}/<subset>/*.wav")
    with atomic_dir(out) as tmp:
        write_table(tmp / "wav.scp", ((u, _abs(w)) for u, w in wavs.items()))
        write_table(tmp / "utt2category", category.items())
    return {"root": _abs(root), "n_utts": len(wavs),
            "categories": dict(sorted(Counter(category.values()).items()))}


def rir_audio(root: Path) -> dict[str, Path]:
    """Utterance id -> audio file of RIRS_NOISES' simulated RIRs (see `prepare_rirs`)."""
    for base in (root / "simulated_rirs", root / "RIRS_NOISES" / "simulated_rirs", root):
        if any((base / room).is_dir() for room in RIR_ROOMS):
            break
    wavs: dict[str, Path] = {}
    for room in RIR_ROOMS:
        for file in sorted((base / room).glob("*/*.wav")):
            wavs[f"{room}/{file.stem}"] = file
    return wavs


def prepare_rirs(root: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Index RIRS_NOISES' simulated RIRs (`simulated_rirs/<room size>/Room*/*.wav`).

    The utterance id is `<room size>/<file stem>`, e.g. `smallroom/Room001-00001`. `root` may
    be the RIRS_NOISES folder, its parent, or the simulated_rirs folder itself.
    """
    root, out = Path(root), Path(out)
    _require_dir(root)
    wavs = rir_audio(root)
    if not wavs:
        raise InputError(f"no RIRS_NOISES audio found under {root}: expected "
                         "simulated_rirs/{smallroom,mediumroom,largeroom}/Room*/*.wav")
    with atomic_dir(out) as tmp:
        write_table(tmp / "wav.scp", ((u, _abs(w)) for u, w in wavs.items()))
    return {"root": _abs(root), "n_utts": len(wavs),
            "rooms": dict(sorted(Counter(u.split("/")[0] for u in wavs).items()))}


def empty_dir(out: str | os.PathLike) -> None:
    """Write an empty data folder (an empty wav.scp): a set the configuration leaves out."""
    with atomic_dir(out) as tmp:
        write_table(tmp / "wav.scp", [])


def prepare_kaldi(src: str | os.PathLike, out: str | os.PathLike,
                  draw_trials: bool = False) -> dict:
    """Validate a user's own data folder and copy it to `out` with absolute audio paths.

    Trial lists are rewritten in the `enroll test target|nontarget` format under their names
    (`trials`, `trials_<name>`, and WeSpeaker's `trials/<name>.kaldi`). `utt2origin` keeps the
    user's wav.scp line of every utterance for later error messages.
    """
    data = read_kaldi_dir(src, check_files=True)
    if not data.wavs:
        raise InputError(f"{data.scp}: no utterances listed")
    maps = {name: getattr(data, name) for name in UTT_MAPS if name != "utt2origin"}
    trial_files = {name: read_trials(file) for name, file in data.trials.items()}
    with atomic_dir(out) as tmp:
        write_table(tmp / "wav.scp", ((u, str(w)) for u, w in data.wavs.items()))
        for name, values in maps.items():
            if values is not None:
                write_table(tmp / name, values.items())
        write_table(tmp / "utt2origin", ((u, data.where(u)) for u in data.wavs))
        for name, trials in trial_files.items():
            file = "trials" if name == "trials" else f"trials_{name}"
            write_table(tmp / file, trial_rows(trials))
        drawn = add_dev_trials(tmp, seed=0) if draw_trials and not trial_files else None
    report: dict = {"source": _abs(Path(src)), "n_utts": len(data.wavs),
                    "trials": {name: len(t) for name, t in trial_files.items()}}
    if data.utt2spk is not None:
        report["n_speakers"] = len(set(data.utt2spk.values()))
    if drawn:
        report["drawn_trials"] = drawn
    return report


def add_dev_trials(folder: Path, seed: int) -> dict:
    """Draw a trial list for a dev folder that has speakers but no list (see module docstring)."""
    data = read_kaldi_dir(folder, check_files=False)
    if data.trials:
        return {"trials": "given"}
    if data.utt2spk is None:
        raise InputError(f"{folder}: a dev set needs a trial list or an utt2spk to draw one")
    rows = make_trials(data.utt2spk, data.utt2sess, DEV_NONTARGETS_PER_TARGET,
                       np.random.default_rng(seed), max_targets=DEV_MAX_TARGETS)
    if not any(r[2] == "target" for r in rows):
        raise InputError(f"{folder}: no two utterances of one speaker from different sessions; "
                         "cannot draw dev target trials")
    write_table(folder / "trials", rows)
    return {"trials": "drawn", "n_trials": len(rows)}


def set_source(data: dict, name: str) -> str | None:
    """Where set `name` comes from in the config's `data` section (None: left out)."""
    if data["source"] == "kaldi":
        return data["kaldi"].get(name)
    v = data["voxceleb"]
    return {"train": v.get("train_root"), "dev": v.get("dev_root"), "test": v.get("test_root"),
            "noise": v.get("musan_root"), "rir": v.get("rirs_root")}[name]


def prepare_set(data: dict, name: str, out: str | os.PathLike) -> dict:
    """The `prepare` step of one set (train, dev, test, noise or rir) from the config's `data`
    section (the keys this set reads): a Kaldi-style folder at `out`; a set the configuration
    leaves out (no dev set, no MUSAN) becomes an empty folder. The train and test sets are
    required."""
    out = Path(out)
    if name not in SETS:
        raise InputError(f"unknown data set {name!r}; expected one of {', '.join(SETS)}")
    if data["source"] == "builtin":
        from ssrl.data.synth import generate_part

        return generate_part(out, name, data["builtin"])
    src = set_source(data, name)
    if not src:
        if name in ("train", "test"):
            key = f"data.kaldi.{name}" if data["source"] == "kaldi" else \
                f"data.voxceleb.{name}_root"
            raise InputError(f"config {key}: required for source {data['source']}")
        empty_dir(out)
        return {}
    check_apart(out, src)
    if data["source"] == "kaldi":
        return prepare_kaldi(Path(src), out, draw_trials=name == "dev")
    if name == "noise":
        return prepare_musan(Path(src), out)
    if name == "rir":
        return prepare_rirs(Path(src), out)
    v = data["voxceleb"]
    if name == "test":
        return prepare_voxceleb(Path(src), out, trials=v["trials"])
    if name == "dev":
        given = {"trials": v["dev_trials"]} if v.get("dev_trials") else None
        return prepare_voxceleb(Path(src), out, trials=given, draw_trials=given is None)
    return prepare_voxceleb(Path(src), out)
