# Stage 1: DINO pretraining with no labels, then k-means pseudo labels of the training set.


rule dino:
    conda:
        "../../envs/conda.yaml"
    input:
        train=store("train"),
        **AUGMENT_STORES,
        cfg=lambda w: job_file(f"seed{w.seed}/dino"),
    output:
        model=f"{R}/seed{{seed}}/dino/model.pt",
        history=f"{R}/seed{{seed}}/dino/history.json",
        compute=f"{R}/seed{{seed}}/dino/compute.json",
    wildcard_constraints:
        seed=r"\d+",
    params:
        out=lambda w, output: os.path.dirname(output.model),
        launch=launcher(),
    threads: train_threads()
    resources:
        **train_resources(),
    log:
        f"{LOGS}/seed{{seed}}/dino.log",
    shell:
        "{params.launch:q} dino --job {input.cfg:q} --train {input.train:q}"
        " --noise {input.noise:q} --rir {input.rir:q} --out {params.out:q} 2>&1 | tee {log:q}"


rule cluster:
    conda:
        "../../envs/conda.yaml"
    input:
        model=lambda w: model_of(w.seed, w.source),
        train=store("train"),
        cfg=lambda w: job_file(f"seed{w.seed}/cluster/{w.source}_k{w.k}"),
    output:
        labels=f"{R}/seed{{seed}}/cluster/{{source}}_k{{k}}/labels.npz",
        quality=f"{R}/seed{{seed}}/cluster/{{source}}_k{{k}}/quality.json",
    wildcard_constraints:
        seed=r"\d+",
        source=r"dino|e\d+-round\d+",
        k=r"\d+",
    params:
        out=lambda w, output: os.path.dirname(output.labels),
        launch=launcher(),
        # DINO's k-means start (the tables' DINO row) goes on DINO's MLflow run as epoch 0
        run=lambda w: f"{R}/seed{w.seed}/dino" if w.source == "dino" and int(w.k) == K else "",
    threads: train_threads()
    resources:
        **train_resources(),
    log:
        f"{LOGS}/seed{{seed}}/cluster_{{source}}_k{{k}}.log",
    shell:
        "{params.launch:q} cluster --job {input.cfg:q} --model {input.model:q}"
        " --train {input.train:q} --out {params.out:q} --run-dir={params.run:q}"
        " 2>&1 | tee {log:q}"
