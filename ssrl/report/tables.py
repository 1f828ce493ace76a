"""The paper's tables, with intervals: `main` (floor, DINO, iterative rounds, SSRL, topline)
and `ablation` (every SSRL grid variant), each with its paired comparisons.

Every EER and minDCF carries its 95 % speaker-bootstrap interval (`comparisons`); a row
trained with several seeds shows the seed mean +- sd and the interval of the mean, and the CSV
files add one row per seed. Paired rows give A - B on the same resamples and say whether the
interval excludes zero -- the only differences the README calls findings.
"""

from __future__ import annotations

import csv
import html
import io
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ssrl.data.stores import open_store
from ssrl.evaluation.metrics import METRICS, metric_keys
from ssrl.files import write_text
from ssrl.report.comparisons import Comparisons, Estimate
from ssrl.report.results import Group, SystemResult, iterative_chains, load_groups, trial_lists

# EER (%) on VoxCeleb1-O / E / H cleaned of systems trained on VoxCeleb2-dev without labels,
# quoted from SSRL-NOTES, "Numbers from other systems". Not measured here; None where the source
# gives no number.
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
LABELS = {"eer": "EER %", "mindcf_0.01": "minDCF 0.01", "mindcf_0.05": "minDCF 0.05"}
DIGITS = {"eer": 1, "mindcf_0.01": 3, "mindcf_0.05": 3}


# --- formatting ------------------------------------------------------------------------------

#: Digits of the plain numeric columns in markdown.
COLUMN_DIGITS = {"NMI": 3, "clusters": 0, "stage min": 1, "cumulative min": 1,
                 "stage passes": 1, "cumulative passes": 1}


def _num(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool | str | int):
        return str(value)
    return f"{value + 0.0:.{digits}f}".replace("-0.0", "0.0") if abs(value) < 10**-digits / 2 \
        else f"{value:.{digits}f}"


def cell(e: Estimate, digits: int) -> str:
    """`16.9 [15.1, 18.7]`, or `16.9 ± 0.4 [15.1, 18.7]` for a mean over seeds."""
    if e.value is None:
        return "–"
    text = _num(e.value, digits)
    if e.sd is not None:
        text += f" ± {_num(e.sd, digits)}"
    if e.lo is not None:
        text += f" [{_num(e.lo, digits)}, {_num(e.hi, digits)}]"
    return text


def _cells(columns: list[str], row: dict[str, Any]) -> list[str]:
    """A row's cells as text, numbers to each column's digits."""
    return [_num(row.get(c), COLUMN_DIGITS.get(c, 1)) for c in columns]


def markdown_table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """A GitHub markdown table (cells already formatted; numbers right-aligned)."""
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"]
    lines += ["| " + " | ".join(_cells(columns, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def html_table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """The same table as `markdown_table`, as HTML (for the Snakemake report)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>"
                                    for cell in _cells(columns, row)) + "</tr>\n"
                   for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n"


def html_page(title: str, sections: list[tuple[str, str, list[str], list[dict]]]) -> str:
    """A self-contained page: (heading, introduction, columns, rows) per table."""
    style = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;"
             "font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}"
             "p{max-width:60em}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{style}</style></head><body><h1>{html.escape(title)}</h1>"]
    for heading, intro, columns, rows in sections:
        intro_html = re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(intro))  # md code
        parts.append(f"<h2>{html.escape(heading)}</h2><p>{intro_html}</p>"
                     + html_table(columns, rows))
    return "".join(parts) + "</body></html>\n"


def _csv(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else row[c] for c in columns})
    return buf.getvalue()


def _header(metric: str, name: str, lists: list[str]) -> str:
    return LABELS[metric] + (f" ({name})" if len(lists) > 1 or name != "trials" else "")


# --- one row's numbers -----------------------------------------------------------------------

def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(sum(values) / len(values)) if values else None


def _cumulative(member: SystemResult, by_name: dict[str, SystemResult], key: str) -> float | None:
    """Sum of a compute figure over the chain of stages that led to this system (or None)."""
    parts = [(by_name[n].compute or {}).get(key) if n in by_name else None
             for n in member.row.get("chain", [])]
    return None if not parts or any(p is None for p in parts) else float(sum(parts))


def _compute(group: Group, by_name: dict[str, SystemResult]) -> dict[str, float | None]:
    ms = group.members
    return {"stage min": _mean([(m.compute or {}).get("wall_seconds", 0) / 60.0
                                if m.compute else None for m in ms]),
            "stage passes": _mean([(m.compute or {}).get("utterance_passes") for m in ms]),
            "cumulative min": _mean([None if (v := _cumulative(m, by_name, "wall_seconds")) is
                                     None else v / 60.0 for m in ms]),
            "cumulative passes": _mean([_cumulative(m, by_name, "utterance_passes")
                                        for m in ms])}


def _labels(group: Group) -> dict[str, float | None]:
    finals = [m.final_labels() for m in group.members]
    return {"NMI": _mean([f["nmi"] for f in finals]),
            "clusters": _mean([f["clusters"] for f in finals])}


def _metric_cells(comp: Comparisons, group: Group, lists: list[str],
                  skip: tuple[str, ...] = ()) -> dict[str, str]:
    out = {}
    for name in lists:
        summary = comp.summary(group, name)
        for metric in METRICS:
            if metric not in skip:
                out[_header(metric, name, lists)] = cell(summary[metric], DIGITS[metric])
    return out


def flat_mindcf(comp: Comparisons, groups: list[Group], lists: list[str],
                floor: float = 0.95) -> dict[str, tuple[float, float]]:
    """The minDCF metrics that separate nothing: every system at or above `floor` (≈ 1: no
    system works at that low false-alarm rate) with intervals that all overlap. {metric:
    (lowest, highest value)}; the tables then say so in one line instead of a column."""
    flat = {}
    for metric in (m for m in METRICS if m.startswith("mindcf")):
        estimates = [comp.summary(g, name)[metric] for g in groups for name in lists]
        estimates = [e for e in estimates if e.value is not None]
        if not estimates or min(e.value for e in estimates) < floor:
            continue
        bounds = [e for e in estimates if e.lo is not None]
        if bounds and max(e.lo for e in bounds) > min(e.hi for e in bounds):
            continue  # some intervals do not overlap: the column stays
        flat[metric] = (min(e.value for e in estimates), max(e.value for e in estimates))
    return flat


def flat_note(flat: dict[str, tuple[float, float]], csv_name: str) -> str:
    """The one line that replaces columns of ≈ 1.000 (empty when there are none)."""
    if not flat:
        return ""
    parts = [f"{LABELS[m]} between {_num(lo, 3)} and {_num(hi, 3)}" for m, (lo, hi) in
             flat.items()]
    return (" " + " and ".join(parts) + " for every system, with overlapping intervals: no "
            "system works at these low false-alarm rates, so these columns (and their paired "
            f"differences) are left out here; `{csv_name}` has them.")


def _csv_rows(comp: Comparisons, group: Group, lists: list[str],
              extra_of: Callable[[Group], dict[str, Any]]) -> list[dict]:
    """One CSV row per seed (and a `mean` row when there are several), intervals as columns;
    `extra_of` gives the other columns (labels, compute, ...) of one seed or of the group."""
    rows = []
    for m in group.members:
        one = Group(group.key, group.label, group.kind, [m])
        row = {"system": group.label, "key": group.key, "seed": m.row["seed"],
               "uses_labels": m.row["uses_labels"], "status": "ok" if m.ok else "failed",
               **extra_of(one)}
        _estimate_columns(row, comp, one, lists)
        rows.append(row)
    if len(group.members) > 1:
        row = {"system": group.label, "key": group.key, "seed": "mean",
               "uses_labels": group.row["uses_labels"],
               "status": "ok" if group.ok else "failed", **extra_of(group)}
        _estimate_columns(row, comp, group, lists)
        rows.append(row)
    return rows


def _estimate_columns(row: dict, comp: Comparisons, group: Group, lists: list[str]) -> None:
    for name in lists:
        summary = comp.summary(group, name)
        for metric in METRICS:
            h = _header(metric, name, lists)
            e = summary[metric]
            row.update({h: e.value, f"{h} CI low": e.lo, f"{h} CI high": e.hi,
                        f"{h} sd": e.sd})


def _estimate_csv_columns(lists: list[str]) -> list[str]:
    cols = []
    for name in lists:
        for metric in METRICS:
            h = _header(metric, name, lists)
            cols += [h, f"{h} CI low", f"{h} CI high", f"{h} sd"]
    return cols


# --- paired comparisons ------------------------------------------------------------------------

def _paired_rows(comp: Comparisons, pairs: list[tuple[str, Group, str, Group]],
                 lists: list[str], skip: tuple[str, ...] = ()) -> tuple[list[dict], list[dict]]:
    """(markdown rows, CSV rows) of A - B for each (name of A, A, name of B, B); the metrics
    in `skip` only in the CSV rows."""
    md, flat = [], []
    for name_a, a, name_b, b in pairs:
        title = f"{name_a} − {name_b}"
        row: dict[str, Any] = {"comparison": title}
        for name in lists:
            diff = comp.paired(a, b, name)
            for metric in METRICS:
                e = diff[metric]
                h = "Δ" + _header(metric, name, lists)
                mark = " *" if e.excludes_zero else ""
                if metric not in skip:
                    row[h] = cell(e, DIGITS[metric]) + mark if e.value is not None else "–"
                flat.append({"comparison": title, "a": a.key, "b": b.key, "list": name,
                             "metric": metric, "delta": e.value, "ci_low": e.lo,
                             "ci_high": e.hi, "excludes_zero": e.excludes_zero,
                             "n_seeds": e.n_seeds})
            eer = diff["eer"]
            row["EER difference significant" + (f" ({name})" if len(lists) > 1 else "")] = (
                "–" if eer.excludes_zero is None else
                ("yes: " + (name_a if eer.value < 0 else name_b) + " better")
                if eer.excludes_zero else "no")
        md.append(row)
    return md, flat


PAIRED_CSV = ["comparison", "a", "b", "list", "metric", "delta", "ci_low", "ci_high",
              "excludes_zero", "n_seeds"]


def _paired_md(rows: list[dict], intro: str) -> str:
    if not rows:
        return ""
    columns = list(rows[0])
    return f"\n## Paired comparisons\n\n{intro}\n\n" + markdown_table(columns, rows)


# --- the two tables --------------------------------------------------------------------------

def no_nlm_variants(groups: dict[str, Group] | list[Group]) -> list[Group]:
    """The SSRL variants that differ from `full` only by switching noisy-label modelling off
    (the paper's ablation the main table shows)."""
    variants = [g for g in (groups.values() if isinstance(groups, dict) else groups)
                if g.kind == "ssrl"]
    full = next((g for g in variants if g.row["variant"] == "full"), None)
    if full is None:
        return []
    out = []
    for g in variants:
        sw, ref = g.row["switches"], full.row["switches"]
        differs = {k for k in set(sw) | set(ref) if str(sw.get(k)) != str(ref.get(k))}
        if differs == {"noisy_label_modeling"} and str(sw.get("noisy_label_modeling")) == "False":
            out.append(g)
    return out


def main_groups(groups: dict[str, Group]) -> list[Group]:
    """The main table's rows: floor, DINO, the rounds, SSRL (and SSRL without noisy-label
    modelling when the grid has it), the topline."""
    order = {"baseline": 0, "dino": 1, "iterative": 2, "ssrl": 3, "supervised": 4}
    no_nlm = no_nlm_variants(groups)
    rows = [g for g in groups.values()
            if g.kind != "ssrl" or g.row["variant"] == "full" or g in no_nlm]
    return sorted(rows, key=lambda g: (order[g.kind], g.row.get("chain_epochs") or 0,
                                       g.row.get("round") or 0, g.row.get("variant") != "full"))


MAIN_INTRO = ("Test trials; EER in %, minDCF normalised (C_miss = C_fa = 1). Brackets: 95 % "
              "interval from a bootstrap over test speakers ({replicates} replicates); with "
              "several seeds: mean ± sd over seeds [interval of the mean]. NMI / clusters: "
              "pseudo labels at the end of training (DINO: its k-means; round r: the clustering "
              "it trained on); NMI, clusters and minutes are means over seeds, the CSV has each "
              "seed's. Minutes are training wall time; cumulative = all stages that led "
              "to the system (SSRL = DINO + SSRL, round r = DINO + rounds 1..r), also in passes "
              "over the training data. The topline uses the true speaker labels: reporting "
              "only. DINO→topline gap closed % = 100 × (EER of DINO − EER of the system) / "
              "(EER of DINO − EER of the topline), per seed on the first test list, with its "
              "bootstrap interval; the topline and every system here start from the same DINO "
              "model, so 0 % is no gain over DINO and 100 % matches the topline.")
MAIN_PAIRED = ("A − B on the same bootstrap replicates (negative ΔEER: A is better). `*`: the "
               "95 % interval excludes 0. First the paper's questions (SSRL against the last "
               "iterative round and against DINO, noisy-label modelling off against on, the "
               "last round against DINO), then every system against the classical floor.")
ABLATION_INTRO = ("Each row switches mechanisms of SSRL (columns left of the metrics); `full` is "
                  "the method as configured. Same intervals as the main table.")
ABLATION_PAIRED = ("variant − full on the same replicates (negative ΔEER: the variant is "
                   "better). `*`: the 95 % interval excludes 0.")


def main_table(cfg: dict, comp: Comparisons, groups: dict[str, Group], lists: list[str]
               ) -> tuple[str, str, str, str]:
    """(main.md, main.csv, main_paired.csv, main.html)."""
    by_name = {m.name: m for g in groups.values() for m in g.members}
    rows_md, rows_csv = [], []
    chosen = main_groups(groups)
    kinds = {g.kind: g for g in chosen}
    dino, top = kinds.get("dino"), kinds.get("supervised")
    first = lists[0] if lists else None
    gap_header = "DINO→topline gap closed %" + (f" ({first})" if len(lists) > 1 else "")

    def extra_of(g: Group) -> dict[str, Any]:
        """NMI, clusters, compute and the share of the gap closed (per seed or pooled)."""
        extra: dict[str, Any] = {**_labels(g), **_compute(g, by_name)}
        if dino and top and first and g.kind in ("iterative", "ssrl"):
            gap = comp.gap_closed(g, dino, top, first)
            extra[gap_header] = cell(gap, 0)
            extra.update({"gap closed %": gap.value, "gap closed % CI low": gap.lo,
                          "gap closed % CI high": gap.hi})
        return extra

    flat = flat_mindcf(comp, chosen, lists)
    skip = tuple(flat)
    for g in chosen:
        extra = extra_of(g)
        seeds = len(g.members)
        rows_md.append({"system": system_label(g),
                        "seeds": seeds, **_metric_cells(comp, g, lists, skip),
                        **{k: v for k, v in extra.items() if not k.startswith("gap closed %")},
                        "status": "ok" if g.ok else "failed"})
        rows_csv += _csv_rows(comp, g, lists, extra_of)
    metric_cols = [_header(m, n, lists) for n in lists for m in METRICS if m not in skip]
    columns = ["system", "seeds", *metric_cols, "NMI", "clusters"]
    if dino and top and first:
        columns.append(gap_header)
    columns += ["stage min", "cumulative min", "cumulative passes", "status"]
    csv_columns = ["system", "key", "seed", "uses_labels", *_estimate_csv_columns(lists),
                   "NMI", "clusters", "gap closed %", "gap closed % CI low",
                   "gap closed % CI high", "stage min", "stage passes", "cumulative min",
                   "cumulative passes", "status"]

    # the paper's questions first, then each system against the floor
    pairs = []
    ssrl = next((g for g in chosen if g.kind == "ssrl" and g.row["variant"] == "full"), None)
    floor = kinds.get("baseline")
    last_rounds = [rounds[-1] for rounds in iterative_chains(chosen).values()]
    for last in last_rounds if ssrl else []:
        pairs.append(("SSRL", ssrl, last.label, last))
    if ssrl and dino:
        pairs.append(("SSRL", ssrl, "DINO", dino))
    for g in no_nlm_variants(chosen) if ssrl else []:
        pairs.append((g.label, g, "SSRL", ssrl))
    for last in last_rounds if dino else []:
        pairs.append((last.label, last, "DINO", dino))
    if floor:
        pairs += [(g.label, g, floor.label, floor) for g in chosen
                  if g.kind != "baseline"]
    paired_md, paired_csv = _paired_rows(comp, pairs, lists, skip)

    experiment = cfg.get("experiment", "")
    intro = MAIN_INTRO.format(replicates=comp.replicates) + flat_note(flat, "main.csv")
    md = (f"# {experiment}: main results\n\n{intro}\n\n" + markdown_table(columns, rows_md))
    md += _paired_md(paired_md, MAIN_PAIRED)
    sections = [("Systems", intro, columns, rows_md)]
    if paired_md:
        sections.append(("Paired comparisons", MAIN_PAIRED, list(paired_md[0]), paired_md))
    if cfg.get("data", {}).get("source") == "voxceleb":
        md += _published_md()
    page = html_page(f"{experiment}: main results", sections)
    return md, _csv(csv_columns, rows_csv), _csv(PAIRED_CSV, paired_csv), page


def ablation_table(cfg: dict, comp: Comparisons, groups: dict[str, Group], lists: list[str]
                   ) -> tuple[str, str, str, str]:
    """(ablation.md, ablation.csv, ablation_paired.csv, ablation.html): one row per SSRL
    variant."""
    variants = [g for g in groups.values() if g.kind == "ssrl"]
    switch_keys = sorted({k for g in variants for k in g.row["switches"]})
    rows_md, rows_csv = [], []

    def extra_of(g: Group) -> dict[str, Any]:
        """Switches, NMI, clusters, epochs and minutes (per seed or pooled)."""
        return {**{k: str(g.row["switches"].get(k)) for k in switch_keys}, **_labels(g),
                "epochs": g.row["epochs"], "stage min": _compute(g, {})["stage min"]}

    flat = flat_mindcf(comp, variants, lists)
    skip = tuple(flat)
    for g in variants:
        rows_md.append({"variant": g.row["variant"], "seeds": len(g.members),
                        **_metric_cells(comp, g, lists, skip), **extra_of(g),
                        "status": "ok" if g.ok else "failed"})
        rows_csv += [{**r, "variant": g.row["variant"]}
                     for r in _csv_rows(comp, g, lists, extra_of)]
    metric_cols = [_header(m, n, lists) for n in lists for m in METRICS if m not in skip]
    columns = ["variant", "seeds", *switch_keys, *metric_cols, "NMI", "clusters", "epochs",
               "stage min", "status"]
    csv_columns = ["variant", "seed", *switch_keys, *_estimate_csv_columns(lists), "NMI",
                   "clusters", "epochs", "stage min", "status"]
    full = next((g for g in variants if g.row["variant"] == "full"), None)
    pairs = [(g.row["variant"], g, "full", full) for g in variants if full and g is not full]
    paired_md, paired_csv = _paired_rows(comp, pairs, lists, skip)
    experiment = cfg.get("experiment", "")
    intro = ABLATION_INTRO + flat_note(flat, "ablation.csv")
    md = (f"# {experiment}: SSRL ablation grid\n\n{intro}\n\n"
          + markdown_table(columns, rows_md))
    md += _paired_md(paired_md, ABLATION_PAIRED)
    sections = [("Variants", intro, columns, rows_md)]
    if paired_md:
        sections.append(("Paired comparisons", ABLATION_PAIRED, list(paired_md[0]), paired_md))
    page = html_page(f"{experiment}: SSRL ablation grid", sections)
    return md, _csv(csv_columns, rows_csv), _csv(PAIRED_CSV, paired_csv), page


def _published_md() -> str:
    rows = [{"system": name, **{f"EER % ({n})": None if v is None else str(v)  # as quoted
                                for n, v in zip(PUBLISHED_LISTS, eers)}}
            for name, eers in PUBLISHED_EER.items()]
    return ("\n## Published (quoted, not measured here)\n\n"
            "EER % on VoxCeleb1-O / E / H cleaned, trained on VoxCeleb2-dev without labels, as "
            "quoted in SSRL-NOTES (\"Numbers from other systems\"). Other front ends, "
            "recipes and compute: for orientation only.\n\n"
            + markdown_table(["system", *(f"EER % ({n})" for n in PUBLISHED_LISTS)], rows))


def system_label(g: Group) -> str:
    """A row's name in the tables (and the `system` tag of its MLflow runs)."""
    return g.label + (" (true labels)" if g.row["uses_labels"] else "")


def run_numbers(comp: Comparisons, groups: dict[str, Group], lists: list[str]
                ) -> dict[str, dict[str, Any]]:
    """The tables' per-seed numbers that the score step does not put on a system's MLflow run,
    by the system's folder: each metric's interval (`test/eer_low`, `test/eer_high`, per list
    as `test/<list>/eer_low` with several lists), the cumulative passes and minutes of the
    chain of stages that led to it, and the share of the DINO → topline gap it closes; and
    the tag `system` (the row's name). {folder: {"metrics": {...}, "tags": {...}}}. Rounded to
    4 decimals (the MLflow UI prints every digit; the tables print at most 3)."""
    by_name = {m.name: m for g in groups.values() for m in g.members}
    kinds = {g.kind: g for g in main_groups(groups)}
    dino, top = kinds.get("dino"), kinds.get("supervised")
    out: dict[str, dict[str, Any]] = {}
    for g in groups.values():
        for m in g.members:
            one = Group(g.key, g.label, g.kind, [m])
            numbers: dict[str, float] = {}
            for name in lists:
                keys = metric_keys("test", name, lists)
                for metric, e in comp.summary(one, name).items():
                    if e.lo is not None:
                        numbers[f"{keys[metric]}_low"] = e.lo
                        numbers[f"{keys[metric]}_high"] = e.hi
            for key, name in (("utterance_passes", "cumulative_passes"),
                              ("wall_seconds", "cumulative_minutes")):
                value = _cumulative(m, by_name, key)
                if value is not None:
                    numbers[f"compute/{name}"] = value / 60.0 if key == "wall_seconds" else value
            if dino and top and lists and g.kind in ("iterative", "ssrl"):
                gap = comp.gap_closed(one, dino, top, lists[0])
                if gap.value is not None:
                    numbers["test/gap_closed"] = gap.value
            out[m.row["dir"]] = {"metrics": {k: round(v, 4) for k, v in numbers.items()},
                                 "tags": {"system": system_label(g)}}
    return out


def write_tables(cfg: dict, root: Path, out_dir: Path, threads: int = 1) -> dict[str, dict]:
    """main.{md,csv}, main_paired.csv, ablation.{md,csv}, ablation_paired.csv in `out_dir`.
    Returns the seed-mean test EER of the first list per SSRL variant and per iterative round
    (what the sweeps' parent runs summarise) and, under `runs`, `run_numbers` (what each
    system's run gets so that MLflow holds every number of the tables)."""
    root, out_dir = Path(root), Path(out_dir)
    groups = load_groups(cfg, root)
    lists = trial_lists(cfg, groups)
    comp = Comparisons(open_store(root / cfg["test_store"]), lists,
                       cfg.get("eval", {}).get("bootstrap", {}), threads)
    for name, table in (("main", main_table), ("ablation", ablation_table)):
        md, rows, paired, page = table(cfg, comp, groups, lists)
        write_text(out_dir / f"{name}.md", md)
        write_text(out_dir / f"{name}.csv", rows)
        write_text(out_dir / f"{name}_paired.csv", paired)
        write_text(out_dir / f"{name}.html", page)
    first = lists[0] if lists else None
    summary: dict[str, dict] = {"ablation": {}, "iterative": {},
                                "runs": run_numbers(comp, groups, lists)}
    for g in groups.values():
        if g.kind not in ("ssrl", "iterative") or first is None:
            continue
        eer = comp.summary(g, first)["eer"].value
        if eer is not None:
            key = g.row["variant"] if g.kind == "ssrl" else \
                f"e{g.row.get('chain_epochs')}-round{g.row['round']}"
            summary["ablation" if g.kind == "ssrl" else "iterative"][key] = eer
    return summary
