# ssrl: self-supervised reflective learning of speaker embeddings, as a reproducible workflow.
#   snakemake --cores all                                  default experiment (built-in corpus)
#   snakemake --cores all --configfile config/smoke.yaml   the whole DAG in about two minutes
#   snakemake --cores all --configfile config/voxceleb.yaml   the paper's recipe
# Stages: data -> wave stores -> DINO -> k-means -> SSRL (+ ablation grid), the iterative
# baseline and the supervised topline -> embeddings -> scores with intervals -> tables, plots,
# report. Each rule calls `python -m ssrl`; common.smk owns the layout.
import subprocess
import tempfile

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/jobs.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/stage1.smk"
include: "workflow/rules/stage2.smk"
include: "workflow/rules/evaluation.smk"


rule all:
    input:
        f"{R}/tables/main.md",
        f"{R}/tables/ablation.md",
        f"{R}/plots/dynamics.png",
        f"{R}/plots/trajectories.png",
        f"{R}/plots/det.png",
        f"{R}/export/encoder.onnx",
        [f"{R}/scaling/scaling.md", f"{R}/scaling/scaling.png"] if SCALING else [],
    default_target: True


onsuccess:
    # Records a job could not send to MLflow (a full disk, a server down) wait in its
    # mlflow_buffer.jsonl: send them now, or say which are still waiting.
    subprocess.run(["python", "-m", "ssrl", "mlflow-sync", "--results", R], check=False)


onerror:
    # (only listed: a job stopped by the error may still be closing its MLflow run)
    subprocess.run(["python", "-m", "ssrl", "mlflow-sync", "--list", "--results", R], check=False)
    # Under --keep-going one failed job (e.g. a crashing ablation variant) must not hide the
    # results of the others: write the tables and plots from what finished into partial/
    # subfolders; every system whose files are missing becomes a `failed` row. (Not in the rules'
    # own output paths: Snakemake would then take them as complete and never redo them.)
    if getattr(workflow.execution_settings, "keep_going", False) and os.path.isdir(f"{R}/eval"):
        steps = [("tables", "report"), ("plots", "report")] + ([("scaling", "scaling")]
                                                                if SCALING else [])
        for step, job in steps:
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                json.dump(JOBS[job], f)
            subprocess.run(["python", "-m", "ssrl", step, "--job", f.name, "--root", R,
                            "--out-dir", f"{R}/{step}/partial"], check=False)
            os.unlink(f.name)
