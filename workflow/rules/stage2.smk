# Stage 2: SSRL (one run per row of the ablation grid; the "full" row is the main result)
# and the iterative baseline it is compared with (one job per round).


rule ssrl:
    conda:
        "../../envs/conda.yaml"
    input:
        train=store("train"),
        test=store("test"),
        init=f"{R}/dino/model.pt",
        labels=lambda w: f"{R}/cluster/dino_k{initial_k(paramspace.instance(w))}/labels.npz",
        **AUGMENT_STORES,
    output:
        f"{R}/ssrl/{paramspace.wildcard_pattern}/model.pt",
    params:
        cfg=lambda w: cfg_json("ssrl", ssrl_overrides=paramspace.instance(w)),
        out=lambda w, output: os.path.dirname(output[0]),
        name=lambda w: variant_name(paramspace.wildcard_pattern.format(**w)),
        launch=launcher(),
        results=lambda w: config["results_dir"],
    threads: config["runtime"]["threads"]
    resources:
        **train_resources(),
    log:
        f"{LOGS}/ssrl_{paramspace.wildcard_pattern}.log",
    shell:
        "{params.launch} ssrl --cfg '{params.cfg}' --results {params.results}"
        " --train {input.train} --noise {input.noise} --rir {input.rir} --test {input.test}"
        " --init {input.init} --labels {input.labels} --variant {params.name}"
        " --out {params.out} 2>&1 | tee {log}"


rule iterative_round:
    conda:
        "../../envs/conda.yaml"
    input:
        train=store("train"),
        test=store("test"),
        init=lambda w: previous_model(w.r),
        labels=lambda w: f"{R}/cluster/{previous_source(w.r)}_k{config['cluster']['k']}/labels.npz",
        **AUGMENT_STORES,
    output:
        f"{R}/iterative/round{{r}}/model.pt",
    wildcard_constraints:
        r=r"\d+",
    params:
        cfg=lambda w: cfg_json("ssrl", "iterative"),
        out=lambda w, output: os.path.dirname(output[0]),
        launch=launcher(),
        results=lambda w: config["results_dir"],
    threads: config["runtime"]["threads"]
    resources:
        **train_resources(),
    log:
        f"{LOGS}/iterative_round{{r}}.log",
    shell:
        "{params.launch} round --cfg '{params.cfg}' --results {params.results}"
        " --train {input.train} --noise {input.noise} --rir {input.rir} --test {input.test}"
        " --init {input.init} --labels {input.labels} --round {wildcards.r}"
        " --out {params.out} 2>&1 | tee {log}"
