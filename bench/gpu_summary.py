"""The summary of bench/gpu_check.sh: OUT/summary.md and OUT/summary.json from OUT/parts.tsv
(name, status, exit code, seconds, log or reason per part) and the parts' logs.

Each part's key lines are quoted; the figures the issue sets goals for are parsed out: the
bf16 MFU of the SSRL step (goal >= 30 %) and the GPU k-means time (goal <= 60 s).
Run by gpu_check.sh:  python bench/gpu_summary.py OUT --mode gpu --seconds S --budget B
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
from pathlib import Path

#: Lines worth quoting from each part's log.
KEY_LINES = {
    "env": r".",
    "gpu_tests": r"(passed|failed|skipped|error)",
    "train": r"^(device|==|path|fp32|optimised|peak memory|model FLOPs|ratio)",
    "compile": r"^(device|==|path|fp32|optimised|ratio)",
    "kmeans": r"^(size|ssrl|GPU/CPU|sklearn|ratio|summary)",
    "dataload": r"^(device|store built|cpu aug|gpu aug|log-mel|ratio)",
    "workflow": r"(steps \(\d+%\) done|Error|error|Nothing to be done|dry-run|^total)",
}
MFU_GOAL_PCT, KMEANS_GOAL_S = 30.0, 60.0
ROW = re.compile(r"^(fp32|optimised)\s+((?:\S+\s+){9})(\S+)$")


def read_parts(out: Path) -> list[dict]:
    parts = []
    for line in (out / "parts.tsv").read_text().splitlines():
        name, status, rc, seconds, log = line.split("\t")
        part = {"name": name, "status": status, "rc": int(rc) if rc else None,
                "seconds": int(seconds), "lines": []}
        if status == "skipped":
            part["reason"] = log
        else:
            part["log"] = log
            text = (out / log).read_text(errors="replace") if (out / log).is_file() else ""
            part["lines"] = [x for x in text.splitlines() if re.search(KEY_LINES[name], x)][-40:]
            part["text"] = text
        parts.append(part)
    return parts


def step_table(text: str) -> dict[str, dict[str, dict]]:
    """bench/train_step.py's tables: section title -> path -> utt/s, TFLOP/s, MFU (%)."""
    tables: dict[str, dict[str, dict]] = {}
    section = None
    for line in text.splitlines():
        if line.startswith("== "):
            section = line[3:].split(":")[0]  # "SSRL step" / "DINO step"
            tables[section] = {}
        elif section and (m := ROW.match(line)):
            fields = m.group(2).split()
            mfu = m.group(3)
            tables[section][m.group(1)] = {
                "total_s": float(fields[5]), "utt_per_s": float(fields[6]),
                "peak_mib": float(fields[7]), "tflops": float(fields[8]),
                "mfu_pct": float(mfu.rstrip("%")) if mfu.endswith("%") else None}
    return tables


def kmeans_figures(text: str) -> dict:
    m = re.search(r"^ssrl GPU: n=(\d+) ([\d.]+) s to stop \((\d+) iterations, converged=(\w+)\), "
                  r"([\d.]+) s/iteration", text, re.M)
    if not m:
        return {}
    agree = re.search(r"^GPU/CPU assignment agreement on \d+ points: ([\d.]+)", text, re.M)
    return {"n": int(m.group(1)), "seconds": float(m.group(2)), "iterations": int(m.group(3)),
            "converged": m.group(4) == "True", "per_iteration_s": float(m.group(5)),
            "agreement": float(agree.group(1)) if agree else None}


def goals(figures: dict, mode: str) -> list[dict]:
    ssrl = figures.get("train", {}).get("SSRL step", {}).get("optimised", {})
    mfu = ssrl.get("mfu_pct")
    compiled = figures.get("compile", {}).get("SSRL step", {}).get("optimised", {})
    best = max((x for x in (mfu, compiled.get("mfu_pct")) if x is not None), default=None)
    km = figures.get("kmeans", {})
    km_s = km.get("seconds") if km.get("n") == 1_092_009 else None
    out = [{"goal": "SSRL step bf16 MFU (eager or compiled)", "target": f">= {MFU_GOAL_PCT:g} %",
            "value": best, "met": None if best is None else best >= MFU_GOAL_PCT},
           {"goal": "k-means 1,092,009 x 512 -> 8000 on the GPU", "target":
            f"<= {KMEANS_GOAL_S:g} s", "value": km_s,
            "met": None if km_s is None else km_s <= KMEANS_GOAL_S}]
    if mode != "gpu":
        for g in out:
            g["value"], g["met"] = None, None  # smoke sizes on a CPU measure nothing
    return out


def commit(repo: Path) -> str:
    proc = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() or "unknown"


def markdown(s: dict) -> str:
    md = [f"# GPU check ({s['mode']})", "",
          f"- device: {s['device']}", f"- date: {s['date']}, commit {s['commit']}",
          f"- wall time: {s['seconds']} s of a {s['budget']} s budget", "",
          "| part | status | seconds |", "|---|---|---|"]
    md += [f"| {p['name']} | {p['status']}{' (' + p['reason'] + ')' if 'reason' in p else ''} "
           f"| {p['seconds']} |" for p in s["parts"]]
    md += ["", "| goal | target | measured | met |", "|---|---|---|---|"]
    for g in s["goals"]:
        value = "not measured" if g["value"] is None else f"{g['value']:g}"
        met = {True: "yes", False: "no", None: "-"}[g["met"]]
        md.append(f"| {g['goal']} | {g['target']} | {value} | {met} |")
    for p in s["parts"]:
        if p["lines"]:
            md += ["", f"## {p['name']}", "", "```", *p["lines"], "```"]
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> None:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("out")
    a.add_argument("--mode", choices=("gpu", "cpu-smoke"), required=True)
    a.add_argument("--seconds", type=int, required=True)
    a.add_argument("--budget", type=int, required=True)
    a.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]))
    args = a.parse_args(argv)
    out = Path(args.out)
    parts = read_parts(out)
    texts = {p["name"]: p.pop("text", "") for p in parts}
    figures = {"train": step_table(texts.get("train", "")),
               "compile": step_table(texts.get("compile", "")),
               "kmeans": kmeans_figures(texts.get("kmeans", ""))}
    env = texts.get("env", "").strip().splitlines()
    summary = {"mode": args.mode, "device": env[-1] if env else "unknown",
               "date": datetime.date.today().isoformat(), "commit": commit(Path(args.repo)),
               "seconds": args.seconds, "budget": args.budget, "parts": parts,
               "figures": figures, "goals": goals(figures, args.mode)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    print(markdown(summary), end="")


if __name__ == "__main__":
    main()
