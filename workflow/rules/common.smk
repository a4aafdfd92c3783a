# The study plan: paths, the (task, model, method, seed) grid, and the `ckd` command lines.
import json
import os
import re
import shlex
from collections import namedtuple
from pathlib import Path

from snakemake.exceptions import WorkflowError

from ckd import paths
from ckd.atomic import atomic_write_json
from ckd.config import parse_value, run_fingerprint
from ckd.errors import ConfigError
from ckd.methods import load_methods, resolve_method
from ckd.prefetch import MANIFEST_ENV, MANIFEST_FILE, study_items

STUDY = config["study"]
STUDY_DIR = str(Path(config["results_dir"]) / STUDY)
# the layout under the study folder: ckd.paths (its templates' fields are these rules' wildcards)
LOGS = f"{STUDY_DIR}/{paths.LOGS}"
TABLES_DIR = f"{STUDY_DIR}/{paths.TABLES}"
PLOTS_DIR = f"{STUDY_DIR}/{paths.PLOTS}"
EXPECTED = f"{STUDY_DIR}/{paths.EXPECTED}"
TEACHER_DIR = f"{STUDY_DIR}/{paths.TEACHER}"
RUN_DIR = f"{STUDY_DIR}/{paths.RUN}"
TEACHER_LOGITS = f"{TEACHER_DIR}/train_logits.pt"
TEACHER_CACHE = f"{TEACHER_DIR}/teacher_cache/manifest.json"  # ckd cache-teacher (study setting teacher_cache)

TEACHER_SEEDS = config.get("teacher_seeds") or config["seeds"]

# Hub models, tokenizers and datasets the study reads (ckd.prefetch): the local rule `prefetch`
# (prefetch.smk) fetches them once on the submit host and pins them in HUB_MANIFEST; every training
# job depends on it and loads them offline at the pinned revisions (HUB_ENV in its command).
HUB_ITEMS = study_items(config)
HUB_MANIFEST = f"{STUDY_DIR}/{MANIFEST_FILE}" if HUB_ITEMS else None
HUB_ENV = (
    f"{MANIFEST_ENV}={shlex.quote(str(Path(HUB_MANIFEST).resolve()))} HF_HUB_OFFLINE=1 "
    if HUB_ITEMS
    else ""
)


def hub_inputs(wildcards=None):
    return {"hub_manifest": HUB_MANIFEST} if HUB_MANIFEST else {}


# What `ckd aggregate` writes: each table in these formats.
TABLE_FORMATS = {
    "main": ("csv", "md", "tex"),
    "paper_delta": ("csv", "md", "tex"),
    "ablation": ("csv", "md", "tex"),
    "significance": ("csv", "md", "tex"),
    "selected_settings": ("csv", "md", "tex"),
    "missing": ("csv", "md"),
    "one_class": ("csv", "md"),
    "runs": ("csv",),
}
TABLES = [
    f"{TABLES_DIR}/{name}.{ext}"
    for name, formats in TABLE_FORMATS.items()
    for ext in formats
]
# Terms that read only the teacher's logits: methods made of these can use a cached logits file.
# Written out so that parsing the workflow does not import torch; tests/test_methods.py checks it
# against ckd.objectives.TERMS.
LOGIT_TERMS = {"task", "kd", "kd_released", "tinybert_prediction"}
# Terms a teacher cache serves (ckd.teacher_store.term_fields; the WR triple not under released_window_quirks).
CACHE_TERMS = LOGIT_TERMS | {
    "wr_pair",
    "wr_triple",
    "ltr_pair",
    "ltr_triple",
    "pkd",
    "minilm_attention",
    "minilm_value",
}

Method = namedtuple(
    "Method",
    "name base options needs_teacher after logits_only cached",
    defaults=(False,),
)


def _fail(message):
    raise WorkflowError(f"config of study {STUDY!r}: {message}")


def _method(name, document):
    variant = config["variants"].get(name)
    base, options = (variant["base"], variant["options"]) if variant else (name, {})
    where = f"variants.{name}" if variant else f"method {name!r}"
    try:
        resolved = resolve_method(
            document,
            base,
            config["tasks"][0],
            use_task_settings=config["use_task_settings"],
            options=options,
        )
    except ConfigError as error:
        _fail(f"{where}: {error}")
    terms = {term.name for term in resolved.terms}
    logits_only = resolved.needs_teacher and terms <= LOGIT_TERMS
    cached = (
        resolved.needs_teacher
        and terms <= CACHE_TERMS
        and not any(
            term.name == "wr_triple" and term.options.get("released_window_quirks")
            for term in resolved.terms
        )
    )
    return Method(
        name, base, options, resolved.needs_teacher, resolved.after, logits_only, cached
    )


def _plan_methods():
    document = load_methods(None)
    names = list(config["methods"])
    for spec in config["students"].values():
        names += [m for m in spec.get("methods", []) if m not in names]
    for name in config["variants"]:
        if name in document["methods"]:
            _fail(
                f"variants.{name}: the name is already a method of {document['_path']}; pick another"
            )
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
            _fail(
                f"students.{name}.teacher: the study has several teachers ({', '.join(teachers)}); name one"
            )
        if teacher not in config["teachers"]:
            _fail(
                f"students.{name}.teacher: {teacher!r} is not one of the teachers ({', '.join(teachers)})"
            )
        plan[name] = {
            "teacher": teacher,
            "methods": list(spec.get("methods") or config["methods"]),
        }
    return plan


METHODS = _plan_methods()
STUDENTS = _plan_students()


def data_note():
    """Where the study's data comes from, said before it runs (the smoke study uses no GLUE data)."""
    synthetic = [t for t in config["tasks"] if t.startswith("syn-")]
    glue = [t for t in config["tasks"] if not t.startswith("syn-")]
    notes = []
    if synthetic:
        notes.append(
            f"synthetic data generated by ckd for {', '.join(synthetic)} (no GLUE text)"
        )
    if glue:
        source = config["data"].get("source", "auto")
        notes.append(
            f"GLUE data for {', '.join(glue)} (data.source {source}; GLUE_DIR={os.environ.get('GLUE_DIR') or 'unset'})"
        )
    return f"study {STUDY} in {STUDY_DIR}: " + "; ".join(notes)


def teacher_seed(seed):
    """The teacher a student of this seed distils from: same seed if trained, else the first one."""
    return seed if seed in TEACHER_SEEDS else TEACHER_SEEDS[0]


def student_runs(student):
    """The methods one student runs, each chained method's first stage just before it, once."""
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


# The grid: (task, teacher, seed) teachers and (task, student, method, seed) runs.
TEACHER_GRID = [
    (t, name, s)
    for t in config["tasks"]
    for name in config["teachers"]
    for s in TEACHER_SEEDS
]
RUN_GRID = [
    (t, name, m, s)
    for t in config["tasks"]
    for name in STUDENTS
    for m in student_runs(name)
    for s in config["seeds"]
]
TEACHER_RECORDS = [teacher_record(*key) for key in TEACHER_GRID]
RUN_RECORDS = [run_record(*key) for key in RUN_GRID]


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
    """key=value for `ckd` (which parses values as YAML): plain strings stay plain, anything else is
    written as JSON, a subset of YAML."""
    plain = isinstance(value, str) and parse_value(value) == value
    return f"{key}={value if plain else json.dumps(value)}"


def _shell(args):
    return " ".join(shlex.quote(arg) for arg in args)


def _common_args(
    task,
    seed,
    output_dir=None,
    train_overrides=None,
    drop_train=(),
    data_overrides=None,
):
    """drop_train: train keys a searched method's grid sets (lr, epochs); data_overrides: a search run's
    data.selection_split (search.smk)."""
    train = {"progress": False, **config["train"], **(train_overrides or {})}
    train = {key: value for key, value in train.items() if key not in drop_train}
    args = [_arg("study", STUDY), _arg("task", task), _arg("seed", int(seed))]
    if output_dir is not None:
        args.append(_arg("output_dir", output_dir))
    args += [
        _arg(f"data.{key}", value)
        for key, value in {**config["data"], **(data_overrides or {})}.items()
    ]
    args += [_arg(f"train.{key}", value) for key, value in train.items()]
    return args


def _model(spec, name):
    # a student that starts from a general-distillation entry (general.smk)
    if "general" in spec:
        return general_student_spec(spec, name)
    return {**spec, "name": name}


def finetune_overrides(wildcards):
    teacher = config["teachers"][wildcards.teacher]
    output_dir = TEACHER_DIR.format(**wildcards)
    args = _common_args(
        wildcards.task, wildcards.seed, output_dir, teacher.get("train")
    )
    args.append(_arg("model", _model(teacher["model"], wildcards.teacher)))
    return args


def finetune_args(wildcards):
    return _shell(finetune_overrides(wildcards))


def _teacher_dir(wildcards):
    teacher = STUDENTS[wildcards.student]["teacher"]
    seed = teacher_seed(int(wildcards.seed))
    return TEACHER_DIR.format(task=wildcards.task, teacher=teacher, seed=seed)


def distill_inputs(wildcards):
    """The runs a distillation reads: its teacher, its first stage, the cached teacher logits; a
    searched method's report run also reads its selected settings, a search run (wildcard `point`,
    search.smk) the search's own first stage and logits."""
    method = METHODS[wildcards.method]
    point = search_point(wildcards)
    inputs = {**hub_inputs(), **general_inputs(wildcards.student)}  # general.smk
    if method.needs_teacher:
        inputs["teacher"] = f"{_teacher_dir(wildcards)}/record.json"
        if method.logits_only and config["teacher_logits"]:
            inputs["logits"] = (
                f"{_teacher_dir(wildcards)}/{Path(teacher_logits_file(point)).name}"
            )
        elif reads_teacher_cache(method) and (
            point is None or SELECTION != "carve"
        ):  # carved runs train on fewer examples
            inputs["teacher_cache"] = (
                f"{_teacher_dir(wildcards)}/teacher_cache/manifest.json"  # TEACHER_CACHE
            )
    if method.after:
        if point is None:
            inputs["stage1"] = run_record(
                wildcards.task, wildcards.student, method.after, wildcards.seed
            )
        else:
            inputs["stage1"] = search_record(
                wildcards.task,
                wildcards.student,
                method.after,
                DEFAULT_POINT,
                wildcards.seed,
            )
    if point is None and method.name in SEARCHED:
        inputs["selected"] = selected_config(
            wildcards.task, wildcards.student, method.name
        )
    return inputs


def distill_overrides(wildcards):
    """The `ckd distill` overrides of a run; a searched method's report run takes its method_options
    from the selected settings (`-c`, distill_args) and a search run from its grid point.
    """
    method = METHODS[wildcards.method]
    student = config["students"][wildcards.student]
    point = search_point(wildcards)
    output_dir = (RUN_DIR if point is None else SEARCH_RUN_DIR).format(**wildcards)
    args = _common_args(
        wildcards.task,
        wildcards.seed,
        output_dir,
        drop_train=SEARCH_TRAIN_KEYS.get(method.name, ()),
        data_overrides=search_data(point),
        train_overrides=search_train(point, method),
    )
    args += [
        _arg("method", method.base),
        _arg("use_task_settings", config["use_task_settings"]),
    ]
    if method.name != method.base:
        args.append(_arg("method_name", method.name))
    options = (
        method.options
        if point is None
        else {**method.options, **POINT_OPTIONS[(method.name, point)]}
    )
    if options and not (point is None and method.name in SEARCHED):
        args.append(_arg("method_options", options))
    args.append(_arg("student", _model(student["model"], wildcards.student)))
    inputs = distill_inputs(wildcards)
    if "teacher" in inputs:
        args.append(
            _arg("teacher", {"name_or_path": f"{_teacher_dir(wildcards)}/model"})
        )
    if "logits" in inputs:
        args.append(_arg("teacher_logits", inputs["logits"]))
    if "teacher_cache" in inputs:
        args.append(_arg("teacher_cache", str(Path(inputs["teacher_cache"]).parent)))
    if "stage1" in inputs:
        args.append(_arg("init_from_run", str(Path(inputs["stage1"]).parent)))
    return args


def distill_args(wildcards):
    selected = distill_inputs(wildcards).get("selected")
    return _shell((["-c", selected] if selected else []) + distill_overrides(wildcards))


def cache_logits_overrides(wildcards, data_overrides=None):
    """The data and teacher of the distillation runs that will read the logits file."""
    args = _common_args(wildcards.task, wildcards.seed, data_overrides=data_overrides)
    args.append(
        _arg("teacher", {"name_or_path": f"{TEACHER_DIR.format(**wildcards)}/model"})
    )
    return args


def cache_logits_args(wildcards):
    return _shell(cache_logits_overrides(wildcards))


def reads_teacher_cache(method):
    """Whether a method's runs read the (task, teacher) teacher cache: study setting teacher_cache, a method
    whose teacher terms it serves (a logit-only one reads the logits file instead when teacher_logits is on).
    """
    return (
        bool(config.get("teacher_cache"))
        and method.cached
        and not (method.logits_only and config["teacher_logits"])
    )


def cache_teacher_args(wildcards):
    """cache-logits' data and teacher, the methods of this teacher's students that read the cache, and those students."""
    students = [
        name for name, plan in STUDENTS.items() if plan["teacher"] == wildcards.teacher
    ]
    methods = sorted(
        {
            METHODS[m].base
            for s in students
            for m in STUDENTS[s]["methods"]
            if reads_teacher_cache(METHODS[m])
        }
    )
    specs = [config["students"][s]["model"] for s in students]
    specs = [  # a general student: its depth from its general entry (general.smk); none if it reads no cache
        general_cache_spec(s) if "general" in spec else spec
        for spec, s in zip(specs, students)
    ]
    specs = [spec for spec in specs if spec is not None]
    return _shell(
        cache_logits_overrides(wildcards)
        + [
            "--methods",
            ",".join(methods),
            "--students",
            json.dumps(specs, separators=(",", ":")),
        ]
    )


class _Wildcards(dict):
    """Stands in for Snakemake's wildcards object outside a rule."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def expected_runs():
    """`ckd aggregate --expected`: every run of the grid with the config fingerprint its record will carry
    (a record with another fingerprint is stale). Teachers are listed as method "teacher" under their name.
    """
    runs = []
    for task, name, seed in TEACHER_GRID:
        overrides = finetune_overrides(_Wildcards(task=task, teacher=name, seed=seed))
        runs.append(
            {
                "task": task,
                "student": name,
                "method": "teacher",
                "seed": seed,
                "config_fingerprint": run_fingerprint("finetune", overrides),
            }
        )
    for task, name, method, seed in RUN_GRID:
        wildcards = _Wildcards(task=task, student=name, method=method, seed=seed)
        overrides = distill_overrides(wildcards)
        # a searched method's report run: known once its setting is selected (None: any record counts)
        selected = distill_inputs(wildcards).get("selected")
        fingerprint = None
        if selected is None or Path(selected).is_file():
            fingerprint = run_fingerprint("distill", overrides, selected)
        runs.append(
            {
                "task": task,
                "student": name,
                "method": method,
                "seed": seed,
                "config_fingerprint": fingerprint,
            }
        )
    return runs


def partial_tables():
    """Tables from whatever finished, after a failed job (see onerror in the Snakefile)."""
    import subprocess

    if not any(Path(STUDY_DIR).glob("*/**/record.json")):
        return
    expected = Path(EXPECTED)
    aggregate = config["aggregate"]
    command = [
        "ckd",
        "aggregate",
        "--study-dir",
        STUDY_DIR,
        "--out",
        TABLES_DIR,
        "--bootstrap",
        str(aggregate["bootstrap"]),
        "--baseline",
        aggregate["baseline"],
        "--score",
        aggregate["score"],
        "--alternative",
        aggregate["alternative"],
    ]
    if expected.is_file():
        command += ["--expected", str(expected)]
    Path(LOGS).mkdir(parents=True, exist_ok=True)
    with open(f"{LOGS}/aggregate.partial.log", "w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode == 0:
        print(f"partial tables in {TABLES_DIR} (missing.md lists the failed runs)")
    else:
        print(f"partial tables failed: see {LOGS}/aggregate.partial.log")


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


# ------------------------------------------------------------------ GPUs, torchrun, retries


def gpus_of(rule_kind):
    return int(resources_of(rule_kind).get("gpu") or 0)


def scaled(rule_kind, name):
    """A resource that grows with the attempt: a job killed for memory or time gets more next time."""
    base = resources_of(rule_kind)[name]
    return lambda wildcards, attempt: base * attempt


GPU_PIN = Path(workflow.basedir).resolve() / "workflow" / "scripts" / "gpu-pin.sh"


def ckd_launcher(rule_kind):
    """`ckd`, or `torchrun --standalone --nproc_per_node N -m ckd.cli` when the rule asks for N > 1 GPUs;
    a GPU job starts through gpu-pin.sh, which gives it GPUs of its own outside SLURM. With hub items
    the command runs offline against the prefetch manifest (HUB_ENV)."""
    gpus = gpus_of(rule_kind)
    command = (
        f"torchrun --standalone --nproc_per_node {gpus} -m ckd.cli"
        if gpus > 1
        else "ckd"
    )
    if gpus > 0:
        command = f"bash {shlex.quote(str(GPU_PIN))} {gpus} {command}"
    return HUB_ENV + command


def threads_per_process(rule_kind):
    """train.threads of each process: the job's threads shared among its torchrun processes."""
    return max(1, int(resources_of(rule_kind)["threads"]) // max(1, gpus_of(rule_kind)))
