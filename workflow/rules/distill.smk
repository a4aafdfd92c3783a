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
    params:
        args=distill_args,
    threads: resources_of("distill")["threads"]
    resources:
        mem_mb=resources_of("distill")["mem_mb"],
        runtime=resources_of("distill")["runtime"],
        gpu=resources_of("distill")["gpu"],
    retries: config["retries"]
    conda:
        "../../environment.yml"
    shell:
        "ckd distill {params.args} train.threads={threads} > {log} 2>&1"
