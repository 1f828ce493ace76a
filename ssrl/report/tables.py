"""The paper's tables and figures, read from the result files of one experiment folder.

`root` is `results/<experiment>`. Everything here only reads JSON / score files that other steps
wrote (layout in docs/architecture.md and the `tables` / `plots` rules):

    eval/<system>/metrics.json, eval/<system>/scores_<list>.txt   per system and trial list
    <system>/history.json, <system>/compute.json                  per trained model
    cluster/<source>_k<K>/quality.json                            k-means pseudo-label quality
    baseline.json                                                 the crude MFCC baseline

A system is `dino`, `iterative/round<r>` or `ssrl/<grid point dir>`. A file that is missing (a
job that crashed under `--keep-going`) turns its row into a `failed` row instead of stopping
the report, so one broken ablation run never hides the others.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ssrl.files import atomic_path, write_text

# EER (%) on VoxCeleb1-O / E / H cleaned of systems trained on VoxCeleb2-dev without labels,
# quoted from /work/shared/SSRL-NOTES.md, "Numbers from other systems". Not measured here;
# None where the source gives no number.
PUBLISHED_EER: dict[str, tuple[float | None, float | None, float | None]] = {
    "WeSpeaker DINO ECAPA c1024, 150 epochs": (2.627, 2.665, 4.644),
    "WeSpeaker DINO ECAPA c512": (3.016, 3.093, 5.538),
    "sslsv DINO ECAPA-1024": (2.82, None, None),
    "3D-Speaker SDPN (57 M)": (1.80, 1.99, 3.62),
    "hyperion DINO -> 2 clustering rounds (ResNet34)": (1.49, 1.83, 3.11),
    "Loss-gated learning (contrastive -> 5 iterations)": (1.66, None, None),
    "Supervised ECAPA c512 reference (WeSpeaker)": (1.069, 1.209, 2.310),
}
PUBLISHED_LISTS = ("O", "E", "H")

METRICS = (("eer", "EER %"), ("mindcf_0.01", "minDCF 0.01"), ("mindcf_0.05", "minDCF 0.05"))
HISTORY_PANELS = (("n_clusters", "clusters"), ("nmi", "pseudo-label NMI"),
                  ("eer", "test EER %"), ("p_clean_mean", "mean p_clean"))


# --- reading ---------------------------------------------------------------------------------

def _read(path: Path) -> Any | None:
    """A JSON file's content, or None when it is missing or unreadable (a failed job)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _convert(text: str) -> Any:
    """A grid value as written in a directory name -> bool / int / float / str."""
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_grid_dir(name: str, keys: Iterable[str] = ()) -> dict[str, Any]:
    """Switch values of a Paramspace directory name `key~value_key~value`.

    Keys may hold underscores (`queue_len`), so between two `~` the split into "value_nextkey"
    is made where the rest is a known key; failing that, at the first underscore.
    """
    known = set(keys)
    parts = name.split("~")
    if len(parts) < 2:
        return {}
    names, values = [parts[0]], []
    for middle in parts[1:-1]:
        cut = next((i for i, ch in enumerate(middle) if ch == "_" and middle[i + 1:] in known),
                   middle.find("_"))
        values.append(middle[:cut])
        names.append(middle[cut + 1:])
    values.append(parts[-1])
    return {k: _convert(v) for k, v in zip(names, values)}


def _config(cfg: dict, *keys: str) -> Any:
    """`cfg["config"][k1][k2]...`, or None where a level is missing."""
    node: Any = cfg.get("config")
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _switch_keys(cfg: dict) -> list[str]:
    variants = _config(cfg, "ablation", "variants") or []
    return sorted({k for v in variants for k in v if k != "name"})


def _rounds(cfg: dict) -> list[int]:
    systems = cfg.get("systems")
    if systems is not None:
        return [int(s.removeprefix("iterative/round")) for s in systems
                if s.startswith("iterative/round")]
    return list(range(1, (_config(cfg, "iterative", "rounds") or 0) + 1))


def _k(cfg: dict) -> int | None:
    return _config(cfg, "cluster", "k")


def _cluster_source(system: str) -> str | None:
    """The clustering a system's labels came from: DINO's own, or the previous round's."""
    if system == "dino":
        return "dino"
    if system.startswith("iterative/round"):
        r = int(system.removeprefix("iterative/round"))
        return "dino" if r == 1 else f"round{r - 1}"
    return None


def trial_lists(cfg: dict, root: Path, systems: Iterable[str]) -> list[str]:
    """Trial list names found in the systems' metrics, in the configured (VoxCeleb) order."""
    names: list[str] = []
    for system in systems:
        metrics = _read(root / "eval" / system / "metrics.json") or {}
        names += [n for n in metrics.get("trials", {}) if n not in names]
    order = ["trials", *(_config(cfg, "data", "voxceleb", "trials") or {})]
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


def _eer_key(row: dict, list_name: str | None) -> str | None:
    """History key of the test EER: plain `eer` for one list, else `eer_<list>`."""
    if "eer" in row:
        return "eer"
    if list_name is not None and f"eer_{list_name}" in row:
        return f"eer_{list_name}"
    return next((k for k in row if k.startswith("eer_")), None)


# --- one system's numbers --------------------------------------------------------------------

def system_summary(cfg: dict, root: Path, system: str, lists: list[str]) -> dict[str, Any]:
    """Metrics, final pseudo-label quality and compute of one system; `status` says if complete.

    NMI / cluster count: DINO -> its own k-means; round r -> the clustering it was trained on;
    SSRL -> the last epoch of its history (its labels at the end of training).
    """
    out: dict[str, Any] = {"status": "ok"}
    metrics = _read(root / "eval" / system / "metrics.json")
    trials = (metrics or {}).get("trials", {})
    for name in lists:
        for key, _ in METRICS:
            out[f"{key}:{name}"] = (trials.get(name) or {}).get(key)
    history = _read(root / system / "history.json")
    source = _cluster_source(system)
    quality = None
    if source is not None and _k(cfg) is not None:
        quality = _read(root / "cluster" / f"{source}_k{_k(cfg)}" / "quality.json")
    if system.startswith("ssrl/") and history:
        quality = history[-1]
    out["nmi"] = (quality or {}).get("nmi")
    clusters = (quality or {}).get("n_clusters")
    out["clusters"] = None if clusters is None else int(clusters)
    compute = _read(root / system / "compute.json") or {}
    seconds = compute.get("wall_seconds")
    out["stage_min"] = None if seconds is None else seconds / 60.0
    out["stage_passes"] = compute.get("utterance_passes")
    out["epochs"] = len(history) if history else compute.get("epochs")
    if metrics is None or history is None:
        out["status"] = "failed"
    return out


def _add(values: list[Any]) -> Any:
    """Sum, or None when any part is unknown (never a silently partial total)."""
    return None if any(v is None for v in values) else float(sum(values))


# --- tables ----------------------------------------------------------------------------------

def _fmt(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool | str):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _digits(column: str) -> int:
    if column.startswith("EER"):
        return 3
    if column.startswith("minDCF") or column == "NMI":
        return 4
    return 1


def markdown_table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """A GitHub markdown table (numbers right-aligned, rounded for reading)."""
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c), _digits(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _csv(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else row[c] for c in columns})
    return buf.getvalue()


def _metric_columns(lists: list[str]) -> list[tuple[str, str]]:
    """(summary key, column header) of each metric of each trial list."""
    return [(f"{key}:{name}", f"{label} ({name})") for name in lists for key, label in METRICS]


def main_rows(cfg: dict, root: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows of the main table: baseline, DINO, each iterative round, SSRL."""
    variants = cfg.get("variants") or {}
    rounds = _rounds(cfg)
    systems = ["dino", *(f"iterative/round{r}" for r in rounds)]
    if "full" in variants:
        systems.append(f"ssrl/{variants['full']}")
    lists = trial_lists(cfg, root, systems)
    metric_cols = _metric_columns(lists)
    columns = ["system", *(h for _, h in metric_cols), "NMI", "clusters", "stage min",
               "stage passes", "cumulative min", "cumulative passes", "status"]

    def row(name: str, s: dict[str, Any], cumulative: list[dict[str, Any]]) -> dict[str, Any]:
        r = {"system": name, "NMI": s["nmi"], "clusters": s["clusters"],
             "stage min": s["stage_min"], "stage passes": s["stage_passes"],
             "cumulative min": _add([c["stage_min"] for c in cumulative]),
             "cumulative passes": _add([c["stage_passes"] for c in cumulative]),
             "status": s["status"]}
        r.update({header: s[key] for key, header in metric_cols})
        return r

    rows = [_baseline_row(root, lists, metric_cols)]
    dino = system_summary(cfg, root, "dino", lists)
    rows.append(row("DINO", dino, [dino]))
    chain = [dino]
    for r in rounds:
        s = system_summary(cfg, root, f"iterative/round{r}", lists)
        chain.append(s)
        rows.append(row(f"Iterative round {r}", s, list(chain)))
    if "full" in variants:
        s = system_summary(cfg, root, f"ssrl/{variants['full']}", lists)
        rows.append(row("SSRL", s, [dino, s]))
    return columns, rows


def _baseline_row(root: Path, lists: list[str],
                  metric_cols: list[tuple[str, str]]) -> dict[str, Any]:
    """The MFCC baseline scores only the default list (`trials`, else the first one)."""
    base = _read(root / "baseline.json")
    row: dict[str, Any] = {"system": "MFCC mean (crude baseline)",
                           "status": "ok" if base is not None else "failed"}
    target = base.get("trial_list") if base else None
    target = target or ("trials" if "trials" in lists else (lists[0] if lists else None))
    for key, header in metric_cols:
        metric, name = key.split(":", 1)
        if base is not None and name == target:
            row[header] = base.get(metric)
    return row


def ablation_rows(cfg: dict, root: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per SSRL grid variant: its switches, metrics, final labels, wall time."""
    variants = cfg.get("variants") or {}
    systems = [f"ssrl/{d}" for d in variants.values()]
    lists = trial_lists(cfg, root, systems)
    known = _switch_keys(cfg)
    switches = {name: {k: v for k, v in parse_grid_dir(d, known).items() if k != "full"}
                for name, d in variants.items()}
    keys = sorted({k for s in switches.values() for k in s})
    metric_cols = _metric_columns(lists)
    columns = ["variant", *keys, *(h for _, h in metric_cols), "NMI", "clusters", "epochs",
               "stage min", "status"]
    rows = []
    for name, d in variants.items():
        s = system_summary(cfg, root, f"ssrl/{d}", lists)
        r = {"variant": name, **switches[name], "NMI": s["nmi"], "clusters": s["clusters"],
             "epochs": s["epochs"], "stage min": s["stage_min"], "status": s["status"]}
        r.update({header: s[key] for key, header in metric_cols})
        rows.append(r)
    return columns, rows


def _published_md() -> str:
    rows = [{"system": name, **{f"EER % ({n})": None if v is None else str(v)  # as quoted
                                for n, v in zip(PUBLISHED_LISTS, eers)}}
            for name, eers in PUBLISHED_EER.items()]
    return ("\n## Published (quoted, not measured here)\n\n"
            "EER % on VoxCeleb1-O / E / H cleaned, trained on VoxCeleb2-dev without labels, as "
            "quoted in SSRL-NOTES (\"Numbers from other systems\"). Other front ends, "
            "recipes and compute: for orientation only.\n\n"
            + markdown_table(["system", *(f"EER % ({n})" for n in PUBLISHED_LISTS)], rows))


def write_tables(cfg: dict, root: Path, out_dir: Path) -> None:
    """`main.csv|md` and `ablation.csv|md` in `out_dir` (see the module docstring)."""
    root, out_dir = Path(root), Path(out_dir)
    experiment = _config(cfg, "experiment") or root.name
    columns, rows = main_rows(cfg, root)
    write_text(out_dir / "main.csv", _csv(columns, rows))
    md = (f"# {experiment}: main results\n\n"
          "Minutes are wall time of training; cumulative = everything from scratch (SSRL = "
          "DINO + SSRL, round r = DINO + rounds 1..r), also as utterance passes. NMI / clusters:"
          " pseudo labels at the end of training (DINO: its k-means; round r: the clustering it "
          "was trained on).\n\n" + markdown_table(columns, rows))
    if _config(cfg, "data", "source") == "voxceleb":
        md += _published_md()
    write_text(out_dir / "main.md", md)
    columns, rows = ablation_rows(cfg, root)
    write_text(out_dir / "ablation.csv", _csv(columns, rows))
    write_text(out_dir / "ablation.md",
               f"# {experiment}: SSRL ablation grid\n\n" + markdown_table(columns, rows))


# --- plots -----------------------------------------------------------------------------------

def _figure(rows: int, cols: int, size: tuple[float, float]):
    from matplotlib.figure import Figure  # no pyplot: no global backend state (Agg canvas)

    fig = Figure(figsize=size)
    return fig, fig.subplots(rows, cols, squeeze=False).ravel()


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def _series(history: list[dict], key: str, list_name: str | None = None
            ) -> tuple[list[int], list[float]]:
    """(epochs, values) of one history key; rows without it (e.g. no eval that epoch) skipped."""
    xs, ys = [], []
    for i, row in enumerate(history):
        k = _eer_key(row, list_name) if key == "eer" else key
        if k is not None and row.get(k) is not None:
            xs.append(int(row.get("epoch", i)) + 1)
            ys.append(float(row[k]))
    return xs, ys


def plot_history(history: list[dict], path: Path, title: str) -> None:
    """One run's trajectory (cluster count, NMI, EER, mean p_clean per epoch) as a PNG."""
    fig, axes = _figure(2, 2, (8, 6))
    for ax, (key, label) in zip(axes, HISTORY_PANELS):
        xs, ys = _series(history, key)
        if xs:
            ax.plot(xs, ys, marker=".")
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, lw=0.3)
    fig.suptitle(title)
    _save(fig, Path(path))


def write_plots(cfg: dict, root: Path, out_dir: Path) -> None:
    """`trajectories.png` (SSRL variants per epoch, rounds as markers) and `det.png`."""
    root, out_dir = Path(root), Path(out_dir)
    variants = cfg.get("variants") or {}
    rounds = _rounds(cfg)
    lists = trial_lists(cfg, root, ["dino", *(f"iterative/round{r}" for r in rounds),
                                    *(f"ssrl/{d}" for d in variants.values())])
    first = lists[0] if lists else None

    fig, axes = _figure(2, 2, (10, 7))
    for name, d in variants.items():
        history = _read(root / "ssrl" / d / "history.json")
        if not history:
            continue
        for ax, (key, _) in zip(axes, HISTORY_PANELS):
            xs, ys = _series(history, key, first)
            if xs:
                ax.plot(xs, ys, label=name, lw=2.0 if name == "full" else 1.0)
    # The iterative baseline: one marker per round at the epochs it has spent so far.
    epochs_so_far, marks = 0, {"nmi": ([], []), "eer": ([], [])}
    for r in rounds:
        system = f"iterative/round{r}"
        history = _read(root / system / "history.json") or []
        epochs_so_far += len(history)
        s = system_summary(cfg, root, system, lists)
        eer = s.get(f"eer:{first}")
        if eer is None and history:
            key = _eer_key(history[-1], first)
            eer = history[-1].get(key) if key else None
        for key, value in (("nmi", s["nmi"]), ("eer", eer)):
            if value is not None:
                marks[key][0].append(epochs_so_far)
                marks[key][1].append(value)
    for ax, (key, label) in zip(axes, HISTORY_PANELS):
        if key in marks and marks[key][0]:
            ax.plot(*marks[key], "ks", ms=5, ls=":", label="iterative rounds (cumulative epochs)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label + (f" ({first})" if key == "eer" and first else ""))
        ax.grid(True, lw=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle("SSRL trajectories")
    _save(fig, out_dir / "trajectories.png")

    from ssrl.evaluation.metrics import plot_det

    curves = {}
    candidates = [("DINO", "dino")]
    if rounds:
        candidates.append((f"Iterative round {rounds[-1]}", f"iterative/round{rounds[-1]}"))
    if "full" in variants:
        candidates.append(("SSRL", f"ssrl/{variants['full']}"))
    for label, system in candidates:
        scores = read_scores(root / "eval" / system / f"scores_{first}.txt")
        if scores is not None:
            curves[label] = scores
    plot_det(curves, out_dir / "det.png")


def read_scores(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(scores, labels) of a `enroll test target|nontarget score` file, None if missing."""
    if not path.is_file():
        return None
    scores, labels = [], []
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) == 4:
            labels.append(fields[2] == "target")
            scores.append(float(fields[3]))
    return np.array(scores, dtype=np.float64), np.array(labels, dtype=bool)
