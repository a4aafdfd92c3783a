# Measured cost (ckd.cost): the benchmark files of the training jobs (`benchmark:` in teacher.smk,
# distill.smk, search.smk; ckd.paths.BENCHMARK) and the run records as tables/cost.{md,csv},
# cost_jobs.csv and cost.png. After the records: every training job has written its benchmark file by
# then. `ckd estimate --measured <this study>` reads them to plan another study.

COST_TABLES = [
    f"{TABLES_DIR}/{name}"
    for name in ("cost.md", "cost.csv", "cost_jobs.csv", "cost.png")
]


rule cost:
    input:
        records=TEACHER_RECORDS + RUN_RECORDS,
    output:
        COST_TABLES,
    log:
        f"{LOGS}/cost.log",
    localrule: True
    run:
        from ckd.cost import write_cost

        with open(log[0], "w") as stream:
            write_cost(
                STUDY_DIR,
                TABLES_DIR,
                log=lambda line: print(line, file=stream, flush=True),
            )
