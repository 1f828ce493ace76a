# The config file of every job (JOBS in common.smk), written where the job reads it. A job's
# config changes -> this file changes -> Snakemake reruns exactly the jobs that read it.


rule job_config:
    output:
        f"{R}/jobs/{{job}}.json",
    params:
        json=lambda w: json.dumps(JOBS[w.job], sort_keys=True),
    log:
        f"{LOGS}/jobs/{{job}}.log",
    localrule: True
    conda:
        "../../envs/conda.yaml"
    shell:
        "printf '%s' {params.json:q} | python -m ssrl job-config --out {output:q} 2> {log:q}"
