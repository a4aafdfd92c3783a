# Grid search without selection bias (ckd/search.py): a study's `search:` block gives, per method, a
# grid over its settings and the search seeds. Each (task, student, method, grid point, search seed)
# is one `ckd distill` job under search/runs/; with `selection: carve` it trains on the training set
# minus a split carved from it (data.selection_split) and is scored on that split only, never on dev.
# `ckd select` picks the best point per (task, student, method) into search/selected/; the method's
# runs of the main grid (the report seeds, full training set) then run with it (`ckd distill -c`).
# Search runs are ordinary jobs: a cluster runs them in parallel, an interrupted search resumes.
# The plan and helpers: search_common.smk.


rule search_distill:
    # one grid point x search seed (or a chained method's first stage) of a search
    input:
        unpack(distill_inputs),
    output:
        record=f"{SEARCH_RUN_DIR}/record.json",
    log:
        f"{LOGS}/search/{{task}}/{{student}}/{{method}}/{{point}}/seed{{seed}}.log",
    benchmark:
        f"{STUDY_DIR}/{paths.BENCHMARK['search_distill']}"
    retries: config.get("retries")
    group:
        RUN_GROUP  # distill.smk
    conda:
        "../../environment.yml"
    threads: resources_of("distill")["threads"]
    resources:
        mem_mb=scaled("distill", "mem_mb"),
        runtime=scaled("distill", "runtime"),
        gpu=gpus_of("distill"),
        runs=1,  # as in rule distill: one run at a time in a grouped allocation
    params:
        args=distill_args,
        launch=ckd_launcher("distill"),
        threads=threads_per_process("distill"),
    shell:
        "{params.launch} distill {params.args} train.threads={params.threads} > {log} 2>&1"


rule search_teacher_logits:
    # the teacher's logits on the training set minus the carved selection split
    input:
        teacher=f"{TEACHER_DIR}/record.json",
    output:
        logits=SEARCH_LOGITS,
    log:
        f"{LOGS}/teachers/{{task}}/{{teacher}}/seed{{seed}}.search-logits.log",
    benchmark:
        f"{STUDY_DIR}/{paths.BENCHMARK['search_teacher_logits']}"
    retries: config.get("retries")
    conda:
        "../../environment.yml"
    threads: resources_of("cache_logits")["threads"]
    resources:
        mem_mb=scaled("cache_logits", "mem_mb"),
        runtime=scaled("cache_logits", "runtime"),
        gpu=min(1, gpus_of("cache_logits")),
    params:
        args=lambda wildcards: _shell(
            cache_logits_overrides(wildcards, search_data(DEFAULT_POINT))
        ),
        hub_env=HUB_ENV,
    shell:
        "{params.hub_env}OMP_NUM_THREADS={threads} ckd cache-logits {params.args} --out {output.logits} > {log} 2>&1"


rule search_plan:
    output:
        SEARCH_PLAN,
    log:
        f"{LOGS}/search/{{task}}/{{student}}/{{method}}.plan.log",
    localrule: True
    params:
        plan=search_plan,
    run:
        atomic_write_json(output[0], params.plan)


rule select:
    # the best grid point of one (task, student, method): its settings for the report runs
    input:
        plan=SEARCH_PLAN,
        records=lambda wildcards: [
            search_record(
                wildcards.task, wildcards.student, wildcards.method, point.name, seed
            )
            for point in SEARCHED[wildcards.method]
            for seed in SEARCH_SEEDS
        ],
    output:
        config=f"{SELECTED}.yaml",
        summary=f"{SELECTED}.json",
    log:
        f"{LOGS}/search/{{task}}/{{student}}/{{method}}.select.log",
    localrule: True
    conda:
        "../../environment.yml"
    params:
        score=SEARCH_SCORE,
    shell:
        "ckd select --plan {input.plan:q} --score {params.score} --out-config {output.config:q} --out {output.summary:q} > {log} 2>&1"
