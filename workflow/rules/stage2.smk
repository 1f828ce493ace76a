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
        labels=lambda w: f"{R}/seed{w.seed}/cluster/dino_k"
        f"{variant_k(VARIANT_OF_DIR[paramspace.wildcard_pattern.format(**w)])}/labels.npz",
        cfg=lambda w: job_file(f"seed{w.seed}/ssrl/{paramspace.wildcard_pattern.format(**w)}"),
    output:
        model=f"{R}/seed{{seed}}/ssrl/{paramspace.wildcard_pattern}/model.pt",
        history=f"{R}/seed{{seed}}/ssrl/{paramspace.wildcard_pattern}/history.json",
        compute=f"{R}/seed{{seed}}/ssrl/{paramspace.wildcard_pattern}/compute.json",
    wildcard_constraints:
        seed=r"\d+",
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
        init=lambda w: previous_model(w.seed, w.e, w.r),
        labels=lambda w: previous_clustering(w.seed, w.e, w.r),
        cfg=lambda w: job_file(f"seed{w.seed}/iterative/e{w.e}/round{w.r}"),
    output:
        model=f"{R}/seed{{seed}}/iterative/e{{e}}/round{{r}}/model.pt",
        history=f"{R}/seed{{seed}}/iterative/e{{e}}/round{{r}}/history.json",
        compute=f"{R}/seed{{seed}}/iterative/e{{e}}/round{{r}}/compute.json",
    wildcard_constraints:
        seed=r"\d+",
        e=r"\d+",
        r=r"\d+",
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
        cfg=lambda w: job_file(f"seed{w.seed}/supervised"),
    output:
        model=f"{R}/seed{{seed}}/supervised/model.pt",
        history=f"{R}/seed{{seed}}/supervised/history.json",
        compute=f"{R}/seed{{seed}}/supervised/compute.json",
    wildcard_constraints:
        seed=r"\d+",
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
