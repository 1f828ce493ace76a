"""What a job prints: one line per event, each prefixed with the job it comes from.

Snakemake runs jobs in parallel and their lines interleave on the console, so every line names
its job (`[ssrl-full-seed0]`, `[iterative-round3-seed0]`, `[store/test]`). Progress bars are
drawn only on a terminal: in a log file they would be hundreds of carriage returns.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

#: Loggers whose INFO lines read as failures (faiss tries its AVX-512 build first and logs the
#: ModuleNotFoundError it expects when the CPU has none): shown only from WARNING up.
QUIET_LOGGERS = ("faiss.loader", "faiss")


def progress_bars() -> bool:
    """Draw progress bars only when standard error is a terminal."""
    return sys.stderr.isatty()


def job_label(job_file: str | None, cfg: dict, command: str) -> str:
    """The name a job's lines carry: its MLflow run name, else its config file's place under
    `jobs/` (e.g. `store/test`), else the command."""
    name = (cfg.get("job") or {}).get("name")
    if name:
        return name
    if job_file:
        path = Path(job_file)
        parts = path.with_suffix("").parts
        if "jobs" in parts:
            return "/".join(parts[len(parts) - parts[::-1].index("jobs"):])
        return path.stem
    return command


def setup_logging(label: str, verbose: bool = False) -> None:
    """Log lines `time [label] LEVEL message` to standard error."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s [{label}] %(levelname)s %(message)s",
                                           datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
