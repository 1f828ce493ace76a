"""File helpers shared by every stage: atomic writes, Kaldi-style tables, clear input errors.

Every output of the workflow is written through these functions so that a crash, a kill or a
full disk never leaves a half-written file that Snakemake (or a resumed job) would take as done.

Folders are only ever replaced when ssrl made them: every folder written by `atomic_dir` holds
a marker file (`OWNER_MARK`), and an existing folder without it (a user's data, their thesis) is
refused with an `OutputError` instead of being deleted.
"""

from __future__ import annotations

import codecs
import contextlib
import glob
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np


class InputError(Exception):
    """Bad user input. The message always names the file (and line, where there is one)."""


class OutputError(Exception):
    """An output could not be written (disk full, permissions). Nothing half-written is left."""


log = logging.getLogger("ssrl")

#: Written into every folder `atomic_dir` creates: only such folders are ever replaced.
OWNER_MARK = ".ssrl-output"
#: Written into `atomic_dir`'s temporary folder while it is filled: `<host> <pid>` of the writer,
#: so what a killed writer left (`kill -9`, a power cut) can be told apart and removed later.
TMP_MARK = ".ssrl-tmp"


def _umask_mode(directory: bool = False) -> int:
    """The mode a plainly created file (or folder) would get; mkstemp/mkdtemp use 0600/0700."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def _fail_write(path: Path, err: OSError) -> OutputError:
    return OutputError(f"{path}: could not write output ({err.strerror or err}); nothing was kept")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`.

    On any exception the temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    try:  # an unwritable place fails here, before anything exists
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _fail_write(path, err) from err
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _umask_mode())
        os.replace(tmp_path, path)
    except OSError as err:
        tmp_path.unlink(missing_ok=True)
        raise _fail_write(path, err) from err
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def check_replaceable(path: str | os.PathLike) -> None:
    """Refuse an output folder that exists and was not made by ssrl (empty folders are fine)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir() or path.is_symlink():
        raise OutputError(f"{path}: exists and is not a folder ssrl made; refusing to replace "
                          "it (choose another output path)")
    if (path / OWNER_MARK).is_file() or not any(path.iterdir()):
        return
    raise OutputError(f"{path}: folder exists and was not written by ssrl; refusing to replace "
                      "it (choose another output folder, or remove it yourself)")


def _overlap(out: Path, src: Path) -> bool:
    return out == src or src in out.parents or out in src.parents


def check_apart(out: str | os.PathLike, *inputs: str | os.PathLike | None,
                flags: dict[str, str] | None = None) -> None:
    """An output must be neither one of the inputs nor inside or around one of them.

    Paths are compared after resolving symbolic links, so a link to an input is that input.
    `flags` names the option each input came from (path -> "--trials"), for the message.
    """
    out_abs = Path(os.path.realpath(out))
    for item in inputs:
        if item is None:
            continue
        src = Path(os.path.realpath(item))
        if _overlap(out_abs, src):
            given = f" ({flags[os.fspath(item)]})" if flags and os.fspath(item) in flags else ""
            raise OutputError(f"{out}: the output would overlap the input {item}{given}; "
                              "choose an output path outside it")


def check_outputs(outputs: Iterable[str | os.PathLike],
                  inputs: dict[str, list[str | os.PathLike]],
                  containers: dict[str, list[str | os.PathLike]] | None = None) -> None:
    """The one rule for every step's outputs: none may name, lie inside or contain any of the
    step's inputs (`inputs`: option -> its paths). A container (the experiment folder that
    `tables` reads) may hold the outputs but may not be, or lie inside, one of them. Checked
    before any work, so a refused command leaves its inputs untouched."""
    flags = {os.fspath(p): flag for flag, paths in inputs.items() for p in paths}
    every = [p for paths in inputs.values() for p in paths]
    for out in outputs:
        check_apart(out, *every, flags=flags)
        out_abs = Path(os.path.realpath(out))
        for flag, paths in (containers or {}).items():
            for item in paths:
                src = Path(os.path.realpath(item))
                if out_abs == src or out_abs in src.parents:
                    raise OutputError(f"{out}: the output would overlap the input {item} "
                                      f"({flag}); choose an output path inside it")


def _writer_gone(tmp: Path) -> bool:
    """True when `tmp` is an `atomic_dir` temporary folder whose writer no longer runs: its
    marker names this host and a process id that is not alive. (A folder written from another
    host of a shared file system, or by a live process, is never judged gone.)"""
    try:
        host, pid = (tmp / TMP_MARK).read_text().split()
        pid_number = int(pid)
    except (OSError, ValueError):
        return False  # not ssrl's temporary folder, or one too young to hold its marker
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid_number, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive, owned by someone else
    return False


def clean_stale_tmp(folder: str | os.PathLike, name: str | None = None,
                    recursive: bool = False) -> list[Path]:
    """Remove the temporary folders (`.<name>.*.tmp`, any name when None) that a killed
    `atomic_dir` left in `folder` (and below it with `recursive`); only folders holding ssrl's
    `TMP_MARK` of a writer that is gone. Returns what was removed."""
    pattern = f".{glob.escape(name)}.*.tmp" if name is not None else ".*.tmp"
    folder = Path(folder)
    found = folder.rglob(pattern) if recursive else folder.glob(pattern)
    removed = []
    for tmp in sorted(found):
        if tmp.is_dir() and not tmp.is_symlink() and _writer_gone(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            log.info("removed %s, left by an interrupted earlier run", tmp)
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `path`.

    `path` may exist only as a folder ssrl made earlier (it holds `OWNER_MARK`) or as an empty
    folder; anything else is refused before work starts. The new folder gets the marker.
    Temporary folders of `path` that a killed earlier writer left are removed first.
    """
    path = Path(path)
    check_replaceable(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(path.parent, path.name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as err:
        raise _fail_write(path, err) from err
    try:
        (tmp / TMP_MARK).write_text(f"{socket.gethostname()} {os.getpid()}\n")
        yield tmp
        (tmp / OWNER_MARK).write_text("written by ssrl (python -m ssrl); ssrl may replace it\n")
        (tmp / TMP_MARK).unlink()
        os.chmod(tmp, _umask_mode(directory=True))
        check_replaceable(path)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _fail_write(path, err) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: line {err.lineno}: invalid JSON ({err.msg})") from None


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """`torch.save` atomically. A failed write (a full disk) is one OutputError naming `path`:
    torch reports it as a RuntimeError from its zip writer, not as an OSError."""
    import torch

    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
        except RuntimeError as err:
            cause = err.__cause__ or err.__context__
            if isinstance(cause, OSError):
                raise cause from None
            text = " ".join(str(err).split())
            raise OSError(0, "write failed: " + text[:200]) from None


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 4 MiB blocks: the one digest of a file that stores,
    input digests and checkpoint fingerprints all compare."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def write_table(path: str | os.PathLike, rows: Iterable[Iterable[Any]]) -> None:
    """Write a Kaldi-style table: one line per row, fields separated by single spaces."""
    write_text(path, "".join(" ".join(str(f) for f in row) + "\n" for row in rows))


def read_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 text file; a leading byte-order mark is dropped.

    Text that is not UTF-8 (a latin-1 file, say) is an InputError naming the line, never
    silently replaced characters: utterance ids must match exactly across files.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[err.start]:02x} at "
                             f"column {err.start + 1}); save the file as UTF-8") from None
        yield lineno, text


def read_table(path: str | os.PathLike, ncols: int | None = 2,
               min_cols: int | None = None) -> list[tuple[int, list[str]]]:
    """Read a Kaldi-style table as (line number, fields); blank lines and `#` comments skipped.

    `ncols` fixes the field count (the last field takes the rest of the line, so paths may hold
    spaces); `min_cols` instead accepts any count at or above it.
    """
    rows = []
    for lineno, line in read_lines(path):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if ncols is not None:
            fields = line.split(maxsplit=ncols - 1)
            if len(fields) != ncols:
                raise InputError(
                    f"{path}:{lineno}: expected {ncols} fields, got {len(fields)}: {line!r}")
        else:
            fields = line.split()
            if min_cols is not None and len(fields) < min_cols:
                raise InputError(
                    f"{path}:{lineno}: expected at least {min_cols} fields, "
                    f"got {len(fields)}: {line!r}")
        rows.append((lineno, fields))
    return rows


def read_keyed(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, int]]:
    """Read a two-column Kaldi map (`key value`) and each key's line number; a duplicate key
    is an InputError naming both lines."""
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    for lineno, (key, value) in read_table(path, ncols=2):
        if key in values:
            raise InputError(
                f"{path}:{lineno}: duplicate utterance id {key!r} (first on line {lines[key]})")
        values[key] = value
        lines[key] = lineno
    return values, lines


def read_map(path: str | os.PathLike) -> dict[str, str]:
    """Read a two-column Kaldi map (`key value`), rejecting duplicate keys."""
    return read_keyed(path)[0]
