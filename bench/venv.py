"""Creating the project's venv from the lock: pip (the old path) against uv (the Makefile's
default), each through the Makefile's own `venv` target, in the same run.

    python3 bench/venv.py [--repeat 1] [--keep-caches]

Each round builds two fresh venvs in a temporary folder, `make venv VENV_TOOL=pip` and
`make venv VENV_TOOL=uv`, with empty pip and uv caches (as on a fresh CI machine: every wheel
is downloaded) unless --keep-caches, and prints the wall time of each and their ratio. About
5 GB of disk per venv while it lives; both are deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_venv(tool: str, root: Path, keep_caches: bool) -> float:
    """Seconds `make venv` takes to build `root/<tool>/.venv` from the lock with `tool`."""
    venv = root / tool / ".venv"
    env = dict(os.environ)
    if not keep_caches:
        env["PIP_NO_CACHE_DIR"] = "1"
        env["UV_CACHE_DIR"] = str(root / f"{tool}-uv-cache")
    start = time.perf_counter()
    subprocess.run(["make", "--no-print-directory", "venv", f"VENV={venv}", f"VENV_TOOL={tool}"],
                   cwd=REPO, env=env, check=True)
    seconds = time.perf_counter() - start
    shutil.rmtree(root / tool, ignore_errors=True)
    shutil.rmtree(root / f"{tool}-uv-cache", ignore_errors=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--keep-caches", action="store_true",
                        help="use the machine's pip/uv caches (a second install on one machine)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-venv-") as tmp:
        for i in range(args.repeat):
            pip = make_venv("pip", Path(tmp), args.keep_caches)
            uv = make_venv("uv", Path(tmp), args.keep_caches)
            print(f"round {i + 1}: pip {pip:.1f} s, uv {uv:.1f} s, pip/uv {pip / uv:.2f}x",
                  flush=True)


if __name__ == "__main__":
    main()
