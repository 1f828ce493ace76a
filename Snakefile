# ssrl: self-supervised reflective learning of speaker embeddings, as a reproducible workflow.
#   snakemake --cores all                                  default experiment (built-in corpus)
#   snakemake --cores all --configfile config/smoke.yaml   the whole DAG in about two minutes
#   snakemake --cores all --configfile config/voxceleb.yaml   the paper's recipe
# Stages: data -> wave stores -> DINO -> k-means -> SSRL (+ ablation grid) and the iterative
# baseline -> embeddings -> scores -> tables, plots, report. Each rule calls `python -m ssrl`.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/stage1.smk"
include: "workflow/rules/stage2.smk"
include: "workflow/rules/evaluation.smk"


rule all:
    input:
        f"{R}/tables/main.md",
        f"{R}/tables/ablation.md",
        f"{R}/plots/trajectories.png",
        f"{R}/plots/det.png",
    default_target: True
