# ckd-repro: teachers -> (teacher logits) -> distilled students -> tables, plots -> report.
#   snakemake --cores 2                                  the smoke study (embedded default)
#   snakemake --cores 2 --configfile config/paper.yaml   another study
#   snakemake --configfile config/paper.yaml --report results/paper/report.html
from snakemake.utils import min_version, update_config, validate

min_version("8.0")


configfile: "config/smoke.yaml"


# A study file given with --configfile is a whole study: it replaces the embedded default instead
# of being merged into it (as --replace-workflow-config would); --config values still apply on top.
if workflow.overwrite_configfiles:
    config.clear()
    update_config(config, workflow.config_settings.overwrite_config)


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/general_common.smk"
include: "workflow/rules/search_common.smk"
include: "workflow/rules/prefetch.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/distill.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/general.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/cost.smk"


# DynaBERT (docs/dynabert.md): only in studies that ask for it
if config.get("dynabert"):

    include: "workflow/rules/dynabert.smk"


report: "workflow/report/workflow.rst"


onstart:
    print(data_note())


# The run records are targets too: a deleted record.json is re-made (and the tables and plots after
# it) even though the tables that read it are still present.
rule all:
    default_target: True
    input:
        TEACHER_RECORDS,
        RUN_RECORDS,
        TABLES,
        PLOTS_DIR,
        COST_TABLES,
        DYNABERT_TARGETS if config.get("dynabert") else [],


onerror:
    # With --keep-going the finished runs still give tables: failed runs show as missing cells and
    # are listed, with their error line, in missing.md.
    partial_tables()
