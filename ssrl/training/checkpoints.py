"""Resume points of a training job, valid only for the job that wrote them.

A checkpoint carries a fingerprint of everything that determines the job's result: its config
(every section it reads, minus where and how it runs), the identity of each input (a store's
checksummed meta.json, a model or label file's bytes) and the code version (the package
version and a sha256 of every source file of `ssrl/`, so any edit of the code counts). A job
resumes only from a checkpoint with its own fingerprint; otherwise it starts over and says so
in one log line, so a rerun with changed values can never pick up another job's state: the
result always comes from the config that names it.

A job that finished training keeps its last resume point, marked finished and without the
optimiser's state (`finish`), until it runs again: a job killed after training but before the
workflow accepted its outputs (a SLURM time limit hit in the wrap-up, a node lost) is rerun by
writing its outputs from that point, with no training. A later run of the job with another
fingerprint ignores it and replaces it with its own checkpoints. It holds student and teacher
(heads included) and the per-utterance state, not the optimiser's.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

import ssrl
from ssrl.files import InputError, save_torch, sha256_file
from ssrl.runtime import Dist

log = logging.getLogger("ssrl.train")

#: Bumped whenever training code changes what a given config and inputs produce (a marker for
#: readers of old checkpoints; `code_version()` already changes with any edit of the source).
TRAINING_CODE_VERSION = 2
#: Runtime keys that change the numbers (the others only say where and how fast it runs).
RESULT_RUNTIME_KEYS = ("bf16", "compile")


def input_identity(path: str | os.PathLike | None) -> str:
    """What identifies an input: a store folder by its meta.json (which lists every shard's
    sha256), a file by its bytes; "none" when there is no such input."""
    if path is None:
        return "none"
    path = Path(path)
    if path.is_dir():
        meta = path / "meta.json"
        return sha256_file(meta) if meta.is_file() else f"folder:{path.resolve()}"
    if not path.is_file():
        raise InputError(f"{path}: input not found")
    return sha256_file(path)


@functools.cache
def code_version() -> str:
    """sha256 of the package's source (every `ssrl/**/*.py`, by path and content): results
    made by other code never share a fingerprint, even between two commits of one version."""
    root = Path(ssrl.__file__).resolve().parent
    digest = hashlib.sha256()
    for file in sorted(root.rglob("*.py")):
        digest.update(f"{file.relative_to(root).as_posix()}\0".encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def fingerprint(cfg: dict[str, Any], inputs: dict[str, str | os.PathLike | None]) -> str:
    """sha256 of the job's result-determining config, its inputs and the code version."""
    result_cfg = {k: v for k, v in cfg.items() if k not in ("job", "runtime", "tracking")}
    result_cfg["runtime"] = {k: cfg.get("runtime", {}).get(k) for k in RESULT_RUNTIME_KEYS}
    what = {"config": result_cfg, "inputs": {k: input_identity(v) for k, v in inputs.items()},
            "code": [ssrl.__version__, TRAINING_CODE_VERSION, code_version()]}
    text = json.dumps(what, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Checkpoints:
    """`<dir>/last.pt`, replaced atomically, loaded with `weights_only=True` (no code runs).

    A checkpoint holds tensors, numpy arrays (as tensors), numbers, strings, the position
    `(epoch, step)` of the NEXT step to run, every per-utterance state, and the fingerprint.
    """

    def __init__(self, directory: str | os.PathLike, fingerprint: str, d: Dist = Dist()):
        self.dir = Path(directory)
        self.path = self.dir / "last.pt"
        self.fingerprint = fingerprint
        self.d = d

    def save(self, state: dict[str, Any]) -> None:
        if not self.d.main:
            return
        save_torch(self.path, {**state, "fingerprint": self.fingerprint})

    def load(self) -> dict[str, Any] | None:
        """The checkpoint to resume from, or None (none, or one written for another job)."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
            raise InputError(f"{self.path}: cannot load checkpoint ({err}); "
                             "delete it to start this stage over") from None
        theirs = state.get("fingerprint")
        if theirs != self.fingerprint:
            log.warning("%s was written for another config or other inputs (fingerprint %s, "
                        "this job %s): starting over", self.path, theirs, self.fingerprint)
            return None
        return state

    def finish(self, state: dict[str, Any]) -> None:
        """Training is over: keep `state` (the final one, less its optimiser) marked finished,
        so that a rerun of this job before its outputs were accepted writes them again without
        training. Called before the outputs are written."""
        if not self.d.main:
            return
        for stale in self.dir.glob("*"):  # a killed write's leftovers
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            elif stale != self.path:
                stale.unlink(missing_ok=True)
        self.save({k: v for k, v in state.items() if k != "optimizer"} | {"finished": True})
