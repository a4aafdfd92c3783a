# Teachers: fine-tune per (task, teacher, seed); optionally cache their training-set logits and (study
# setting teacher_cache) what the methods read from them, once per (task, teacher, seed).
#
# Resources come from the study's `resources.<kind>` (threads, mem_mb, runtime, gpu). A retried job
# (--retries, or the study's `retries`) asks for attempt x mem_mb and runtime, and resumes from its
# last checkpoint. gpu: N > 1 runs the job under torchrun, one process per GPU (ckd/distributed.py).
# GPU jobs start through workflow/scripts/gpu-pin.sh: on one machine it pins each job to GPUs of its
# own (CUDA_VISIBLE_DEVICES); under SLURM the scheduler has already done so. The helpers
# (scaled, gpus_of, ckd_launcher, threads_per_process) are at the end of common.smk.


rule finetune_teacher:
    input:
        unpack(hub_inputs),
    output:
        record=f"{TEACHER_DIR}/record.json",
    log:
        f"{LOGS}/teachers/{{task}}/{{teacher}}/seed{{seed}}.log",
    benchmark:
        f"{STUDY_DIR}/{paths.BENCHMARK['finetune_teacher']}"  # ckd.cost
    retries: config.get("retries")
    conda:
        "../../environment.yml"
    threads: resources_of("finetune")["threads"]
    resources:
        mem_mb=scaled("finetune", "mem_mb"),
        runtime=scaled("finetune", "runtime"),
        gpu=gpus_of("finetune"),
    params:
        args=finetune_args,
        launch=ckd_launcher("finetune"),
        threads=threads_per_process("finetune"),
    shell:
        "{params.launch} finetune {params.args} train.threads={params.threads} > {log} 2>&1"


rule cache_teacher_logits:
    input:
        teacher=f"{TEACHER_DIR}/record.json",
    output:
        logits=TEACHER_LOGITS,
    log:
        f"{LOGS}/teachers/{{task}}/{{teacher}}/seed{{seed}}.logits.log",
    benchmark:
        f"{STUDY_DIR}/{paths.BENCHMARK['cache_teacher_logits']}"
    retries: config.get("retries")
    conda:
        "../../environment.yml"
    threads: resources_of("cache_logits")["threads"]
    resources:
        mem_mb=scaled("cache_logits", "mem_mb"),
        runtime=scaled("cache_logits", "runtime"),
        gpu=min(1, gpus_of("cache_logits")),  # one process: ckd cache-logits uses one device
    params:
        args=cache_logits_args,
        hub_env=HUB_ENV,
    shell:
        # cache-logits does not set torch threads itself
        "{params.hub_env}OMP_NUM_THREADS={threads} ckd cache-logits {params.args} --out {output.logits} > {log} 2>&1"


rule cache_teacher:
    input:
        teacher=f"{TEACHER_DIR}/record.json",
    output:
        manifest=TEACHER_CACHE,  # written last: the folder beside it is complete
    log:
        f"{LOGS}/teachers/{{task}}/{{teacher}}/seed{{seed}}.teacher_cache.log",
    benchmark:
        f"{STUDY_DIR}/{paths.BENCHMARK['cache_teacher']}"
    retries: config.get("retries")
    conda:
        "../../environment.yml"
    threads: resources_of("cache_logits")["threads"]
    resources:
        mem_mb=scaled("cache_logits", "mem_mb"),
        runtime=scaled("cache_logits", "runtime"),
        gpu=min(1, gpus_of("cache_logits")),  # one process: ckd cache-teacher uses one device
    params:
        args=cache_teacher_args,
        hub_env=HUB_ENV,
        folder=lambda wildcards: str(Path(TEACHER_CACHE.format(**wildcards)).parent),
    shell:
        # a killed build resumes from its finished shards (the folder is not an output Snakemake deletes)
        "{params.hub_env}OMP_NUM_THREADS={threads} ckd cache-teacher {params.args} --out {params.folder} > {log} 2>&1"
