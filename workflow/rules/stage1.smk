# Stage 1: DINO pretraining with no labels, then k-means pseudo labels of the training set.


rule dino:
    conda:
        "../../envs/conda.yaml"
    input:
        train=store("train"),
        **AUGMENT_STORES,
    output:
        f"{R}/dino/model.pt",
    params:
        cfg=lambda w: cfg_json("dino"),
        out=lambda w, output: os.path.dirname(output[0]),
        launch=launcher(),
        results=lambda w: config["results_dir"],
    threads: config["runtime"]["threads"]
    resources:
        **train_resources(),
    log:
        f"{LOGS}/dino.log",
    shell:
        "{params.launch} dino --cfg '{params.cfg}' --results {params.results}"
        " --train {input.train} --noise {input.noise} --rir {input.rir} --out {params.out}"
        " 2>&1 | tee {log}"


rule cluster:
    conda:
        "../../envs/conda.yaml"
    input:
        model=lambda w: model_of(w.source),
        train=store("train"),
    output:
        labels=f"{R}/cluster/{{source}}_k{{k}}/labels.npz",
        quality=f"{R}/cluster/{{source}}_k{{k}}/quality.json",
    wildcard_constraints:
        source=r"dino|round\d+",
        k=r"\d+",
    params:
        cfg=lambda w: cfg_json("cluster"),
        out=lambda w, output: os.path.dirname(output.labels),
        launch=launcher(),
    threads: config["runtime"]["threads"]
    resources:
        **train_resources(),
    log:
        f"{LOGS}/cluster_{{source}}_k{{k}}.log",
    shell:
        "{params.launch} cluster --cfg '{params.cfg}' --model {input.model} --train {input.train}"
        " --k {wildcards.k} --out {params.out} 2>&1 | tee {log}"
