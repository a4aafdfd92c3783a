# DynaBERT (docs/dynabert.md), included by the Snakefile when the study has a `dynabert:` section:
#   teacher -> rewire (per teacher seed) -> width stage (DynaBERT_W) -> depth stage (DynaBERT), per
#   objective and seed -> dev scores of every (width, depth) and the exported sub-networks (parameters,
#   CPU latency) -> per-task tables and plots (ckd dynabert report).
# Paths: ckd/paths.py (DYNABERT_*). Resources: the study's resources.dynabert (else resources.distill).
from ckd.dynabert.config import DEFAULT_DEPTHS, DEFAULT_WIDTHS

DYN = config["dynabert"]
DYN_TEACHER = DYN.get("teacher") or next(iter(config["teachers"]))
DYN_OBJECTIVES = list(DYN.get("objectives") or ["dynabert", "dynabert-ckd"])
DYN_TASKS = list(DYN.get("tasks") or config["tasks"])
DYN_SEEDS = list(DYN.get("seeds") or config["seeds"])
DYN_REWIRED = f"{STUDY_DIR}/{paths.DYNABERT_REWIRED}"
DYN_WIDTH = f"{STUDY_DIR}/{paths.DYNABERT_STAGE}".replace("{stage}", "width")
DYN_DEPTH = f"{STUDY_DIR}/{paths.DYNABERT_STAGE}".replace("{stage}", "depth")
DYN_EVAL = f"{STUDY_DIR}/{paths.DYNABERT_EVAL}"
DYN_EXPORT = f"{STUDY_DIR}/{paths.DYNABERT_EXPORT}"
DYN_REPORT = f"{STUDY_DIR}/{paths.DYNABERT_REPORT}"
DYN_LOG = f"{STUDY_DIR}/{paths.DYNABERT_LOG}"

if DYN_TEACHER not in config["teachers"]:
    _fail(
        f"dynabert.teacher: {DYN_TEACHER!r} is not one of the teachers ({', '.join(config['teachers'])})"
    )


def _dyn_resources(name):
    spec = config["resources"].get("dynabert") or config["resources"]["distill"]
    return spec[name]


def _dyn_gpus():
    """0 or 1: the stages run in one process (a study asking for more GPUs gets one per job)."""
    spec = config["resources"].get("dynabert") or config["resources"]["distill"]
    return min(1, int(spec.get("gpu") or 0))


def _dyn_launcher():
    """`ckd` (through gpu-pin.sh when the job has a GPU), offline against the prefetch manifest (HUB_ENV)."""
    command = f"bash {shlex.quote(str(GPU_PIN))} 1 ckd" if _dyn_gpus() else "ckd"
    return HUB_ENV + command


def _dyn_common(wildcards, output_dir=None, stage_train=True):
    """The study's task, seed, data and train keys (dynabert.train on top, unless not `stage_train`: the
    rewiring does not train), and the DynaBERT keys."""
    args = _common_args(
        wildcards.task,
        wildcards.seed,
        output_dir,
        DYN.get("train") if stage_train else None,
    )
    args += [
        _arg("widths", list(DYN.get("widths") or DEFAULT_WIDTHS)),
        _arg("depths", list(DYN.get("depths") or DEFAULT_DEPTHS)),
    ]
    for key in ("teacher_width", "use_task_settings", "methods_file"):
        if DYN.get(key) is not None:
            args.append(_arg(key, DYN[key]))
    for section in ("rewire", "latency"):
        for key, value in (DYN.get(section) or {}).items():
            args.append(_arg(f"{section}.{key}", value))
    return args


def _dyn_teacher_dir(wildcards):
    return TEACHER_DIR.format(
        task=wildcards.task,
        teacher=wildcards.teacher,
        seed=teacher_seed(int(wildcards.seed)),
    )


def _dyn_rewired_dir(wildcards):
    return DYN_REWIRED.format(
        task=wildcards.task,
        teacher=wildcards.teacher,
        seed=teacher_seed(int(wildcards.seed)),
    )


def dyn_rewire_args(wildcards):
    args = _dyn_common(wildcards, DYN_REWIRED.format(**wildcards), stage_train=False)
    args.append(
        _arg("teacher", {"name_or_path": f"{TEACHER_DIR.format(**wildcards)}/model"})
    )
    return _shell(args)


def dyn_stage_args(stage):
    def args(wildcards):
        out = (DYN_WIDTH if stage == "width" else DYN_DEPTH).format(**wildcards)
        if stage == "width":
            teacher, student = (
                f"{_dyn_teacher_dir(wildcards)}/model",
                f"{_dyn_rewired_dir(wildcards)}/model",
            )
        else:
            teacher = student = f"{DYN_WIDTH.format(**wildcards)}/model"
        result = _dyn_common(wildcards, out) + [
            _arg("method", wildcards.objective),
            _arg("teacher", {"name_or_path": teacher}),
            _arg("student", {"name_or_path": student}),
        ]
        for key, value in (DYN.get("method_options") or {}).items():
            result.append(_arg(f"method_options.{key}", value))
        return _shell(result)

    return args


def dyn_model_args(wildcards):
    args = _dyn_common(wildcards) + [
        _arg("model", {"name_or_path": f"{DYN_DEPTH.format(**wildcards)}/model"})
    ]
    return _shell(args)


def dyn_tasks_targets():
    keys = dict(
        task=DYN_TASKS, teacher=[DYN_TEACHER], objective=DYN_OBJECTIVES, seed=DYN_SEEDS
    )
    return expand(DYN_EVAL, **keys) + expand(f"{DYN_EXPORT}/sizes.json", **keys)


DYNABERT_TARGETS = [f"{DYN_REPORT}/{task}.md" for task in DYN_TASKS]


wildcard_constraints:
    objective=_alternatives(DYN_OBJECTIVES),


rule dynabert_rewire:
    input:
        teacher=f"{TEACHER_DIR}/record.json",
    output:
        record=f"{DYN_REWIRED}/record.json",
    log:
        DYN_LOG.replace("{objective}", "rewired").replace("{step}", "rewire"),
    retries: config.get("retries")
    threads: _dyn_resources("threads")
    resources:
        mem_mb=_dyn_resources("mem_mb"),
        runtime=_dyn_resources("runtime"),
        gpu=_dyn_gpus(),
    params:
        launch=_dyn_launcher(),
        args=dyn_rewire_args,
        threads=_dyn_resources("threads"),
    shell:
        "{params.launch} dynabert rewire {params.args} train.threads={params.threads} > {log} 2>&1"


rule dynabert_width:
    input:
        teacher=lambda w: f"{_dyn_teacher_dir(w)}/record.json",
        rewired=lambda w: f"{_dyn_rewired_dir(w)}/record.json",
    output:
        record=f"{DYN_WIDTH}/record.json",
    log:
        DYN_LOG.replace("{step}", "width"),
    retries: config.get("retries")
    threads: _dyn_resources("threads")
    resources:
        mem_mb=_dyn_resources("mem_mb"),
        runtime=_dyn_resources("runtime"),
        gpu=_dyn_gpus(),
    params:
        launch=_dyn_launcher(),
        args=dyn_stage_args("width"),
        threads=_dyn_resources("threads"),
    shell:
        "{params.launch} dynabert train-width {params.args} train.threads={params.threads} > {log} 2>&1"


rule dynabert_depth:
    input:
        width=f"{DYN_WIDTH}/record.json",
    output:
        record=f"{DYN_DEPTH}/record.json",
    log:
        DYN_LOG.replace("{step}", "depth"),
    retries: config.get("retries")
    threads: _dyn_resources("threads")
    resources:
        mem_mb=_dyn_resources("mem_mb"),
        runtime=_dyn_resources("runtime"),
        gpu=_dyn_gpus(),
    params:
        launch=_dyn_launcher(),
        args=dyn_stage_args("depth"),
        threads=_dyn_resources("threads"),
    shell:
        "{params.launch} dynabert train-depth {params.args} train.threads={params.threads} > {log} 2>&1"


rule dynabert_evaluate:
    input:
        depth=f"{DYN_DEPTH}/record.json",
    output:
        scores=DYN_EVAL,
    log:
        DYN_LOG.replace("{step}", "evaluate"),
    threads: _dyn_resources("threads")
    resources:
        mem_mb=_dyn_resources("mem_mb"),
        gpu=_dyn_gpus(),
    params:
        launch=_dyn_launcher(),
        args=dyn_model_args,
        threads=_dyn_resources("threads"),
    shell:
        "{params.launch} dynabert evaluate {params.args} train.threads={params.threads} --output {output.scores:q} > {log} 2>&1"


rule dynabert_export:
    # latency is measured with latency.threads (default 1) torch threads; the job asks for that many
    input:
        depth=f"{DYN_DEPTH}/record.json",
    output:
        sizes=f"{DYN_EXPORT}/sizes.json",
    log:
        DYN_LOG.replace("{step}", "export"),
    threads: int((DYN.get("latency") or {}).get("threads") or 1)
    resources:
        mem_mb=_dyn_resources("mem_mb"),
        gpu=_dyn_gpus(),
    params:
        launch=_dyn_launcher(),
        args=dyn_model_args,
        out=lambda w, output: Path(output.sizes).parent,
    shell:
        "{params.launch} dynabert export {params.args} --output {params.out:q} > {log} 2>&1"


rule dynabert_report:
    input:
        dyn_tasks_targets(),
    output:
        tables=[f"{DYN_REPORT}/{task}.md" for task in DYN_TASKS],
    log:
        f"{LOGS}/dynabert_report.log",
    localrule: True
    params:
        study_dir=STUDY_DIR,
        out=DYN_REPORT,
    shell:
        "ckd dynabert report --study-dir {params.study_dir:q} --output {params.out:q} > {log} 2>&1"
