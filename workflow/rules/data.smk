# Data: Kaldi-style folders from the configured source, then wave stores (+ test features).


rule prepare_data:
    conda:
        "../../envs/conda.yaml"
    output:
        directory(f"{R}/data"),
    params:
        data=lambda w: section_json("data"),
    log:
        f"{LOGS}/prepare_data.log",
    shell:
        "python -m ssrl prepare --cfg '{params.data}' --out {output} 2>&1 | tee {log}"


rule wave_store:
    conda:
        "../../envs/conda.yaml"
    input:
        f"{R}/data",
    output:
        directory(f"{R}/store/{{set}}"),
    wildcard_constraints:
        set="train|test|noise|rir",
    params:
        on_bad=config["data"]["on_bad"],
        min_seconds=lambda w: 0.0 if w.set == "rir" else config["data"]["min_seconds"],
    log:
        f"{LOGS}/wave_store_{{set}}.log",
    shell:
        "python -m ssrl store --data {input}/{wildcards.set} --out {output}"
        " --on-bad {params.on_bad} --min-seconds {params.min_seconds} 2>&1 | tee {log}"


rule test_features:
    conda:
        "../../envs/conda.yaml"
    input:
        store("test"),
    output:
        directory(f"{R}/feats/test"),
    params:
        features=lambda w: section_json("features"),
    log:
        f"{LOGS}/test_features.log",
    shell:
        "python -m ssrl feats --cfg '{params.features}' --store {input} --out {output}"
        " 2>&1 | tee {log}"


rule crude_baseline:
    conda:
        "../../envs/conda.yaml"
    input:
        f"{R}/data",
    output:
        f"{R}/baseline.json",
    log:
        f"{LOGS}/crude_baseline.log",
    shell:
        "python -m ssrl baseline --data {input}/test --out {output} 2>&1 | tee {log}"
