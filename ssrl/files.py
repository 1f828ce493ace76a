"""File helpers shared by every stage: atomic writes, Kaldi-style maps, clear input errors.

Every output of the workflow is written through these functions so that a crash, a kill or a
full disk never leaves a half-written file that Snakemake (or a resumed job) would take as done.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np


class InputError(Exception):
    """Bad user input. The message always names the file (and line, where there is one)."""


class OutputError(Exception):
    """An output could not be written (disk full, permissions). Nothing half-written is left."""


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


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `path` (an old `path` is removed)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as err:
        raise _fail_write(path, err) from err
    try:
        yield tmp
        os.chmod(tmp, _umask_mode(directory=True))
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


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def write_table(path: str | os.PathLike, rows: Iterable[Iterable[Any]]) -> None:
    """Write a Kaldi-style table: one line per row, fields separated by single spaces."""
    write_text(path, "".join(" ".join(str(f) for f in row) + "\n" for row in rows))


def read_table(path: str | os.PathLike, ncols: int | None = 2,
               min_cols: int | None = None) -> list[tuple[int, list[str]]]:
    """Read a Kaldi-style table as (line number, fields); blank lines and `#` comments skipped.

    `ncols` fixes the field count (the last field takes the rest of the line, so paths may hold
    spaces); `min_cols` instead accepts any count at or above it.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
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


def read_map(path: str | os.PathLike) -> dict[str, str]:
    """Read a two-column Kaldi map (`key value`), rejecting duplicate keys."""
    out: dict[str, str] = {}
    first: dict[str, int] = {}
    for lineno, (key, value) in read_table(path, ncols=2):
        if key in out:
            raise InputError(
                f"{path}:{lineno}: duplicate utterance id {key!r} (first on line {first[key]})")
        out[key] = value
        first[key] = lineno
    return out
