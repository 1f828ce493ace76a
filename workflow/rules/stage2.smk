# Stage 2: SSRL (one run per row of the ablation grid; the "full" row is the main result),
# the iterative baseline it is compared with (one job per round), and the supervised topline.


rule ssrl:
    conda:
        "../../envs/conda.yaml"
    input:
        train=store("train"),
        **AUGMENT_STORES,
        **DEV_STORE,
        init=f"{R}/seed{{seed}}/dino/model.pt",
        labels=variant_start_labels,
        cfg=job_file(f"seed{{seed}}/ssrl/{paramspace.wildcard_pattern}"),
    output:
        model=f"{R}/seed{{seed}}/ssrl/{paramspace.wildcard_pattern}/model.pt",
        history=f"{R}/seed{{seed}}/ssrl/{paramspace.wildcard_pattern}/history.json",
        compute=f"{R}/seed{{seed}}/ssrl/{paramspace.wildcard_pattern}/compute.json",
        labels=f"{R}/seed{{seed}}/ssrl/{paramspace.wildcard_pattern}/labels.npz",  # the labels it ended with (AS-norm cohort)
    params:
        out=lambda w, output: os.path.dirname(output.model),
        launch=launcher(),
        dev=lambda w, input: dev_flag(input),
    threads: train_threads()
    resources:
        **train_resources(),
    log:
        f"{LOGS}/seed{{seed}}/ssrl_{paramspace.wildcard_pattern}.log",
    shell:
        "{params.launch:q} ssrl --job {input.cfg:q} --train {input.train:q}"
        " --noise {input.noise:q} --rir {input.rir:q} {params.dev:q} --init {input.init:q}"
        " --labels {input.labels:q} --out {params.out:q} 2>&1 | tee {log:q}"


rule iterative_round:
    conda:
        "../../envs/conda.yaml"
    input:
        train=store("train"),
        **AUGMENT_STORES,
        **DEV_STORE,
        init=previous_model,
        labels=previous_clustering,
        cfg=job_file("seed{seed}/iterative/e{e}/round{r}"),
    output:
        model=f"{R}/seed{{seed}}/iterative/e{{e}}/round{{r}}/model.pt",
        history=f"{R}/seed{{seed}}/iterative/e{{e}}/round{{r}}/history.json",
        compute=f"{R}/seed{{seed}}/iterative/e{{e}}/round{{r}}/compute.json",
        labels=f"{R}/seed{{seed}}/iterative/e{{e}}/round{{r}}/labels.npz",  # the labels it ended with (AS-norm cohort)
    params:
        out=lambda w, output: os.path.dirname(output.model),
        launch=launcher(),
        dev=lambda w, input: dev_flag(input),
    threads: train_threads()
    resources:
        **train_resources(),
    log:
        f"{LOGS}/seed{{seed}}/iterative_e{{e}}_round{{r}}.log",
    shell:
        "{params.launch:q} iterative --job {input.cfg:q} --train {input.train:q}"
        " --noise {input.noise:q} --rir {input.rir:q} {params.dev:q} --init {input.init:q}"
        " --labels {input.labels:q} --out {params.out:q} 2>&1 | tee {log:q}"


rule supervised:
    conda:
        "../../envs/conda.yaml"
    input:
        train=store("train"),
        **AUGMENT_STORES,
        **DEV_STORE,
        init=f"{R}/seed{{seed}}/dino/model.pt",
        cfg=job_file("seed{seed}/supervised"),
    output:
        model=f"{R}/seed{{seed}}/supervised/model.pt",
        history=f"{R}/seed{{seed}}/supervised/history.json",
        compute=f"{R}/seed{{seed}}/supervised/compute.json",
        labels=f"{R}/seed{{seed}}/supervised/labels.npz",  # the labels it ended with (AS-norm cohort)
    params:
        out=lambda w, output: os.path.dirname(output.model),
        launch=launcher(),
        dev=lambda w, input: dev_flag(input),
    threads: train_threads()
    resources:
        **train_resources(),
    log:
        f"{LOGS}/seed{{seed}}/supervised.log",
    shell:
        "{params.launch:q} supervised --job {input.cfg:q} --train {input.train:q}"
        " --noise {input.noise:q} --rir {input.rir:q} {params.dev:q} --init {input.init:q}"
        " --out {params.out:q} 2>&1 | tee {log:q}"
