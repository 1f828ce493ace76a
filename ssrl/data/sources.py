"""The user's data as inputs of the workflow: one small digest file per set, rewritten only when
the content of the set changes.

Snakemake reruns a job when an input is newer than its outputs. The user's lists and audio live
outside the results folder, and a corpus can hold a million audio files: far too many to be rule
inputs. So at every start the workflow (common.smk) calls `update_digest` for each set. It reads
the set's list files (wav.scp, utt2spk, utt2sess, trial lists, ...), looks at every audio file
they name, and writes `<results>/inputs/<set>.json` -- the sha256 of each list and of the audio
as a whole -- only when that differs from the file already there. `prepare_data` lists the file
as an input: an edit anywhere in a set makes it newer than the prepared folder, so that set's
preparation and everything downstream of it rerun; an unchanged corpus leaves the file (and its
modification time) alone and nothing reruns.

Audio is hashed once: the sha256 of each file is cached (`<results>/inputs/.cache/<set>.tsv`)
under its size, modification time, change time and inode. A file is hashed again only when one
of those changed, so an edit is seen even when the editor restored the modification time (the
change time cannot be set back), and an unchanged corpus costs one `stat` per file per start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ssrl.data.kaldi import UTT_MAPS, find_trial_lists
from ssrl.files import InputError, read_table, sha256_file, write_text

log = logging.getLogger("ssrl.data")

#: Threads hashing audio files (I/O bound; hashlib releases the GIL on large buffers).
HASH_THREADS = 8
_Stat = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode


def _stat(path: str) -> _Stat | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def set_files(data: dict, name: str) -> tuple[dict[str, str], dict[str, str]]:
    """What preparing set `name` reads, from the config's `data` section: the list files
    (label -> file) and the audio (utterance id -> absolute path, as `prepare` resolves it).
    Both empty for a left-out set. (Plain strings: a million Path objects cost seconds.)"""
    from ssrl.data.prepare import musan_audio, rir_audio, set_source, voxceleb_audio

    src = set_source(data, name)
    if not src:
        return {}, {}
    root = Path(src)
    if not root.is_dir():
        raise InputError(f"{root}: directory not found")
    if data["source"] == "kaldi":
        lists = {n: str(root / n) for n in ("wav.scp", *UTT_MAPS) if (root / n).is_file()}
        lists.update({f"trials:{n}": str(f) for n, f in find_trial_lists(root).items()})
        audio = {}
        if (root / "wav.scp").is_file():
            base = os.path.abspath(root)
            for _lineno, (utt, value) in read_table(root / "wav.scp", ncols=2):
                audio[utt] = os.path.normpath(os.path.join(base, value))
        return lists, audio
    v = data["voxceleb"]
    if name == "noise":
        found = musan_audio(root)[1]
    elif name == "rir":
        found = rir_audio(root)
    else:
        found = voxceleb_audio(root)[0]
    trials = {"test": v.get("trials") or {}, "dev": {"trials": v["dev_trials"]}
              if v.get("dev_trials") else {}}.get(name, {})
    return ({f"trials:{n}": str(f) for n, f in trials.items()},
            {utt: os.path.abspath(f) for utt, f in found.items()})


class HashCache:
    """sha256 of files, kept under their (size, mtime, ctime, inode) in a tab-separated file."""

    def __init__(self, path: Path, notify: Callable[[str], None] = log.info) -> None:
        self.path = path
        self.notify = notify
        self.entries: dict[str, tuple[_Stat, str]] = {}
        self.dirty = False
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                fields = line.split("\t", 5)
                try:
                    stat = (int(fields[1]), int(fields[2]), int(fields[3]), int(fields[4]))
                    self.entries[fields[5]] = (stat, fields[0])
                except (IndexError, ValueError):
                    continue  # a torn line: that file is hashed again

    def digests(self, files: list[str]) -> tuple[dict[str, str], list[str]]:
        """file -> sha256 ("missing" for a file that cannot be read), and the files whose
        content changed since they were cached."""
        out: dict[str, str] = {}
        todo: list[tuple[str, _Stat]] = []
        for file in files:
            stat = _stat(file)
            if stat is None:
                out[file] = "missing"
                continue
            cached = self.entries.get(file)
            if cached is not None and cached[0] == stat:
                out[file] = cached[1]
            else:
                todo.append((file, stat))
        if len(todo) > 1000:
            self.notify(f"hashing {len(todo)} new or changed files of {self.path.stem} "
                        "(once: cached for later starts)")
        changed = []
        with ThreadPoolExecutor(HASH_THREADS) as pool:
            hashed = pool.map(_try_sha256, [f for f, _ in todo])
            for (file, stat), digest in zip(todo, hashed):
                out[file] = digest
                old = self.entries.get(file)
                if old is not None and old[1] != digest:
                    changed.append(file)
                if digest != "missing" and "\n" not in file:
                    self.entries[file] = (stat, digest)
                    self.dirty = True
        return out, changed

    def save(self) -> None:
        if self.dirty:
            write_text(self.path, "".join(
                f"{digest}\t{stat[0]}\t{stat[1]}\t{stat[2]}\t{stat[3]}\t{path}\n"
                for path, (stat, digest) in self.entries.items()))
            self.dirty = False


def _try_sha256(path: str) -> str:
    try:
        return sha256_file(path)
    except OSError:
        return "missing"


def set_digest(data: dict, name: str, cache: HashCache) -> tuple[dict[str, Any], list[str]]:
    """The digest of set `name` (what `<results>/inputs/<set>.json` holds) and the audio files
    whose content changed since the cache saw them. A set that cannot be read yet (a missing
    folder, a list that is not UTF-8) gets the error as its digest: `prepare` reports it, and
    fixing it changes the digest."""
    try:
        lists, audio = set_files(data, name)
    except (InputError, OSError) as err:
        return {"set": name, "error": str(err)}, []
    files = sorted({*lists.values(), *audio.values()})
    sums, changed = cache.digests(files)
    audio_files = set(audio.values())
    changed = [f for f in changed if f in audio_files]  # the lists are named by label below
    audio_sum = hashlib.sha256()
    for utt in sorted(audio):
        audio_sum.update(f"{utt}\t{sums[audio[utt]]}\n".encode())
    return {"set": name, "lists": {label: sums[f] for label, f in sorted(lists.items())},
            "audio": {"files": len(audio), "sha256": audio_sum.hexdigest(),
                      "missing": sum(sums[f] == "missing" for f in audio.values())}}, changed


def update_digest(data: dict, name: str, folder: str | os.PathLike,
                  notify: Callable[[str], None] = log.info) -> bool:
    """Write `<folder>/<name>.json` when set `name`'s content differs from what it records
    (creating it the first time); leave it untouched otherwise. True when it was written;
    `notify` gets one line saying what changed, and one before a long first hashing."""
    folder = Path(folder)
    target = folder / f"{name}.json"
    cache = HashCache(folder / ".cache" / f"{name}.tsv", notify)
    digest, changed = set_digest(data, name, cache)
    cache.save()
    text = json.dumps(digest, indent=2, sort_keys=True) + "\n"
    try:
        old = target.read_text(encoding="utf-8")
    except OSError:
        old = None
    if old == text:
        return False
    if old is not None:
        what = _what_changed(old, digest, changed)
        notify(f"the {name} data changed since the last run ({what}): its preparation and "
               "every job that depends on it rerun")
    write_text(target, text)
    return True


def _what_changed(old_text: str, new: dict[str, Any], changed: list[str]) -> str:
    try:
        old = json.loads(old_text)
    except json.JSONDecodeError:
        return "unreadable digest"
    parts = [label for label in sorted({*old.get("lists", {}), *new.get("lists", {})})
             if old.get("lists", {}).get(label) != new.get("lists", {}).get(label)]
    if changed:
        parts.append(f"{len(changed)} audio file(s), e.g. {changed[0]}")
    elif old.get("audio") != new.get("audio"):
        parts.append("the audio")
    if "error" in new or "error" in old:
        parts.append(new.get("error", "readable again"))
    return ", ".join(parts) or "the digest"
