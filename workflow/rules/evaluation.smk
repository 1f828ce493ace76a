# Evaluation: embeddings of the test set for every system, scores and metrics, tables, plots.
# A "system" is a trained model folder: dino, iterative/roundN, ssrl/<grid point>.


rule embed_test:
    conda:
        "../../envs/conda.yaml"
    input:
        model=f"{R}/{{system}}/model.pt",
        feats=f"{R}/feats/test",
    output:
        f"{R}/eval/{{system}}/emb_test.npz",
    threads: config["runtime"]["threads"]
    log:
        f"{LOGS}/eval/{{system}}/embed_test.log",
    shell:
        "python -m ssrl embed --model {input.model} --feats {input.feats}"
        " --threads {threads} --out {output} 2>&1 | tee {log}"


rule embed_train:
    conda:
        "../../envs/conda.yaml"
    input:
        model=f"{R}/{{system}}/model.pt",
        store=store("train"),
    output:
        f"{R}/eval/{{system}}/emb_train.npz",
    threads: config["runtime"]["threads"]
    log:
        f"{LOGS}/eval/{{system}}/embed_train.log",
    shell:
        "python -m ssrl embed --model {input.model} --data {input.store}"
        " --threads {threads} --out {output} 2>&1 | tee {log}"


rule score:
    conda:
        "../../envs/conda.yaml"
    input:
        emb=f"{R}/eval/{{system}}/emb_test.npz",
        data=f"{R}/data",
        norm=lambda w: (
            []
            if NORM == "none"
            else {
                "train": f"{R}/eval/{w.system}/emb_train.npz",
                "labels": system_labels(w.system),
            }
        ),
    output:
        metrics=f"{R}/eval/{{system}}/metrics.json",
    params:
        norm=(
            lambda w, input: ""
            if NORM == "none"
            else f"--norm {NORM} --train-embeddings {input.train} --labels {input.labels}"
            f" --top-n {config['eval']['asnorm_top_n']}"
        ),
        scores=lambda w, output: os.path.dirname(output.metrics),
    log:
        f"{LOGS}/eval/{{system}}/score.log",
    shell:
        "python -m ssrl score --embeddings {input.emb} --test-dir {input.data}/test"
        " {params.norm} --scores-dir {params.scores} --out {output.metrics} 2>&1 | tee {log}"


rule tables:
    conda:
        "../../envs/conda.yaml"
    input:
        **all_results(),
    output:
        main_csv=f"{R}/tables/main.csv",
        main_md=report(f"{R}/tables/main.md", caption="../report/main_table.rst",
                       category="Tables"),
        ablation_csv=f"{R}/tables/ablation.csv",
        ablation_md=report(f"{R}/tables/ablation.md", caption="../report/ablation_table.rst",
                           category="Tables"),
    params:
        cfg=lambda w: json.dumps({"config": config, "variants": VARIANT_DIRS,
                                  "systems": SYSTEMS}),
        out=lambda w, output: os.path.dirname(output.main_csv),
        root=lambda w, output: os.path.dirname(os.path.dirname(output[0])),
    log:
        f"{LOGS}/tables.log",
    shell:
        "rm -rf {params.out}/partial && "  # what a failed --keep-going run left
        "python -m ssrl tables --cfg '{params.cfg}' --root {params.root} --out-dir {params.out}"
        " 2>&1 | tee {log}"


rule plots:
    conda:
        "../../envs/conda.yaml"
    input:
        **all_results(),
    output:
        trajectories=report(f"{R}/plots/trajectories.png",
                            caption="../report/trajectories.rst", category="Figures"),
        det=report(f"{R}/plots/det.png", caption="../report/det.rst", category="Figures"),
    params:
        cfg=lambda w: json.dumps({"config": config, "variants": VARIANT_DIRS,
                                  "systems": SYSTEMS}),
        out=lambda w, output: os.path.dirname(output.det),
        root=lambda w, output: os.path.dirname(os.path.dirname(output[0])),
    log:
        f"{LOGS}/plots.log",
    shell:
        "rm -rf {params.out}/partial && "  # what a failed --keep-going run left
        "python -m ssrl plots --cfg '{params.cfg}' --root {params.root} --out-dir {params.out}"
        " 2>&1 | tee {log}"


rule export_ssrl:
    conda:
        "../../envs/conda.yaml"
    input:
        f"{R}/{MAIN_SSRL}/model.pt",
    output:
        torchscript=f"{R}/export/encoder.ts",
        onnx=f"{R}/export/encoder.onnx",
    params:
        out=lambda w, output: os.path.dirname(output.onnx),
    log:
        f"{LOGS}/export_ssrl.log",
    shell:
        "python -m ssrl export --model {input} --out-dir {params.out} 2>&1 | tee {log}"
