# General (task-agnostic) distillation rules: pack_corpus, general_distill (their inputs, arguments
# and the student specs that start from a general model: general_common.smk).


if GENERAL:

    rule pack_corpus:
        input:
            unpack(hub_inputs),
        output:
            manifest=f"{CORPUS_DIR}/manifest.json",
        log:
            f"{STUDY_DIR}/{paths.CORPUS_LOG}",
        wildcard_constraints:
            corpus=_alternatives(CORPORA),
            tokenizer=_alternatives(TOKENIZER_REFS),
            length=r"\d+",
        conda:
            "../../environment.yml"
        threads: resources_of("pack_corpus")["threads"]
        resources:
            mem_mb=scaled("pack_corpus", "mem_mb"),
            runtime=scaled("pack_corpus", "runtime"),
        params:
            args=pack_args,
            # the tokenizer as prefetched (PACK_ENV); the hub datasets of a corpus are streamed by this job
            env=PACK_ENV,
        shell:
            "{params.env}ckd pack-corpus {params.args} > {log} 2>&1"

    rule general_distill:
        input:
            unpack(hub_inputs),
            corpus=lambda wildcards: f"{general_pack_dir(wildcards.general)}/manifest.json",
        output:
            record=f"{GENERAL_DIR}/record.json",
        log:
            f"{STUDY_DIR}/{paths.GENERAL_LOG}",
        wildcard_constraints:
            general=_alternatives(GENERAL),
        retries: config.get("retries")
        conda:
            "../../environment.yml"
        threads: resources_of("general_distill")["threads"]
        resources:
            mem_mb=scaled("general_distill", "mem_mb"),
            runtime=scaled("general_distill", "runtime"),
            gpu=gpus_of("general_distill"),
        params:
            args=general_args,
            launch=ckd_launcher("general_distill"),
            threads=threads_per_process("general_distill"),
        shell:
            "{params.launch} general-distill {params.args} train.threads={params.threads} > {log} 2>&1"
