# Students: one job per (task, student, method, seed). A chained method (TinyBERT) is two jobs:
# its first stage is a run of its own under runs/<task>/<student>/<stage method>/ and the second
# stage starts from it (init_from_run).


rule distill:
    input:
        unpack(distill_inputs),
    output:
        record=f"{RUN_DIR}/record.json",
    log:
        f"{LOGS}/runs/{{task}}/{{student}}/{{method}}/seed{{seed}}.log",
    retries: config.get("retries")
    conda:
        "../../environment.yml"
    threads: resources_of("distill")["threads"]
    resources:
        mem_mb=scaled("distill", "mem_mb"),
        runtime=scaled("distill", "runtime"),
        gpu=gpus_of("distill"),
    params:
        args=distill_args,
        launch=ckd_launcher("distill"),
        threads=threads_per_process("distill"),
    shell:
        # ckd_launcher, scaled: the end of common.smk
        "{params.launch} distill {params.args} train.threads={params.threads} > {log} 2>&1"
