# Teachers: fine-tune per (task, teacher, seed); optionally cache their training-set logits.


rule finetune_teacher:
    output:
        record=f"{TEACHER_DIR}/record.json",
    log:
        f"{LOGS}/teachers/{{task}}/{{teacher}}/seed{{seed}}.log",
    params:
        args=finetune_args,
    threads: resources_of("finetune")["threads"]
    resources:
        mem_mb=resources_of("finetune")["mem_mb"],
        runtime=resources_of("finetune")["runtime"],
        gpu=resources_of("finetune")["gpu"],
    retries: config["retries"]
    conda:
        "../../environment.yml"
    shell:
        "ckd finetune {params.args} train.threads={threads} > {log} 2>&1"


rule cache_teacher_logits:
    input:
        teacher=f"{TEACHER_DIR}/record.json",
    output:
        logits=TEACHER_LOGITS,
    log:
        f"{LOGS}/teachers/{{task}}/{{teacher}}/seed{{seed}}.logits.log",
    params:
        args=cache_logits_args,
    threads: resources_of("cache_logits")["threads"]
    resources:
        mem_mb=resources_of("cache_logits")["mem_mb"],
        runtime=resources_of("cache_logits")["runtime"],
        gpu=resources_of("cache_logits")["gpu"],
    retries: config["retries"]
    conda:
        "../../environment.yml"
    shell:
        # cache-logits does not set torch threads itself
        "OMP_NUM_THREADS={threads} ckd cache-logits {params.args} --out {output.logits} > {log} 2>&1"
