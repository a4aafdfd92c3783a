# Tables and plots: pure functions of the run records (ckd aggregate, ckd plots); both leave out
# the records expected.json marks stale or does not plan (ckd.records.study_records).


rule expected_runs:
    # The grid the config asks for, so that missing.md lists runs that never finished. A searched
    # method's runs get their config fingerprint once its setting is selected (search.smk): the list
    # is computed again when the job runs, after the selections; params make a changed grid re-run it.
    input:
        SELECTED_CONFIGS,
    output:
        EXPECTED,
    log:
        f"{LOGS}/expected_runs.log",
    localrule: True
    params:
        runs=expected_runs(),
    run:
        atomic_write_json(output[0], expected_runs())


rule aggregate:
    input:
        expected=EXPECTED,
        records=TEACHER_RECORDS + RUN_RECORDS,
        selected=SELECTED_SUMMARIES,
    output:
        **table_outputs(),
        settings=f"{TABLES_DIR}/aggregate.json",  # what the notebooks read (ckd.aggregate_settings)
        scores=f"{TABLES_DIR}/scores.csv",  # the tidy runs frame (ckd.frame)
    log:
        f"{LOGS}/aggregate.log",
    localrule: True
    conda:
        "../../environment.yml"
    threads: resources_of("aggregate")["threads"]
    resources:
        mem_mb=resources_of("aggregate")["mem_mb"],
        runtime=resources_of("aggregate")["runtime"],
    params:
        study_dir=lambda wildcards, input: Path(input.expected).parent,
        out=lambda wildcards, output: Path(output.main_csv).parent,
        score=config["aggregate"]["score"],
        baseline=config["aggregate"]["baseline"],
        bootstrap=config["aggregate"]["bootstrap"],
        alternative=config["aggregate"]["alternative"],
    shell:
        "ckd aggregate --study-dir {params.study_dir:q} --out {params.out:q} --expected {input.expected:q}"
        " --score {params.score} --baseline {params.baseline:q} --bootstrap {params.bootstrap}"
        " --alternative {params.alternative} > {log} 2>&1"


rule plots:
    input:
        expected=EXPECTED,
        records=TEACHER_RECORDS + RUN_RECORDS,
    output:
        report(
            directory(PLOTS_DIR),
            patterns=["{name}.png"],
            caption="../report/plots.rst",
            category="Plots",
            labels={"figure": "{name}"},
        ),
    log:
        f"{LOGS}/plots.log",
    localrule: True
    conda:
        "../../environment.yml"
    threads: resources_of("aggregate")["threads"]
    resources:
        mem_mb=resources_of("aggregate")["mem_mb"],
        runtime=resources_of("aggregate")["runtime"],
    params:
        study_dir=lambda wildcards, output: Path(output[0]).parent,
        score=config["aggregate"]["score"],
    shell:
        "ckd plots --study-dir {params.study_dir:q} --out {output:q} --expected {input.expected:q}"
        " --score {params.score} > {log} 2>&1"
