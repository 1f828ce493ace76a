# Data: one Kaldi-style folder per set (train, dev, test, noise, rir) from the configured source,
# each its own job (the test set is synthesised while DINO trains), then wave stores (+ features
# of the evaluation sets), and the classical floor's embeddings of the test set. A user's set is
# an input through its digest (common.smk): an edited list or audio file reruns that set's
# preparation and what depends on it, nothing else.
#
# Audio is kept once: the built-in corpus's synthesised WAVs are temp() once their wave store
# holds them, and the test set's wave store is temp() once its features (which carry its trial
# lists and speakers) and the floor are computed; Snakemake remakes either only if a job that
# reads it has to run again (`--notemp` keeps them).


rule prepare_data:
    conda:
        "../../envs/conda.yaml"
    input:
        cfg=job_file("prepare/{set}"),
        data=data_inputs,
    output:
        prepared_folder(f"{R}/data/{{set}}"),
    resources:
        **resources(),
    log:
        f"{LOGS}/prepare_data_{{set}}.log",
    shell:
        "python -m ssrl prepare --job {input.cfg:q} --set {wildcards.set:q} --out {output:q}"
        " 2>&1 | tee {log:q}"


rule wave_store:
    conda:
        "../../envs/conda.yaml"
    input:
        data=f"{R}/data/{{set}}",
        cfg=job_file("store/{set}"),
    output:
        directory(f"{R}/store/{{set}}"),
    wildcard_constraints:
        set="train|dev|noise|rir",  # the test set's store: rule test_wave_store
    threads: config["data"]["workers"]
    resources:
        **resources(),
    log:
        f"{LOGS}/wave_store_{{set}}.log",
    shell:
        "python -m ssrl wave-store --job {input.cfg:q} --data {input.data:q}"
        " --workers {threads:q} --out {output:q} 2>&1 | tee {log:q}"


use rule wave_store as test_wave_store with:
    input:
        data=f"{R}/data/test",
        cfg=job_file("store/test"),
    output:
        temp(directory(f"{R}/store/test")),
    log:
        f"{LOGS}/wave_store_test.log",


rule feature_store:
    conda:
        "../../envs/conda.yaml"
    input:
        store=store("{set}"),
        cfg=job_file("features"),
    output:
        directory(f"{R}/feats/{{set}}"),
    wildcard_constraints:
        set="dev|test",
    resources:
        **resources(),
    log:
        f"{LOGS}/feature_store_{{set}}.log",
    shell:
        "python -m ssrl feature-store --job {input.cfg:q} --store {input.store:q}"
        " --out {output:q} 2>&1 | tee {log:q}"


rule baseline:
    conda:
        "../../envs/conda.yaml"
    input:
        store=store("test"),
        cfg=job_file("baseline"),
    output:
        f"{R}/eval/baseline/emb_test.npz",
    params:
        run=f"{R}/baseline",
    resources:
        **resources(),
    log:
        f"{LOGS}/baseline.log",
    shell:
        "python -m ssrl baseline --job {input.cfg:q} --store {input.store:q} --out {output:q}"
        " --run-dir {params.run:q} 2>&1 | tee {log:q}"
