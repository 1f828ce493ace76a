"""Read and validate Kaldi-style data folders and trial lists.

Everything a user hands the workflow passes through here first, so every problem is reported as
an `InputError` naming the file and line the user has to fix, before any long job starts.

A data folder prepared by the workflow keeps, in `utt2origin`, the user's own file and line of
every utterance, so that an error found later (a corrupt audio file while the store is built)
points at the line the user wrote, not at the prepared copy.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssrl.files import InputError, read_keyed, read_table

log = logging.getLogger("ssrl.data")

#: Optional per-utterance maps of a data folder (file name -> KaldiDir attribute).
UTT_MAPS = ("utt2spk", "utt2sess", "utt2category", "utt2origin")
TRIAL_LABELS = {"target": 1, "nontarget": 0}
TRIAL_WORDS = {1: "target", 0: "nontarget"}


@dataclass
class KaldiDir:
    """A validated data folder. `wavs` keeps wav.scp order and holds absolute paths."""

    path: Path
    wavs: dict[str, Path]
    utt2spk: dict[str, str] | None = None
    utt2sess: dict[str, str] | None = None
    utt2category: dict[str, str] | None = None
    #: utterance -> "file:line" where the user listed it (written by `ssrl prepare`).
    utt2origin: dict[str, str] | None = None
    #: trial list name -> file: `trials` -> "trials", `trials_O` -> "O", `trials/x.kaldi` -> "x".
    trials: dict[str, Path] = field(default_factory=dict)
    #: wav.scp line of each utterance, so later errors can point at it.
    lines: dict[str, int] = field(default_factory=dict)
    #: the list file when it is not `path/wav.scp` (`ssrl embed --data list.scp`)
    list_file: Path | None = None

    @property
    def scp(self) -> Path:
        return self.list_file or self.path / "wav.scp"

    def where(self, utt: str) -> str:
        """`file:line` that lists `utt`: the user's own file when the folder was prepared."""
        if self.utt2origin and utt in self.utt2origin:
            return self.utt2origin[utt]
        return f"{self.scp}:{self.lines.get(utt, '?')}"


@dataclass
class Trials:
    """A trial list: parallel enroll/test utterance ids and labels (1 target, 0 non-target).

    `labels` is None for an unlabelled list (`enroll test` lines): it can be scored, not
    evaluated."""

    enroll: list[str]
    test: list[str]
    labels: np.ndarray | None  # int8

    def __len__(self) -> int:
        return len(self.enroll)

    def subset(self, keep: list[int]) -> Trials:
        return Trials([self.enroll[i] for i in keep], [self.test[i] for i in keep],
                      None if self.labels is None else self.labels[keep])


def trial_name(file: Path) -> str | None:
    """Name of the trial list stored in `file` (`trials` -> "trials", `trials_O` -> "O")."""
    if file.name == "trials":
        return "trials"
    if file.name.startswith("trials_") and len(file.name) > len("trials_"):
        return file.name[len("trials_"):]
    return None


def find_trial_lists(folder: Path) -> dict[str, Path]:
    """Trial lists of a data folder: `trials`, `trials_<name>`, and every file of a WeSpeaker
    style `trials/` subfolder (`trials/vox1_O_cleaned.kaldi` -> "vox1_O_cleaned")."""
    lists: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        name = trial_name(file)
        if name is not None and file.is_file():
            lists[name] = file
    sub = folder / "trials"
    if sub.is_dir():
        for file in sorted(sub.iterdir()):
            if file.is_file() and not file.name.startswith("."):
                name = file.name.split(".")[0]
                if name in lists:
                    raise InputError(f"{file}: a second trial list named {name!r} "
                                     f"(the first is {lists[name]})")
                lists[name] = file
    return lists


def read_kaldi_dir(path: str | os.PathLike, check_files: bool = True) -> KaldiDir:
    """Read and validate a data folder (see docs/architecture.md for the format).

    Relative audio paths are taken relative to the folder. With `check_files` every audio file
    must exist (only existence is checked; decoding problems surface when the store is built).
    Trial lists are validated against the folder's utterances. An empty wav.scp is an empty
    set (see `ssrl.data.prepare.empty_dir`), not an error.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"{folder}: data folder not found")
    scp = folder / "wav.scp"
    if not scp.is_file():
        raise InputError(f"{scp}: file not found (every data folder needs a wav.scp)")
    raw, lines = read_keyed(scp)
    if not raw:  # an empty set is legal (no noise or RIR set); its users check what they need
        log.warning("%s: no utterances listed (an empty set)", scp)

    def read_map(name: str) -> dict[str, str] | None:
        file = folder / name
        if not file.is_file():
            return None
        values, map_lines = read_keyed(file)
        for utt, lineno in map_lines.items():
            if utt not in raw:
                raise InputError(f"{file}:{lineno}: unknown utterance {utt!r} (not in wav.scp)")
        for utt in raw:
            if utt not in values:
                raise InputError(f"{file}: no entry for utterance {utt!r} "
                                 f"(wav.scp line {lines[utt]})")
        return values

    origin = read_map("utt2origin")

    def where(utt: str) -> str:
        return origin[utt] if origin else f"{scp}:{lines[utt]}"

    wavs = _audio_paths(raw, folder, where, check_files)
    maps = {name: origin if name == "utt2origin" else read_map(name) for name in UTT_MAPS}

    trials = find_trial_lists(folder)
    for file in trials.values():
        read_trials(file, known=wavs)
    return KaldiDir(path=folder, wavs=wavs, trials=trials, lines=lines, **maps)


def _audio_paths(raw: dict[str, str], folder: Path, where, check_files: bool
                 ) -> dict[str, Path]:
    """wav.scp values -> absolute audio paths (relative ones are relative to `folder`)."""
    wavs: dict[str, Path] = {}
    for utt, value in raw.items():
        if value.endswith("|"):
            raise InputError(f"{where(utt)}: piped commands are not supported; "
                             "give the path of an audio file")
        wav = Path(os.path.abspath(folder / value))  # an absolute value stays as it is
        if check_files and not wav.is_file():
            raise InputError(f"{where(utt)}: audio file not found: {wav}")
        wavs[utt] = wav
    return wavs


#: What a plain folder of audio may hold (wav/flac/ogg via libsndfile, the rest via ffmpeg).
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".m4a", ".aac", ".mp4"})


def read_audio_source(path: str | os.PathLike) -> KaldiDir:
    """The audio a user hands `ssrl embed --data`: a Kaldi folder, a list file in wav.scp form
    (any name; relative paths relative to its folder), or a plain folder of audio files, read
    recursively, whose utterance ids are the relative paths without extension
    (`spk1/a.wav` -> `spk1/a`)."""
    path = Path(path)
    if path.is_file():
        if path.name == "wav.scp":
            return read_kaldi_dir(path.parent)
        raw, lines = read_keyed(path)
        if not raw:
            raise InputError(f"{path}: no utterances listed")
        wavs = _audio_paths(raw, path.parent, lambda u: f"{path}:{lines[u]}", True)
        return KaldiDir(path=path.parent, wavs=wavs, lines=lines, list_file=path)
    if not path.is_dir():
        raise InputError(f"{path}: data not found (a folder of audio files, a Kaldi folder "
                         "or a wav.scp-style list)")
    if (path / "wav.scp").is_file():
        return read_kaldi_dir(path)
    files = sorted(f for f in path.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES
                   and f.is_file() and not any(p.startswith(".") for p in
                                               f.relative_to(path).parts))
    if not files:
        raise InputError(f"{path}: no wav.scp and no audio files ("
                         + ", ".join(sorted(AUDIO_SUFFIXES)) + ") in the folder")
    wavs: dict[str, Path] = {}
    for f in files:
        utt = f.relative_to(path).with_suffix("").as_posix()
        if utt in wavs:
            raise InputError(f"{f}: same utterance id {utt!r} as {wavs[utt]} (ids are paths "
                             "without extension)")
        wavs[utt] = f.resolve()
    return KaldiDir(path=path, wavs=wavs, utt2origin={u: str(f) for u, f in wavs.items()})


def read_trials(path: str | os.PathLike, known: Collection[str] | None = None) -> Trials:
    """Read a trial list: `enroll test target|nontarget`, VoxCeleb's `1|0 enroll test`, or
    unlabelled `enroll test` lines (every line of a file in the same form).

    VoxCeleb paths such as `id10270/x6uYqmx31kE/00001.wav` are used as utterance ids as they
    are. With `known`, every trial must name known utterances. A pair listed twice (in either
    order), a pair listed as both target and non-target, and a self trial (an utterance against
    itself) are errors naming both lines: each would silently change EER and minDCF.
    """
    path = Path(path)
    enroll: list[str] = []
    test: list[str] = []
    labels: list[int] = []
    first: dict[tuple[str, str], tuple[int, int | None]] = {}
    labelled: bool | None = None
    for lineno, fields in read_table(path, ncols=None):
        if len(fields) == 3 and fields[2] in TRIAL_LABELS:
            e, t, label = fields[0], fields[1], TRIAL_LABELS[fields[2]]
        elif len(fields) == 3 and fields[0] in ("0", "1"):
            label, e, t = int(fields[0]), fields[1], fields[2]
        elif len(fields) == 2:
            (e, t), label = fields, None
        elif len(fields) == 3:
            raise InputError(f"{path}:{lineno}: bad trial label {fields[2]!r} (expected "
                             "'enroll test target|nontarget', '1|0 enroll test' or "
                             "'enroll test')")
        else:
            raise InputError(f"{path}:{lineno}: expected 2 or 3 fields, got {len(fields)}: "
                             f"{' '.join(fields)!r}")
        if labelled is None:
            labelled = label is not None
        elif labelled != (label is not None):
            raise InputError(f"{path}:{lineno}: {'un' if labelled else ''}labelled line in a "
                             f"list whose first line is {'' if labelled else 'un'}labelled")
        if e == t:
            raise InputError(f"{path}:{lineno}: self trial: {e!r} against itself")
        if known is not None:
            for utt in (e, t):
                if utt not in known:
                    raise InputError(f"{path}:{lineno}: trial names unknown utterance {utt!r}")
        pair = (e, t) if e < t else (t, e)
        if pair in first:
            line0, label0 = first[pair]
            if label0 != label:
                raise InputError(f"{path}:{lineno}: trial {e} {t} is {TRIAL_WORDS[label]} here "
                                 f"but {TRIAL_WORDS[label0]} on line {line0}")
            raise InputError(f"{path}:{lineno}: duplicate trial {e} {t} (first on line {line0})")
        first[pair] = (lineno, label)
        enroll.append(e)
        test.append(t)
        if label is not None:
            labels.append(label)
    if not enroll:
        raise InputError(f"{path}: no trials listed")
    return Trials(enroll=enroll, test=test,
                  labels=np.asarray(labels, dtype=np.int8) if labelled else None)


def trial_rows(trials: Trials) -> list[tuple[str, ...]]:
    """Rows of `trials` in this workflow's own `enroll test [target|nontarget]` format."""
    if trials.labels is None:
        return list(zip(trials.enroll, trials.test))
    return [(e, t, TRIAL_WORDS[int(lab)]) for e, t, lab in zip(trials.enroll, trials.test,
                                                               trials.labels)]


def make_trials(utt2spk: dict[str, str], utt2sess: dict[str, str] | None,
                nontargets_per_target: int, rng: np.random.Generator,
                max_targets: int | None = None) -> list[tuple[str, str, str]]:
    """Same-speaker pairs from different sessions (all, or `max_targets` drawn), plus drawn
    different-speaker pairs, sorted. Without sessions every same-speaker pair qualifies."""
    utts = sorted(utt2spk)
    sess = utt2sess or {u: u for u in utts}
    by_spk: dict[str, list[str]] = {}
    for u in utts:
        by_spk.setdefault(utt2spk[u], []).append(u)
    targets = [(a, b) for group in by_spk.values() for a, b in itertools.combinations(group, 2)
               if sess[a] != sess[b]]
    if max_targets is not None and len(targets) > max_targets:
        targets = [targets[i] for i in sorted(rng.choice(len(targets), max_targets,
                                                         replace=False))]
    spk = np.array([utt2spk[u] for u in utts])
    n = len(utts)
    per_spk = np.unique(spk, return_counts=True)[1]
    n_avail = n * (n - 1) // 2 - int(sum(c * (c - 1) // 2 for c in per_spk))
    need = min(len(targets) * nontargets_per_target, n_avail)
    if need * 2 >= n_avail:  # dense: enumerate and pick
        pairs = [(i, j) for i, j in itertools.combinations(range(n), 2) if spk[i] != spk[j]]
        chosen = sorted(pairs[i] for i in rng.choice(len(pairs), need, replace=False))
    else:  # sparse: rejection-sample distinct pairs
        picked: set[tuple[int, int]] = set()
        while len(picked) < need:
            i, j = rng.integers(0, n, size=(2, 2 * (need - len(picked)) + 16))
            for a, b in zip(i.tolist(), j.tolist()):
                if spk[a] != spk[b] and len(picked) < need:
                    picked.add((min(a, b), max(a, b)))
        chosen = sorted(picked)
    rows = [(a, b, "target") for a, b in targets]
    rows += [(utts[i], utts[j], "nontarget") for i, j in chosen]
    return sorted(rows)
