# The study plan: paths, the (task, model, method, seed) grid, and the `ckd` command lines.
import json
import re
import shlex
from collections import namedtuple
from pathlib import Path

from snakemake.exceptions import WorkflowError

from ckd.config import parse_value
from ckd.errors import ConfigError
from ckd.methods import load_methods, resolve_method

STUDY = config["study"]
STUDY_DIR = str(Path(config["results_dir"]) / STUDY)
LOGS = f"{STUDY_DIR}/logs"
TABLES_DIR = f"{STUDY_DIR}/tables"
PLOTS_DIR = f"{STUDY_DIR}/plots"
TEACHER_DIR = f"{STUDY_DIR}/teachers/{{task}}/{{teacher}}/seed{{seed}}"
RUN_DIR = f"{STUDY_DIR}/runs/{{task}}/{{student}}/{{method}}/seed{{seed}}"
TEACHER_LOGITS = f"{TEACHER_DIR}/train_logits.pt"

TEACHER_SEEDS = config.get("teacher_seeds") or config["seeds"]
# What `ckd aggregate` writes: each table in these formats.
TABLE_FORMATS = {
    "main": ("csv", "md", "tex"),
    "paper_delta": ("csv", "md", "tex"),
    "ablation": ("csv", "md", "tex"),
    "significance": ("csv", "md", "tex"),
    "missing": ("csv", "md"),
    "runs": ("csv",),
}
TABLES = [f"{TABLES_DIR}/{name}.{ext}" for name, formats in TABLE_FORMATS.items() for ext in formats]
# Terms that read only the teacher's logits: methods made of these can use a cached logits file.
LOGIT_TERMS = {"task", "kd", "kd_released"}

Method = namedtuple("Method", "name base options needs_teacher after logits_only")


def _fail(message):
    raise WorkflowError(f"config of study {STUDY!r}: {message}")


def _method(name, document):
    variant = config["variants"].get(name)
    base, options = (variant["base"], variant["options"]) if variant else (name, {})
    where = f"variants.{name}" if variant else f"method {name!r}"
    try:
        resolved = resolve_method(
            document, base, config["tasks"][0], use_task_settings=config["use_task_settings"], options=options
        )
    except ConfigError as error:
        _fail(f"{where}: {error}")
    terms = {term.name for term in resolved.terms}
    logits_only = resolved.needs_teacher and terms <= LOGIT_TERMS
    return Method(name, base, options, resolved.needs_teacher, resolved.after, logits_only)


def _plan_methods():
    document = load_methods(None)
    names = list(config["methods"])
    for spec in config["students"].values():
        names += [m for m in spec.get("methods", []) if m not in names]
    for name in config["variants"]:
        if name in document["methods"]:
            _fail(f"variants.{name}: the name is already a method of {document['_path']}; pick another")
    methods = {name: _method(name, document) for name in names}
    for name in config["variants"]:  # checked even when no student runs them
        _method(name, document)
    # A chained method's first stage (TinyBERT stage 1) is a run of its own.
    for method in list(methods.values()):
        if method.after and method.after not in methods:
            methods[method.after] = _method(method.after, document)
    return methods


def _plan_students():
    teachers = list(config["teachers"])
    plan = {}
    for name, spec in config["students"].items():
        teacher = spec.get("teacher") or (teachers[0] if len(teachers) == 1 else None)
        if teacher is None:
            _fail(f"students.{name}.teacher: the study has several teachers ({', '.join(teachers)}); name one")
        if teacher not in config["teachers"]:
            _fail(f"students.{name}.teacher: {teacher!r} is not one of the teachers ({', '.join(teachers)})")
        plan[name] = {"teacher": teacher, "methods": list(spec.get("methods") or config["methods"])}
    return plan


METHODS = _plan_methods()
STUDENTS = _plan_students()


def teacher_seed(seed):
    """The teacher a student of this seed distils from: same seed if trained, else the first one."""
    return seed if seed in TEACHER_SEEDS else TEACHER_SEEDS[0]


def student_runs(student):
    """(method, stage-1 method or None) of one student, stage-1 runs included once."""
    runs = []
    for name in STUDENTS[student]["methods"]:
        after = METHODS[name].after
        if after and after not in runs:
            runs.append(after)
        if name not in runs:
            runs.append(name)
    return runs


def teacher_record(task, teacher, seed):
    return f"{TEACHER_DIR.format(task=task, teacher=teacher, seed=seed)}/record.json"


def run_record(task, student, method, seed):
    return f"{RUN_DIR.format(task=task, student=student, method=method, seed=seed)}/record.json"


TEACHER_RECORDS = [
    teacher_record(task, teacher, seed)
    for task in config["tasks"]
    for teacher in config["teachers"]
    for seed in TEACHER_SEEDS
]
RUN_RECORDS = [
    run_record(task, student, method, seed)
    for task in config["tasks"]
    for student in STUDENTS
    for method in student_runs(student)
    for seed in config["seeds"]
]
EXPECTED_RUNS = [
    {"task": task, "student": teacher, "method": "teacher", "seed": seed}
    for task in config["tasks"]
    for teacher in config["teachers"]
    for seed in TEACHER_SEEDS
] + [
    {"task": task, "student": student, "method": method, "seed": seed}
    for task in config["tasks"]
    for student in STUDENTS
    for method in student_runs(student)
    for seed in config["seeds"]
]


def _alternatives(names):
    return "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))


wildcard_constraints:
    task=_alternatives(config["tasks"]),
    teacher=_alternatives(config["teachers"]),
    student=_alternatives(STUDENTS),
    method=_alternatives(METHODS),
    seed=r"\d+",


# ------------------------------------------------------------------ command lines


def _arg(key, value):
    """key=value for `ckd` (which parses values as YAML), shell-quoted: plain strings stay plain,
    anything else is written as JSON, a subset of YAML."""
    plain = isinstance(value, str) and parse_value(value) == value
    return shlex.quote(f"{key}={value if plain else json.dumps(value)}")


def _common_args(task, seed, output_dir=None, train_overrides=None):
    train = {"progress": False, **config["train"], **(train_overrides or {})}
    args = [_arg("study", STUDY), _arg("task", task), _arg("seed", int(seed))]
    if output_dir is not None:
        args.append(_arg("output_dir", output_dir))
    args += [_arg(f"data.{key}", value) for key, value in config["data"].items()]
    args += [_arg(f"train.{key}", value) for key, value in train.items()]
    return args


def _model(spec, name):
    return {**spec, "name": name}


def finetune_args(wildcards):
    teacher = config["teachers"][wildcards.teacher]
    output_dir = TEACHER_DIR.format(**wildcards)
    args = _common_args(wildcards.task, wildcards.seed, output_dir, teacher.get("train"))
    args.append(_arg("model", _model(teacher["model"], wildcards.teacher)))
    return " ".join(args)


def _teacher_dir(wildcards):
    teacher = STUDENTS[wildcards.student]["teacher"]
    seed = teacher_seed(int(wildcards.seed))
    return TEACHER_DIR.format(task=wildcards.task, teacher=teacher, seed=seed)


def distill_inputs(wildcards):
    """The runs a distillation reads: its teacher, its first stage, the cached teacher logits."""
    method = METHODS[wildcards.method]
    inputs = {}
    if method.needs_teacher:
        inputs["teacher"] = f"{_teacher_dir(wildcards)}/record.json"
        if method.logits_only and config["teacher_logits"]:
            inputs["logits"] = f"{_teacher_dir(wildcards)}/train_logits.pt"
    if method.after:
        inputs["stage1"] = run_record(wildcards.task, wildcards.student, method.after, wildcards.seed)
    return inputs


def distill_args(wildcards):
    method = METHODS[wildcards.method]
    student = config["students"][wildcards.student]
    output_dir = RUN_DIR.format(**wildcards)
    args = _common_args(wildcards.task, wildcards.seed, output_dir)
    args += [_arg("method", method.base), _arg("use_task_settings", config["use_task_settings"])]
    if method.name != method.base:
        args += [_arg("method_name", method.name), _arg("method_options", method.options)]
    args.append(_arg("student", _model(student["model"], wildcards.student)))
    inputs = distill_inputs(wildcards)
    if "teacher" in inputs:
        args.append(_arg("teacher", {"name_or_path": f"{_teacher_dir(wildcards)}/model"}))
    if "logits" in inputs:
        args.append(_arg("teacher_logits", inputs["logits"]))
    if "stage1" in inputs:
        args.append(_arg("init_from_run", str(Path(inputs["stage1"]).parent)))
    return " ".join(args)


def cache_logits_args(wildcards):
    """The data and teacher of the distillation runs that will read the logits file."""
    args = _common_args(wildcards.task, wildcards.seed)
    args.append(_arg("teacher", {"name_or_path": f"{TEACHER_DIR.format(**wildcards)}/model"}))
    return " ".join(args)


def resources_of(rule_kind):
    return config["resources"][rule_kind]


def table_outputs():
    """The aggregate rule's outputs, each marked for the report with its table's caption."""
    return {
        f"{name}_{ext}": report(
            f"{TABLES_DIR}/{name}.{ext}",
            caption=f"../report/{name}.rst",
            category="Tables",
            subcategory=name,
            labels={"table": name, "format": ext},
        )
        for name, formats in TABLE_FORMATS.items()
        for ext in formats
    }
