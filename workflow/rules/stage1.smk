# Stage 1: DINO pretraining with no labels, then k-means pseudo labels of the training set.


rule dino:
    conda:
        "../../envs/conda.yaml"
    input:
        train=store("train"),
        **AUGMENT_STORES,
        cfg=job_file("seed{seed}/dino"),
    output:
        model=f"{R}/seed{{seed}}/dino/model.pt",
        history=f"{R}/seed{{seed}}/dino/history.json",
        compute=f"{R}/seed{{seed}}/dino/compute.json",
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
        model=clustered_model,
        train=store("train"),
        cfg=job_file("seed{seed}/cluster/{source}_k{k}"),
    output:
        labels=f"{R}/seed{{seed}}/cluster/{{source}}_k{{k}}/labels.npz",
        quality=f"{R}/seed{{seed}}/cluster/{{source}}_k{{k}}/quality.json",
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
