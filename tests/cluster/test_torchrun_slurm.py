"""`runtime.gpus_per_job: 2` on a CPU partition: the DINO rule's real shell command (torchrun
--standalone, two gloo processes) inside one SLURM allocation of one node, asking for the CPUs
both processes use and no GPU."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from cluster_support import CONFIGS, EXTRA, SLURM_ARGS, new_workflow, say


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0")
                if "=" in item)


def test_two_process_dino_in_one_slurm_allocation(local_run, slurm, tmp_path):
    # the local run's prepared data and stores, copied with their times: only DINO reruns
    run = new_workflow(tmp_path / "wf", EXTRA)
    (run.dir / "ddp.yaml").write_text("runtime: {gpus_per_job: 2}\n")
    run.experiment = local_run.experiment
    shutil.copytree(local_run.results, run.results, symlinks=True)
    # a copy has no Snakemake metadata, so the changed job config alone would not be seen:
    # remove DINO's outputs and its job config (the workflow writes it anew, with 2 processes)
    shutil.rmtree(run.results / "seed0/dino")
    (run.results / "jobs/seed0/dino.json").unlink()
    target = f"results/{run.experiment}/seed0/dino/model.pt"
    run.start(*SLURM_ARGS, target, *CONFIGS, "ddp.yaml")  # the target before the files

    ranks: dict[str, str] = {}
    job_id = None
    while run.proc.poll() is None:
        job = slurm.running("dino")
        if job:
            job_id = job.id
            for pid in slurm.pids(job.id):
                env = _environ(pid)
                if "RANK" in env and "ssrl" in Path(f"/proc/{pid}/cmdline").read_text(
                        errors="replace"):
                    ranks[env["RANK"]] = env.get("WORLD_SIZE", "?")
        time.sleep(0.2)
    run.wait()
    assert job_id is not None and ranks == {"0": "2", "1": "2"}, ranks
    assert (run.results / "seed0/dino/model.pt").is_file()
    log = (run.results / "logs/seed0/dino.log").read_text()
    assert "torchrun: 2 processes, gloo backend" in log, log[-3000:]
    say(f"torchrun inside SLURM job {job_id}: world size 2 (ranks {sorted(ranks)}), "
        f"{os.cpu_count()} CPUs on the node")
