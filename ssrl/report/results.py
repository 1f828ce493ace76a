"""An experiment's results, read through the systems table the workflow wrote.

The table (the `systems` list of the report job's config, built by workflow/rules/common.smk)
names every system -- its kind, seed, switches, effective k and epochs, and every file it has,
relative to the experiment folder. Nothing here re-derives a path or a grid point: a system
whose files are missing (a job that crashed under `--keep-going`) becomes `failed`.

Systems that differ only by seed form a *group*: one row of a table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssrl.evaluation.scoring import read_scores
from ssrl.files import InputError


def _read(path: Path | None) -> Any | None:
    """A JSON file's content, or None when it is missing or unreadable (a failed job)."""
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


@dataclass
class SystemResult:
    """One system (one seed) and what its jobs left."""

    row: dict[str, Any]
    root: Path
    metrics: dict | None = None
    history: list[dict] | None = None
    compute: dict | None = None
    quality: dict | None = None

    @classmethod
    def load(cls, row: dict[str, Any], root: Path) -> SystemResult:
        def path(key: str) -> Path | None:
            return root / row[key] if row.get(key) else None

        return cls(row, root, _read(path("metrics")), _read(path("history")),
                   _read(path("compute")), _read(path("quality")))

    @property
    def name(self) -> str:
        return self.row["name"]

    @property
    def ok(self) -> bool:
        trained = self.row["kind"] != "baseline"
        return self.metrics is not None and (not trained or self.history is not None)

    def list_metrics(self, list_name: str) -> dict | None:
        return (self.metrics or {}).get("trials", {}).get(list_name)

    def scores(self, list_name: str) -> np.ndarray | None:
        m = self.list_metrics(list_name)
        if m is None:
            return None
        try:
            return read_scores(self.root / self.row["eval"] / m["scores"])[0]
        except InputError:
            return None

    def final_labels(self) -> dict[str, Any]:
        """Pseudo-label quality where the system ends: DINO -> its k-means; a round -> the
        clustering it trained on; SSRL -> its labels after the last epoch."""
        if self.row["kind"] == "ssrl":
            source = self.history[-1] if self.history else {}
        else:
            source = self.quality or {}
        return {"nmi": source.get("nmi"), "clusters": source.get("n_clusters")}


@dataclass
class Group:
    """The systems of one table row: the same system trained with each seed."""

    key: str
    label: str
    kind: str
    members: list[SystemResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.members) and all(m.ok for m in self.members)

    @property
    def row(self) -> dict[str, Any]:
        return self.members[0].row

    def by_seed(self) -> dict[int | None, SystemResult]:
        return {m.row["seed"]: m for m in self.members}


def group_key(row: dict[str, Any]) -> str:
    """Systems equal but for the seed share a key: `ssrl-full-seed3` -> `ssrl-full`."""
    seed = row.get("seed")
    return row["name"].removesuffix(f"-seed{seed}") if seed is not None else row["name"]


def load_groups(cfg: dict, root: Path) -> dict[str, Group]:
    """Every system of the table, loaded and grouped over seeds, in table order."""
    groups: dict[str, Group] = {}
    for row in cfg["systems"]:
        key = group_key(row)
        group = groups.setdefault(key, Group(key, row["label"], row["kind"]))
        group.members.append(SystemResult.load(row, Path(root)))
    return groups


def iterative_chains(groups: Iterable[Group]) -> dict[int, list[Group]]:
    """The iterative rounds grouped by chain (its epochs per round), each chain's rounds in
    order (the systems table lists them so), chains in the order they first appear."""
    chains: dict[int, list[Group]] = {}
    for g in groups:
        if g.kind == "iterative":
            chains.setdefault(g.row.get("chain_epochs") or 0, []).append(g)
    return chains


def trial_lists(cfg: dict, groups: dict[str, Group]) -> list[str]:
    """Labelled trial list names found in the systems' metrics, in the configured order."""
    names: list[str] = []
    for group in groups.values():
        for m in group.members:
            for name, entry in (m.metrics or {}).get("trials", {}).items():
                if entry.get("labelled", True) and name not in names:
                    names.append(name)
    order = list(cfg.get("trial_order", ["trials"]))
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))
