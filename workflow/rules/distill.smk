# Students: one job per (task, student, method, seed). A chained method (TinyBERT) is two jobs:
# its first stage is a run of its own under runs/<task>/<student>/<stage method>/ and the second
# stage starts from it (init_from_run).
#
# Job grouping on a cluster (workflow/profiles/slurm; README, "Running on a cluster"): with `--group-components
# runs=N` (N > 1) the runs a study expects to be short (resources.distill.runtime at most
# SHORT_RUN_MINUTES) are the group "runs", and Snakemake bundles N of them into one allocation. The
# resource `runs` (scope local, capped at 1 by the profile) makes an allocation run them one after
# another: it asks for one run's CPUs, memory and GPUs and the sum of their runtimes. Longer runs, and
# all runs off a cluster, are jobs of their own.
SHORT_RUN_MINUTES = 240
# the group of a run: a function, because Snakemake knows --group-components only after reading the workflow
RUN_GROUP = lambda wildcards: (
    "runs"
    if workflow.group_settings.group_components.get("runs", 1) > 1
    and resources_of("distill")["runtime"] <= SHORT_RUN_MINUTES
    else None
)


rule distill:
    input:
        unpack(distill_inputs),
    output:
        record=f"{RUN_DIR}/record.json",
    log:
        f"{LOGS}/runs/{{task}}/{{student}}/{{method}}/seed{{seed}}.log",
    benchmark:
        f"{STUDY_DIR}/{paths.BENCHMARK['distill']}"  # ckd.cost
    retries: config.get("retries")
    group:
        RUN_GROUP
    conda:
        "../../environment.yml"
    threads: resources_of("distill")["threads"]
    resources:
        mem_mb=scaled("distill", "mem_mb"),
        runtime=scaled("distill", "runtime"),
        gpu=gpus_of("distill"),
        runs=1,  # a grouped allocation runs one run at a time (workflow/profiles/slurm)
    params:
        args=distill_args,
        launch=ckd_launcher("distill"),
        threads=threads_per_process("distill"),
    shell:
        # ckd_launcher, scaled: the end of common.smk
        "{params.launch} distill {params.args} train.threads={params.threads} > {log} 2>&1"
