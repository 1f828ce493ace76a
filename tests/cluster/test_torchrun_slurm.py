"""`runtime.gpus_per_job: 2` on a CPU partition: the training rules' real shell commands
(torchrun --standalone, two gloo processes) for DINO, SSRL and an iterative round, each inside
one SLURM allocation of one node, asking for the CPUs both processes use and no GPU."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from cluster_support import CONFIGS, EXTRA, SLURM_ARGS, new_workflow, say

# the training rules (SLURM comment `rule_<name>_...`) and the model each writes
STAGES = {"dino": "seed0/dino", "ssrl": "seed0/ssrl/noisy_label_modeling~True",
          "iterative_round": "seed0/iterative/e2/round1"}


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0")
                if "=" in item)


def test_two_process_training_in_one_slurm_allocation(local_run, slurm, tmp_path):
    # the local run's prepared data and stores, copied with their times: only training reruns
    run = new_workflow(tmp_path / "wf", EXTRA)
    (run.dir / "ddp.yaml").write_text("runtime: {gpus_per_job: 2}\n")
    run.experiment = local_run.experiment
    shutil.copytree(local_run.results, run.results, symlinks=True)
    # a copy has no Snakemake metadata, so the changed job configs alone would not be seen:
    # remove the three trainings' outputs and job configs (the workflow writes them anew)
    for folder in STAGES.values():
        shutil.rmtree(run.results / folder)
        (run.results / "jobs" / f"{folder}.json").unlink()
    targets = [f"results/{run.experiment}/{folder}/model.pt" for folder in STAGES.values()]
    run.start(*SLURM_ARGS, *targets, *CONFIGS, "ddp.yaml")  # the targets before the files

    ranks: dict[str, dict[str, str]] = {rule: {} for rule in STAGES}
    jobs: dict[str, str] = {}
    while run.proc.poll() is None:
        for rule in STAGES:
            job = slurm.running(rule)
            if not job:
                continue
            jobs[rule] = job.id
            for pid in slurm.pids(job.id):
                env = _environ(pid)
                if "RANK" in env and "ssrl" in Path(f"/proc/{pid}/cmdline").read_text(
                        errors="replace"):
                    ranks[rule][env["RANK"]] = env.get("WORLD_SIZE", "?")
        time.sleep(0.2)
    run.wait()
    for rule, folder in STAGES.items():
        assert rule in jobs and ranks[rule] == {"0": "2", "1": "2"}, (rule, ranks)
        assert (run.results / folder / "model.pt").is_file()
        say(f"torchrun inside SLURM job {jobs[rule]} ({rule}): world size 2 (ranks "
            f"{sorted(ranks[rule])}), {os.cpu_count()} CPUs on the node")
