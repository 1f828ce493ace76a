"""The experiment's figures, from the systems table: SSRL's dynamics (the paper's figure:
cluster count and pseudo-label NMI against epoch), the ablation trajectories, and DET curves.

Epochs are 1-based everywhere (epoch 0 is the k-means start: K clusters and DINO's NMI).
Legends sit below the axes so they never hide a curve or a marker.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.stats import norm

from ssrl.evaluation.metrics import _eer_from_points, det_curve
from ssrl.evaluation.scoring import read_scores
from ssrl.files import atomic_path
from ssrl.report.results import Group, iterative_chains, load_groups, trial_lists

PANELS = (("n_clusters", "clusters"), ("nmi", "pseudo-label NMI"),
          ("dev/eer", "dev EER % (teacher)"), ("p_clean_mean", "mean p_clean"))
ROUND_MARKERS = "so^v"  # the iterative chains' markers in the trajectories (captions say so)
DET_TICKS = np.array([0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95,
                      0.98, 0.995])  # to 99.5 %: weak systems' minDCF points sit near 100 % miss


def _figure(rows: int, cols: int, size: tuple[float, float]):
    from matplotlib.figure import Figure  # no pyplot: no global backend state (Agg canvas)

    fig = Figure(figsize=size)
    return fig, fig.subplots(rows, cols, squeeze=False).ravel()


def _save(fig, path: Path, legend_rows: int = 0, ncol: int = 4) -> None:
    from matplotlib.ticker import MaxNLocator

    handles, labels = {}, []
    for ax in fig.axes:
        if ax.get_xlabel().startswith("epoch"):  # epochs and cluster counts are whole numbers
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_ylabel() == "clusters":
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if labels:
        fig.legend([handles[lab] for lab in labels], labels, loc="lower center",
                   ncol=min(len(labels), ncol), fontsize="small", frameon=False)
    rows = max(legend_rows, -(-len(labels) // ncol))
    fig.tight_layout(rect=(0, 0.035 * rows, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(1-based epochs, values) of one history key; rows without it are skipped."""
    xs, ys = [], []
    for i, row in enumerate(history):
        if row.get(key) is not None:
            xs.append(int(row.get("epoch", i + 1)))
            ys.append(float(row[key]))
    return xs, ys


def _start(group: Group, key: str) -> float | None:
    """The epoch-0 value of an SSRL run: its k-means clustering (K clusters, DINO's NMI)."""
    quality = group.members[0].quality or {}
    return {"n_clusters": quality.get("n_clusters", group.row.get("k")),
            "nmi": quality.get("nmi")}.get(key)


def plot_history(history: list[dict], path: Path, title: str) -> None:
    """One run's trajectory (cluster count, NMI, dev EER, mean p_clean per epoch) as a PNG."""
    fig, axes = _figure(2, 2, (8, 6))
    for ax, (key, label) in zip(axes, PANELS):
        xs, ys = series(history, key)
        if xs:
            ax.plot(xs, ys, marker=".")
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, lw=0.3)
    fig.suptitle(title)
    _save(fig, Path(path))


def plot_dynamics(groups: dict[str, Group], path: Path):
    """The paper's figure: cluster count and pseudo-label NMI of full SSRL against epoch, one
    line per seed, from the k-means start (epoch 0); DINO's k-means NMI as a reference."""
    fig, axes = _figure(1, 2, (10, 4))
    full = next((g for g in groups.values() if g.kind == "ssrl" and g.row["variant"] == "full"),
                None)
    true_speakers = None
    for m in (full.members if full else []):
        if not m.history:
            continue
        for ax, key in zip(axes, ("n_clusters", "nmi")):
            xs, ys = series(m.history, key)
            start = _start(Group(full.key, full.label, "ssrl", [m]), key)
            if start is not None:
                xs, ys = [0, *xs], [float(start), *ys]
            ax.plot(xs, ys, marker=".", lw=1.2, label=f"SSRL seed {m.row['seed']}")
        true_speakers = true_speakers or (m.quality or {}).get("n_classes")
    axes[0].set_ylabel("clusters")
    axes[1].set_ylabel("pseudo-label NMI\n(true speakers; reporting only)")
    for ax in axes:
        ax.set_xlabel("epoch (0 = k-means start)")
        ax.grid(True, lw=0.3)
    fig.suptitle("SSRL dynamics: cluster count and pseudo-label quality")
    _save(fig, path)
    return fig


def plot_trajectories(groups: dict[str, Group], path: Path):
    """Every SSRL variant per epoch (seed mean), the iterative rounds as markers at the epochs
    they have spent, and DINO's k-means as a dashed reference."""
    fig, axes = _figure(2, 2, (10, 7))
    variants = [g for g in groups.values() if g.kind == "ssrl"]
    for g in variants:
        for ax, (key, _) in zip(axes, PANELS):
            runs = [series(m.history, key) for m in g.members if m.history]
            runs = [r for r in runs if r[0]]
            if not runs:
                continue
            n = min(len(r[0]) for r in runs)
            xs = runs[0][0][:n]
            ys = np.mean([r[1][:n] for r in runs], axis=0)
            ax.plot(xs, ys, lw=2.0 if g.row["variant"] == "full" else 1.0, marker=".",
                    zorder=3, label=f"SSRL {g.row['variant']}")
    for i, (epochs, rounds) in enumerate(sorted(iterative_chains(groups.values()).items())):
        spent, xs, ys = 0, [], []
        for g in rounds:
            m = g.members[0]
            spent += len(m.history or [])
            nmi = m.final_labels()["nmi"]
            if nmi is not None:
                xs.append(spent)
                ys.append(nmi)
        if xs:
            axes[1].plot(xs, ys, marker=ROUND_MARKERS[i % 4], ms=5, ls=":", color="0.2", zorder=4,
                         label=f"iterative rounds, {epochs} epochs each (NMI of the "
                               "clustering each trained on)")
    dino = next((g for g in groups.values() if g.kind == "dino"), None)
    for ax, (key, label) in zip(axes, PANELS):
        start = _start(dino, key) if dino else None
        if start is not None:
            # under the variants' lines (zorder): a variant that keeps K clusters stays visible
            ax.axhline(start, color="0.6", ls="--", lw=0.8, zorder=1,
                       label="DINO k-means (epoch 0)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, lw=0.3)
    fig.suptitle(f"SSRL ablation trajectories ({seeds_phrase(variants)})")
    _save(fig, path, legend_rows=2)
    return fig


def seeds_phrase(groups: list[Group]) -> str:
    """"one seed", or "mean over 3 seeds" (the largest count of any group)."""
    n = max((len(g.members) for g in groups), default=1)
    return "one seed" if n <= 1 else f"mean over {n} seeds"


def plot_det(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path,
             title: str = "DET curves on the test trials"):
    """DET curves (normal-deviate axes) with each system's minDCF operating points marked.
    The axes reach the most extreme point drawn: weak systems' minDCF points sit at tiny
    false-alarm and near-total miss rates (rates of 0 and 1 are drawn at the edges, ticked 0
    and 100)."""
    fig, (ax,) = _figure(1, 1, (7, 8))
    clip = 1e-5  # keep probits finite at rates of 0 and 1
    lowest, highest = norm.ppf(DET_TICKS[0]), norm.ppf(DET_TICKS[-1])
    for name, (scores, labels) in curves.items():
        fpr, fnr = det_curve(scores, labels)
        (line,) = ax.plot(norm.ppf(np.clip(fpr, clip, 1 - clip)),
                          norm.ppf(np.clip(fnr, clip, 1 - clip)),
                          label=f"{name} (EER {100 * _eer_from_points(fpr, fnr):.1f} %)")
        for p, marker in ((0.01, "o"), (0.05, "s")):
            i = int(np.argmin(p * fnr + (1 - p) * fpr))
            x, y = (norm.ppf(np.clip(v, clip, 1 - clip)) for v in (fpr[i], fnr[i]))
            lowest, highest = min(lowest, x, y), max(highest, x, y)
            ax.plot(x, y, marker, color=line.get_color(), ms=7, mfc="none", mew=1.5, zorder=5)
    ax.plot([], [], "ko", mfc="none", label="minDCF point, p_target 0.01")
    ax.plot([], [], "ks", mfc="none", label="minDCF point, p_target 0.05")
    # rates of 0 and 1 sit at the clip: ticked "0" and "100"
    tick_at = np.concatenate([[clip, 1e-4], DET_TICKS, [0.9999, 1 - clip]])
    probits = norm.ppf(tick_at)
    keep = (probits >= lowest - 1e-9) & (probits <= highest + 1e-9)
    ticks = probits[keep]
    labels = ["0" if t == clip else "100" if t == 1 - clip else f"{100 * t:g}"
              for t in tick_at[keep]]
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_ticks(ticks, labels=labels)
    lo, hi = ticks[0] - 0.15, ticks[-1] + 0.15
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.plot([lo, hi], [lo, hi], color="0.7", lw=0.8, ls=":")
    ax.set_xlabel("false alarm rate (%)")
    ax.set_ylabel("miss rate (%)")
    ax.set_title(title)
    ax.grid(True, lw=0.3)
    _save(fig, Path(path), ncol=2)
    return fig


def write_plots(cfg: dict, root: Path, out_dir: Path) -> None:
    """`dynamics.png`, `trajectories.png` and `det.png` (first test list) in `out_dir`."""
    root, out_dir = Path(root), Path(out_dir)
    groups = load_groups(cfg, root)
    lists = trial_lists(cfg, groups)
    plot_dynamics(groups, out_dir / "dynamics.png")
    plot_trajectories(groups, out_dir / "trajectories.png")
    first = lists[0] if lists else None
    curves = {}
    wanted = ["baseline", "dino", "iterative", "ssrl", "supervised"]
    picked: dict[str, Group] = {g.kind: g for g in groups.values()
                                if g.kind not in ("ssrl", "iterative")}
    picked.update({g.kind: g for g in groups.values()
                   if g.kind == "ssrl" and g.row["variant"] == "full"})
    chains = list(iterative_chains(groups.values()).values())
    if chains:
        picked["iterative"] = chains[0][-1]  # the first chain's last round
    for kind in wanted:
        g = picked.get(kind)
        m = g.members[0] if g else None
        entry = m.list_metrics(first) if m and first else None
        if entry is None:
            continue
        scores, labels = read_scores(root / m.row["eval"] / entry["scores"])
        if labels is not None:
            curves[g.label] = (scores, labels)
    seed = next((g.members[0].row["seed"] for g in picked.values()
                 if g.members[0].row["seed"] is not None), None)
    plot_det(curves, out_dir / "det.png", "DET curves on the test trials"
             + (f" ({first})" if first and first != "trials" else "")
             + (f", seed {seed}" if seed is not None else ""))


#: The scaling figure's panels: (column of scaling.csv, y label, factor, kind of bar).
SCALING_PANELS = (
    ("eer", "SSRL test EER %", 1.0, "ci"),
    ("ssrl_minus_round", "claim 1: SSRL − iterative {last}\n(ΔEER points)", 1.0, "ci"),
    ("no_nlm_minus_full", "claim 2: no noisy-label modelling − SSRL\n(ΔEER points)", 1.0, "ci"),
    ("nmi_gain", "claim 3: pseudo-label NMI gain\nover the k-means start", 1.0, "range"),
    ("clusters_removed", "claim 3: clusters removed\n(k-means K − last epoch)", 1.0, "range"),
    ("changed", "labels changed per relabelling %", 100.0, "range"),
)
RULE_COLOURS = {"cosine": "tab:blue", "margin": "tab:red", "sticky": "tab:green"}
CORPUS_MARKERS = "os^Dv"


def _bar(row: dict, y: float, lo_key: str, hi_key: str, factor: float) -> tuple[float, float]:
    """(down, up) lengths of an error bar; none where the row has no interval."""
    lo, hi = row.get(lo_key), row.get(hi_key)
    if lo is None or hi is None:
        return 0.0, 0.0
    return max(y - lo * factor, 0.0), max(hi * factor - y, 0.0)


def plot_scaling(rows: list[dict], path: Path, reference_steps: float | None = None,
                 last: str = "round 5"):
    """Each claim's effect size against the steps between two relabellings (log axis): one
    line per relabelling rule and corpus (utterances per cluster: marker), bars the 95 %
    bootstrap interval (EER and paired differences) or the range over seeds (label numbers;
    none with one seed). A dotted line marks VoxCeleb2's steps between relabellings."""
    fig, axes = _figure(2, 3, (14, 8))
    corpora = sorted({round(r["utterances_per_cluster"]) for r in rows
                      if r.get("utterances_per_cluster")})
    rules = list(dict.fromkeys(r["rule"] for r in rows))
    shift = {rule: 1.0 + 0.06 * (i - (len(rules) - 1) / 2) for i, rule in enumerate(rules)}
    ticks = sorted({float(r["steps_between_relabellings"]) for r in rows}
                   | ({float(reference_steps)} if reference_steps else set()))
    for ax, (key, label, factor, bar) in zip(axes, SCALING_PANELS):
        for rule in rules:
            for j, upc in enumerate(corpora):
                pts = sorted((r for r in rows if r["rule"] == rule and r.get(key) is not None
                              and r.get("utterances_per_cluster")
                              and round(r["utterances_per_cluster"]) == upc),
                             key=lambda r: r["steps_between_relabellings"])
                if not pts:
                    continue
                xs = [r["steps_between_relabellings"] * shift[rule] for r in pts]
                ys = [r[key] * factor for r in pts]
                lo_key, hi_key = ((f"{key}_ci_low", f"{key}_ci_high") if bar == "ci"
                                  else (f"{key}_min", f"{key}_max"))
                bars = [_bar(r, y, lo_key, hi_key, factor) for r, y in zip(pts, ys)]
                ax.errorbar(xs, ys, yerr=list(zip(*bars)), color=RULE_COLOURS.get(rule, "0.3"),
                            marker=CORPUS_MARKERS[j % len(CORPUS_MARKERS)], ms=6, capsize=3,
                            lw=1.2, label=f"{rule} relabelling, {upc} utterances per cluster")
        if key != "eer":
            ax.axhline(0.0, color="0.5", lw=0.8)
        if reference_steps:
            ax.axvline(reference_steps, color="0.5", ls=":", lw=1.0)
            ax.text(reference_steps, 1.0, " VoxCeleb2", transform=ax.get_xaxis_transform(),
                    ha="right", va="top", rotation=90, fontsize="small", color="0.4")
        ax.set_xscale("log")
        ax.set_xticks(ticks, labels=[f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("optimiser steps between two relabellings")
        ax.set_ylabel(label.format(last=last))
        ax.grid(True, lw=0.3)
    fig.suptitle("SSRL's claims against scale (bars: 95 % bootstrap interval for EER and ΔEER; "
                 "range over seeds for the label numbers)", fontsize="medium")
    _save(fig, Path(path), ncol=2)
    return fig
