# Evaluation: test-set embeddings of every system (a trained model folder, or the classical
# baseline), their scores with bootstrap intervals, the tables, plots and the exported model;
# with a scaling grid (config/scaling.yaml) also its per-point table and figure.
# The test set is read as its feature store, which also carries its trial lists and speakers
# (its wave store is temp(): data.smk).


rule embed_test:
    conda:
        "../../envs/conda.yaml"
    input:
        model=f"{R}/{{system}}/model.pt",
        feats=f"{R}/feats/test",
        cfg=job_file("embed"),
    output:
        f"{R}/eval/{{system}}/emb_test.npz",
    wildcard_constraints:
        system=TRAINED,
    threads: config["runtime"]["threads"]
    resources:
        **resources(),
    log:
        f"{LOGS}/eval/{{system}}/embed_test.log",
    shell:
        "python -m ssrl embed --job {input.cfg:q} --model {input.model:q}"
        " --feats {input.feats:q} --threads {threads:q} --out {output:q} 2>&1 | tee {log:q}"


rule embed_train:
    conda:
        "../../envs/conda.yaml"
    input:
        model=f"{R}/{{system}}/model.pt",
        store=store("train"),
        cfg=job_file("embed"),
    output:
        f"{R}/eval/{{system}}/emb_train.npz",
    wildcard_constraints:
        system=TRAINED,
    threads: config["runtime"]["threads"]
    resources:
        **resources(),
    log:
        f"{LOGS}/eval/{{system}}/embed_train.log",
    shell:
        "python -m ssrl embed --job {input.cfg:q} --model {input.model:q}"
        " --data {input.store:q} --threads {threads:q} --out {output:q} 2>&1 | tee {log:q}"


rule score:
    conda:
        "../../envs/conda.yaml"
    input:
        unpack(cohort_inputs),
        emb=f"{R}/eval/{{system}}/emb_test.npz",
        test=TEST_LISTS,
        cfg=job_file("score"),
    output:
        metrics=f"{R}/eval/{{system}}/metrics.json",
    wildcard_constraints:
        system=ANY_SYSTEM,
    params:
        norm=norm_flags,
        run=lambda w: f"{R}/{w.system}",
    threads: config["runtime"]["threads"]
    resources:
        **resources(),
    log:
        f"{LOGS}/eval/{{system}}/score.log",
    shell:
        "python -m ssrl score --job {input.cfg:q} --embeddings {input.emb:q}"
        " --store {input.test:q} {params.norm:q} --threads {threads:q}"
        " --run-dir {params.run:q} --out {output.metrics:q} 2>&1 | tee {log:q}"


rule tables:
    conda:
        "../../envs/conda.yaml"
    input:
        all_results(),
        test=TEST_LISTS,
        cfg=job_file("report"),
    output:
        main_csv=f"{R}/tables/main.csv",
        main_paired=f"{R}/tables/main_paired.csv",
        ablation_paired=f"{R}/tables/ablation_paired.csv",
        main_md=f"{R}/tables/main.md",
        ablation_csv=f"{R}/tables/ablation.csv",
        ablation_md=f"{R}/tables/ablation.md",
        main_html=report(f"{R}/tables/main.html", caption="../report/main_table.rst",
                         category="Tables", labels={"table": "main results"}),
        ablation_html=report(f"{R}/tables/ablation.html",
                             caption="../report/ablation_table.rst", category="Tables",
                             labels={"table": "ablation grid"}),
    params:
        out=lambda w, output: os.path.dirname(output.main_csv),
        root=lambda w, output: results_root(output),
    threads: config["runtime"]["threads"]
    resources:
        **resources(),
    log:
        f"{LOGS}/tables.log",
    shell:
        "rm -rf {params.out:q}/partial && "  # what a failed --keep-going run left
        "python -m ssrl tables --job {input.cfg:q} --root {params.root:q}"
        " --out-dir {params.out:q} --threads {threads:q} 2>&1 | tee {log:q}"


rule plots:
    conda:
        "../../envs/conda.yaml"
    input:
        all_results(),
        cfg=job_file("report"),
    output:
        dynamics=report(f"{R}/plots/dynamics.png", caption="../report/dynamics.rst",
                        category="Figures", labels={"figure": "SSRL dynamics"}),
        trajectories=report(f"{R}/plots/trajectories.png",
                            caption="../report/trajectories.rst", category="Figures",
                            labels={"figure": "ablation trajectories"}),
        det=report(f"{R}/plots/det.png", caption="../report/det.rst", category="Figures",
                   labels={"figure": "DET curves"}),
    params:
        out=lambda w, output: os.path.dirname(output.det),
        root=lambda w, output: results_root(output),
    resources:
        **resources(),
    log:
        f"{LOGS}/plots.log",
    shell:
        "rm -rf {params.out:q}/partial && "  # what a failed --keep-going run left
        "python -m ssrl plots --job {input.cfg:q} --root {params.root:q}"
        " --out-dir {params.out:q} 2>&1 | tee {log:q}"


rule scaling:
    conda:
        "../../envs/conda.yaml"
    input:
        all_results(),
        test=TEST_LISTS,
        cfg=job_file("scaling"),
    output:
        md=f"{R}/scaling/scaling.md",
        csv=f"{R}/scaling/scaling.csv",
        dynamics=f"{R}/scaling/dynamics.csv",
        png=report(f"{R}/scaling/scaling.png", caption="../report/scaling.rst",
                   category="Figures", labels={"figure": "scaling"}),
    params:
        out=lambda w, output: os.path.dirname(output.md),
        root=lambda w, output: results_root(output),
    threads: config["runtime"]["threads"]
    resources:
        **resources(),
    log:
        f"{LOGS}/scaling.log",
    shell:
        "rm -rf {params.out:q}/partial && "  # what a failed --keep-going run left
        "python -m ssrl scaling --job {input.cfg:q} --root {params.root:q}"
        " --out-dir {params.out:q} --threads {threads:q} 2>&1 | tee {log:q}"


rule export_ssrl:
    conda:
        "../../envs/conda.yaml"
    input:
        f"{R}/seed{SEEDS[0]}/ssrl/{VARIANT_DIRS[FULL]}/model.pt",
    output:
        torchscript=f"{R}/export/encoder.ts",
        onnx=f"{R}/export/encoder.onnx",
        wave_onnx=f"{R}/export/wave/encoder.onnx",
    params:
        out=lambda w, output: os.path.dirname(output.onnx),
        run=lambda w, input: os.path.dirname(input[0]),
    resources:
        **resources(),
    log:
        f"{LOGS}/export_ssrl.log",
    shell:
        "(python -m ssrl export --model {input:q} --out-dir {params.out:q}"
        " --run-dir {params.run:q} && python -m ssrl export --with-frontend --model {input:q}"
        " --out-dir {params.out:q}/wave --run-dir {params.run:q}) 2>&1 | tee {log:q}"
