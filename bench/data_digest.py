"""Benchmark: what the workflow's start-up check of a user's data set costs
(`ssrl.data.sources.update_digest`, run for every set at every `snakemake` start).

Writes a Kaldi folder of N small audio files (default 100,000 of 1 kB: the per-file cost is
what is measured; hashing throughput is measured separately on one 256 MB file), then times
  first:     empty cache, every file hashed (the first start after preparing a corpus)
  unchanged: every file known by its (size, mtime, ctime, inode), nothing written
  touched:   1 % of the files touched (new mtime, same bytes): re-hashed, digest unchanged
Run from the repo root:  python bench/data_digest.py [--files N] [--smoke] [--dir PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssrl.data.sources import sha256_file, update_digest  # noqa: E402


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--smoke", action="store_true", help="2,000 files, 16 MB hashed")
    ap.add_argument("--dir", default=None, help="where to write the files (default: a temp dir)")
    a = ap.parse_args()
    n = 2_000 if a.smoke else a.files
    big_mb = 16 if a.smoke else 256
    root = Path(tempfile.mkdtemp(prefix="digest-bench-", dir=a.dir))
    try:
        folder = root / "set"
        (folder / "wav").mkdir(parents=True)
        rng_bytes = os.urandom(1024)
        rows = []
        for i in range(n):
            name = f"wav/u{i:07d}.wav"
            (folder / name).write_bytes(i.to_bytes(8, "little") + rng_bytes)
            rows.append(f"u{i:07d} {name}\n")
        (folder / "wav.scp").write_text("".join(rows))
        (folder / "utt2spk").write_text("".join(f"u{i:07d} s{i % 1000}\n" for i in range(n)))
        cfg = {"source": "kaldi", "kaldi": {"train": str(folder)}}
        inputs = root / "inputs"

        first, written = timed(lambda: update_digest(cfg, "train", inputs, lambda s: None))
        assert written
        unchanged, written = timed(lambda: update_digest(cfg, "train", inputs, lambda s: None))
        assert not written
        for i in range(0, n, 100):
            os.utime(folder / f"wav/u{i:07d}.wav")
        touched, written = timed(lambda: update_digest(cfg, "train", inputs, lambda s: None))
        assert not written

        big = root / "big.bin"
        with open(big, "wb") as f:
            for _ in range(big_mb):
                f.write(os.urandom(1 << 20))
        hashing, _ = timed(lambda: sha256_file(big))
        print(f"files: {n:,}")
        print(f"first start (all hashed): {first:.2f} s ({1e6 * first / n:.0f} us/file)")
        print(f"unchanged start:          {unchanged:.2f} s ({1e6 * unchanged / n:.1f} us/file)")
        print(f"1 % touched:              {touched:.2f} s")
        print(f"sha256 throughput:        {big_mb / hashing:.0f} MB/s (one {big_mb} MB file, "
              "page cache warm)")
        print(f"projection, 1,000,000 files: unchanged start ~{unchanged / n * 1e6:.0f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
