"""Where a workflow run's time went, from Snakemake's own log (no instrumentation needed).

    python bench/run_breakdown.py                       # the newest .snakemake/log/*.log
    python bench/run_breakdown.py LOG [--cores 2]

Prints, per rule: jobs, the sum of their durations, the longest job, and the share of the
run's wall time; then the wall time and how busy the cores were (sum over jobs of duration x
threads, over wall x cores): a value well below 1 means cores sat idle (scheduling), not that
a kernel was slow. Snakemake stamps whole seconds, so jobs under ~2 s are noise.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from datetime import datetime
from pathlib import Path

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
START = re.compile(r"^(?:local)?rule (\w+):$")
JOBID = re.compile(r"^\s+jobid: (\d+)$")
THREADS = re.compile(r"^\s+threads: (\d+)$")
WILDCARDS = re.compile(r"^\s+wildcards: (.*)$")
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)$")


def parse(log: Path) -> list[dict]:
    """One record per finished job: rule, wildcards, threads, start and end (datetime)."""
    jobs: dict[str, dict] = {}
    done: list[dict] = []
    stamp = current = None
    for line in log.read_text().splitlines():
        if m := STAMP.match(line):
            stamp, current = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y"), None
        elif m := START.match(line):
            current = {"rule": m.group(1), "start": stamp, "threads": 1, "wildcards": ""}
        elif current is not None and (m := JOBID.match(line)):
            jobs[m.group(1)] = current
        elif current is not None and (m := THREADS.match(line)):
            current["threads"] = int(m.group(1))
        elif current is not None and (m := WILDCARDS.match(line)):
            current["wildcards"] = m.group(1)
        elif (m := FINISHED.match(line)) and m.group(1) in jobs:
            job = jobs.pop(m.group(1))
            done.append({**job, "end": stamp})
    return done


def summary(jobs: list[dict], cores: int) -> str:
    if not jobs:
        return "no finished jobs in this log"
    first = min(j["start"] for j in jobs)
    wall = (max(j["end"] for j in jobs) - first).total_seconds()
    by_rule: dict[str, list[dict]] = defaultdict(list)
    for j in jobs:
        j["seconds"] = (j["end"] - j["start"]).total_seconds()
        by_rule[j["rule"]].append(j)
    header = f"{'rule':<18} {'jobs':>4} {'sum s':>8} {'longest s':>9} {'% of wall':>9}"
    lines = [header + "  longest job"]
    for rule, group in sorted(by_rule.items(), key=lambda kv: -sum(j["seconds"] for j in kv[1])):
        total = sum(j["seconds"] for j in group)
        top = max(group, key=lambda j: j["seconds"])
        lines.append(f"{rule:<18} {len(group):>4} {total:>8.0f} {top['seconds']:>9.0f} "
                     f"{100 * total / wall:>8.0f}%  {top['wildcards']}")
    busy = sum(j["seconds"] * min(j["threads"], cores) for j in jobs) / (wall * cores)
    lines.append(f"wall {wall:.0f} s ({wall / 60:.1f} min), {len(jobs)} jobs; "
                 f"cores busy {busy:.2f} of {cores}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("log", nargs="?", help="a Snakemake log (default: the newest in "
                   ".snakemake/log/)")
    p.add_argument("--cores", type=int, default=2, help="cores the run had (default: 2)")
    a = p.parse_args()
    log = Path(a.log) if a.log else max(Path(".snakemake/log").glob("*.snakemake.log"),
                                        key=lambda f: f.stat().st_mtime)
    print(f"{log}")
    print(summary(parse(log), a.cores))


if __name__ == "__main__":
    main()
