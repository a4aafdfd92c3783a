"""The one declaration of the config constraints: each section's keys, types, ranges, choices and defaults.

`ckd.config` checks run configs with it (DATA_DEFAULTS, `check_section`, ...), `ckd.models.SPEC_KEYS` is
the `model` section's keys, and the workflow's study schema, workflow/schemas/config.schema.yaml, is
generated from it (`python -m ckd.config_schema --write`; tests/test_config_schema.py fails when the
committed file differs from what this module generates).

A section is a mapping of keys (`Section`), each key a `Key` made by `integer`, `number`, `boolean`,
`choice`, `text` or `raw`. To add a section to study configs, add one entry to SECTIONS with
`study_key=True` (it becomes `$defs/<name>` and a top-level `<name>: {$ref, default: {}}` of the study
schema) and run `python -m ckd.config_schema --write`; a run config reads the same declaration with
`section.defaults()` and `ckd.config.check_section(name, section, values)`. Light module: no torch.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ckd.aggregate_settings import DEFAULTS as AGGREGATE_DEFAULTS


@dataclass(frozen=True)
class Bound:
    """What a numeric setting may hold: an integer or any finite number, within [low, high] (`open_*`: bound excluded)."""

    integer: bool = False
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    none: bool = True  # None (= the default / not set) allowed

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        if self.low == 0 and self.open_low and self.high is None:
            return f"a positive {'integer' if self.integer else 'number'}"

        def show(v: float) -> str:
            return str(int(v)) if float(v).is_integer() else f"{v:g}"

        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.open_low else '>='} {show(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.open_high else '<='} {show(self.high)}")
        return f"{kind} {' and '.join(parts)}" if parts else kind

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.none
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.open_high else value > self.high):
            return False
        return True

    def json(self) -> dict[str, Any]:
        """The JSON-schema keywords of this bound (an open integer bound is written as the closed one next to it)."""
        kind = "integer" if self.integer else "number"
        out: dict[str, Any] = {"type": [kind, "null"] if self.none else kind}
        for value, is_open, closed, exclusive, step in ((self.low, self.open_low, "minimum", "exclusiveMinimum", 1),
                                                         (self.high, self.open_high, "maximum", "exclusiveMaximum", -1)):
            if value is None:
                continue
            value = int(value) if float(value).is_integer() else value
            if is_open and self.integer:
                out[closed] = value + step
            else:
                out[exclusive if is_open else closed] = value
        return out


POSITIVE_INT = Bound(integer=True, low=0, open_low=True)
POSITIVE = Bound(low=0, open_low=True)
NON_NEGATIVE = Bound(low=0, none=False)
SEED = Bound(integer=True, low=0, high=2**32 - 1, none=False)  # what numpy, torch and Python's random all accept
PROBABILITY_BELOW_1 = Bound(low=0, high=1, open_high=True)
NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.+-]*$"  # a name used as a folder name


@dataclass(frozen=True)
class Key:
    """One setting: `kind` integer | number | boolean | choice | string | raw, its run-config default, and
    what it may hold (`bound` for numbers, `choices`, `pattern`, or a raw JSON-schema fragment `schema`).
    `study`: part of the study schema's section (False: run configs only); `required`: the study must give it."""

    kind: str
    default: Any = None
    doc: str = ""
    bound: Bound | None = None
    choices: tuple[Any, ...] = ()
    pattern: str | None = None
    nullable: bool = False
    schema: Mapping[str, Any] | None = None
    study: bool = True
    required: bool = False

    def json(self, with_default: bool) -> dict[str, Any]:
        if self.kind in ("integer", "number"):
            out = self.bound.json()
        elif self.kind == "choice":
            out = {"enum": [*self.choices, None] if self.nullable else list(self.choices)}
        elif self.kind == "raw":
            out = dict(self.schema or {})
        else:  # boolean, string
            out = {"type": [self.kind, "null"] if self.nullable else self.kind}
        if self.pattern:
            out["pattern"] = self.pattern
        if with_default and not self.required:
            out["default"] = self.default
        if self.doc:
            out["description"] = self.doc
        return out


def integer(bound: Bound, default: Any = None, doc: str = "", **kw: Any) -> Key:
    return Key("integer", default, doc, bound=Bound(**{**bound.__dict__, "integer": True}), **kw)


def number(bound: Bound, default: Any = None, doc: str = "", **kw: Any) -> Key:
    return Key("number", default, doc, bound=Bound(**{**bound.__dict__, "integer": False}), **kw)


def boolean(default: bool, doc: str = "", **kw: Any) -> Key:
    return Key("boolean", default, doc, **kw)


def choice(default: Any, choices: tuple[Any, ...], doc: str = "", **kw: Any) -> Key:
    return Key("choice", default, doc, choices=choices, **kw)


def text(default: str | None = None, doc: str = "", **kw: Any) -> Key:
    return Key("string", default, doc, **kw)


def raw(schema: Mapping[str, Any], default: Any = None, doc: str = "", **kw: Any) -> Key:
    """A key whose study-schema fragment is given as is (a list, a nested mapping); run configs do not type-check it here."""
    return Key("raw", default, doc, schema=schema, **kw)


@dataclass(frozen=True)
class Section:
    """A mapping of settings. `fill_defaults`: the study schema carries the defaults, so Snakemake's validate
    fills them in (False for sections whose defaults the run config supplies: the workflow passes only the
    keys a study sets). `study_key`: the section is a top-level key of study configs."""

    doc: str
    keys: dict[str, Key] = field(default_factory=dict)
    fill_defaults: bool = False
    study_key: bool = False

    def defaults(self) -> dict[str, Any]:
        """The run-config defaults of every key (study-only or not)."""
        return {name: key.default for name, key in self.keys.items()}

    def json(self) -> dict[str, Any]:
        """The section's JSON schema (its study keys only; unknown keys refused)."""
        keys = {name: key for name, key in self.keys.items() if key.study}
        out: dict[str, Any] = {"description": self.doc, "type": "object", "additionalProperties": False}
        required = [name for name, key in keys.items() if key.required]
        if required:
            out["required"] = required
        out["properties"] = {name: key.json(self.fill_defaults) for name, key in keys.items()}
        return out


MODEL = Section("a model spec as `ckd` reads it (ckd/models.py); in a study `name` is filled in from the entry's key", {
    "name_or_path": text(doc="hub id, local folder, or package:<module>"),
    "init": choice("pretrained", ("pretrained", "random", "truncate"),
                   doc="pretrained weights; random (the shape below); truncate (keep `layers` blocks)"),
    "layers": integer(POSITIVE_INT, doc="the depth of a random init, the blocks kept by truncate"),
    "hidden": integer(POSITIVE_INT),
    "heads": integer(POSITIVE_INT),
    "ffn": integer(POSITIVE_INT),
    "truncate": choice("first", ("first", "alternate"), doc="first k blocks (PKD) or every other block (DistilBERT)"),
    "tokenizer": text(doc="a tokenizer id or path, or `synthetic` (default: name_or_path)"),
    "dropout": number(PROBABILITY_BELOW_1, doc="hidden and attention dropout (default: the model's)"),
    "name": text(doc="the row label of the model", study=False),
})

# the carved selection split of a search (study search.carve) and of a run (run config data.selection_split)
CARVE = Section(
    "the carved split (ckd.data.loading.carve_selection), stratified by label (regression by score decile)", {
        "fraction": number(Bound(low=0, high=1, open_low=True, open_high=True, none=False), 0.1),
        "max_examples": integer(POSITIVE_INT, 2000),
        "seed": integer(SEED, 0),
    }, fill_defaults=True)

DATA = Section("data.* keys of every run (ckd.config.DATA_DEFAULTS)", {
    "source": choice("auto", ("auto", "glue_dir", "hub", "synthetic")),
    "glue_dir": text(doc="default: $GLUE_DIR", nullable=True),
    "max_train_examples": integer(POSITIVE_INT),
    "max_eval_examples": integer(POSITIVE_INT),
    "subsample_seed": integer(SEED, 0),
    "max_length": integer(Bound(low=2, none=False), 128, doc="tokens per example ([CLS] and [SEP] at least)"),
    "synthetic_train_size": integer(POSITIVE_INT),
    "synthetic_dev_size": integer(POSITIVE_INT),
    "selection_split": raw({}, doc="{fraction, max_examples, seed}: train minus a carved split, scored on it "
                           "(ckd.data.loading; set by the search rules)", study=False),
}, study_key=True)

TRAIN = Section("train.* keys of every run (ckd.config.TRAIN_DEFAULTS). train.threads is not in a study: it comes "
                "from resources.<rule>.threads so torch and the scheduler agree.", {
    "epochs": integer(POSITIVE_INT, doc="default: the method's per-task setting, else 3"),
    "max_steps": integer(POSITIVE_INT, doc="stop after this many optimiser steps (overrides epochs)"),
    "batch_size": integer(Bound(low=0, open_low=True, none=False), 32, doc="examples per optimiser step"),
    "grad_accum": integer(Bound(low=0, open_low=True, none=False), 1, doc="micro-batches per optimiser step"),
    "lr": number(POSITIVE, doc="default: the method's per-task setting, else 5e-5"),
    "weight_decay": number(NON_NEGATIVE, 0.0),
    "adam_eps": number(Bound(low=0, open_low=True, none=False), 1e-8),
    "warmup_ratio": number(Bound(low=0, high=1, open_high=True, none=False), 0.0),
    "max_grad_norm": number(NON_NEGATIVE, 1.0, doc="0: no clipping"),
    "eval_every": integer(POSITIVE_INT, doc="steps; default: once per epoch"),
    "checkpoint_every": integer(POSITIVE_INT, doc="steps; default: at every evaluation"),
    "eval_batch_size": integer(Bound(low=0, open_low=True, none=False), 64),
    "save_model": boolean(True),
    "progress": boolean(True),
    "tensorboard": boolean(True),
    "threads": integer(POSITIVE_INT, doc="torch CPU threads; default: torch's", study=False),
    "device": text("auto", pattern="^(auto|cpu|cuda(:[0-9]+)?)$"),
    "precision": choice("fp32", ("fp32", "bf16", "fp16"), doc="autocast; fp16 only on CUDA"),
}, study_key=True)

RESOURCES = Section("what one job of a rule asks the scheduler for", {
    "threads": integer(Bound(low=1, none=False), 1, doc="also passed to torch as train.threads"),
    "mem_mb": integer(Bound(low=100, none=False), 4000),
    "runtime": integer(Bound(low=1, none=False), 60, doc="minutes"),
    "gpu": integer(Bound(low=0, none=False), 0, doc=(
        "GPUs per job: the `gpu` resource (the local profile's `--resources gpu=N` caps the sum over running jobs; "
        "the SLURM plugin asks for `--gpus=N`). N > 1 runs finetune/distill jobs as `torchrun --standalone "
        "--nproc_per_node N -m ckd.cli ...`, one process per GPU, each with threads/N torch threads. cache_logits "
        "uses one GPU at most.")),
}, fill_defaults=True)

AGGREGATE = Section("the settings of `ckd aggregate` (defaults: ckd.aggregate_settings.DEFAULTS)", {
    "score": choice(AGGREGATE_DEFAULTS["score"], ("final", "best")),
    "baseline": text(AGGREGATE_DEFAULTS["baseline"]),
    "bootstrap": integer(Bound(low=1, none=False), AGGREGATE_DEFAULTS["bootstrap"]),
    "alternative": choice(AGGREGATE_DEFAULTS["alternative"], ("greater", "two-sided")),
}, fill_defaults=True, study_key=True)

# Every section, by the name of its $defs entry in the study schema.
SECTIONS: dict[str, Section] = {
    "model": MODEL, "data": DATA, "train": TRAIN, "resources": RESOURCES, "aggregate": AGGREGATE, "carve": CARVE,
}


def _ref(name: str, **extra: Any) -> dict[str, Any]:
    return {"$ref": f"#/$defs/{name}", **extra}


def _names(doc: str, **extra: Any) -> dict[str, Any]:
    return {"description": doc, "type": "array", "minItems": 1, "uniqueItems": True, "items": _ref("name"), **extra}


def _seeds(doc: str) -> dict[str, Any]:
    return {"description": doc, "type": "array", "minItems": 1, "uniqueItems": True, "items": _ref("seed")}


def _models(doc: str, **properties: Any) -> dict[str, Any]:
    entry = {"type": "object", "additionalProperties": False, "required": ["model"],
             "properties": {"model": _ref("model"), **properties}}
    return {"description": doc, "type": "object", "minProperties": 1, "propertyNames": _ref("name"),
            "additionalProperties": entry}


def study_schema() -> dict[str, Any]:
    """The JSON schema of a study config (workflow/schemas/config.schema.yaml): SECTIONS as `$defs`, the
    study-level sections as top-level keys, and the study's own structure (tasks, models, methods, search)."""
    from ckd.data.tasks import TASKS  # imported here: ckd.data pulls in torch

    defs: dict[str, Any] = {
        "name": {"description": "a name used as a folder name (teachers, students, methods, variants)",
                 "type": "string", "pattern": NAME_PATTERN},
        "seed": {"description": "a seed (numpy, torch and Python's random accept it)", **SEED.json()},
        **{name: section.json() for name, section in SECTIONS.items()},
    }
    sections = {name: _ref(name, default={}) for name, section in SECTIONS.items() if section.study_key}
    grid = {
        "description": (
            "method (or variant) -> grid: a mapping setting -> [values] (all combinations, first setting varying "
            "slowest) or a list of {setting: value} points. Settings are those of config/methods.yaml (alpha, "
            "temperature, beta, wr_pair, ..., lr, epochs), given as method_options; a grid over lr or epochs "
            "replaces the study's train.lr / train.epochs for that method."),
        "type": "object", "minProperties": 1, "propertyNames": _ref("name"),
        "additionalProperties": {"oneOf": [
            {"type": "object", "minProperties": 1, "additionalProperties": {"type": "array", "minItems": 1}},
            {"type": "array", "minItems": 1, "items": {"type": "object", "minProperties": 1}},
        ]},
    }
    search = {
        "description": (
            "hyper-parameter search (ckd/search.py, workflow/rules/search.smk). Per method, a grid over its settings; "
            "every point is trained once per search seed under <study>/search/. selection carve (default): those runs "
            "train on the training set minus a split carved from it and are scored on that split only (the dev set "
            "is never read); selection dev: they train on the full training set and are scored on dev, as the papers "
            "did (labelled in every table). The point with the best mean over the search seeds is re-run on the "
            "study's seeds on the full training set; only those runs enter the tables."),
        "type": "object", "additionalProperties": False, "required": ["seeds", "methods"],
        "properties": {
            "selection": {"enum": ["carve", "dev"], "default": "carve"},
            "carve": _ref("carve", default={}),
            "seeds": _seeds("search seeds (each grid point is trained once per seed)"),
            "score": {"description": "score a search run by its final checkpoint or its best one on the selection split",
                      "enum": ["final", "best"], "default": "final"},
            "equal_budget": {"description": "refuse grids of different sizes (every method gets the same number of "
                             "search runs)", "type": "boolean", "default": True},
            "methods": grid,
        },
    }
    variant = {"type": "object", "additionalProperties": False, "required": ["base", "options"], "properties": {
        "base": _ref("name"),
        "options": {"description": "method settings to change (alpha, temperature, window, wr_pair, ...)",
                    "type": "object", "minProperties": 1},
    }}
    properties: dict[str, Any] = {
        "study": _ref("name", description="the study's name; its results go to <results_dir>/<study>/"),
        "results_dir": {"type": "string", "default": "results",
                        "description": "root folder of all studies (tests point it at a temporary folder)"},
        "description": {"type": "string", "description": "free text, shown nowhere but in the file"},
        "tasks": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"enum": list(TASKS)}},
        "seeds": _seeds("student seeds"),
        "teacher_seeds": _seeds(
            "teacher seeds (default: the student seeds). A student of seed s distils from the teacher of seed s "
            "when that teacher exists, else from the teacher of the first teacher seed."),
        **sections,
        "use_task_settings": {"type": "boolean", "default": True, "description": (
            "take alpha, T, loss weights, lr and epochs from the methods file's per-task table")},
        "teacher_logits": {"type": "boolean", "default": False, "description": (
            "cache each teacher's training-set logits once (ckd cache-logits) for logit-only methods")},
        "teacher_cache": {"type": "boolean", "default": False, "description": (
            "compute once per (task, teacher) what the methods read from the teacher (ckd cache-teacher: logits, "
            "[CLS] vectors, CKD relation matrices, MiniLM's last-layer relations) and run those methods without a "
            "teacher forward; TinyBERT stage 1 and DistilBERT's cosine term keep the live teacher")},
        "teachers": _models("teachers by name (the name is a folder and the row label)", train=_ref(
            "train", description="train.* for fine-tuning this teacher, over the study's train")),
        "students": _models(
            "students by name (the name is a folder and the row label)",
            teacher=_ref("name", description="the teacher it distils from (may be left out when the study has one teacher)"),
            methods={**_names("this student's methods, instead of the study's (e.g. no PKD for a narrower student)")},
            general=_ref("name", description=(
                "start from the model/ of this general-distillation entry (general.<name>) instead of a `model`; "
                "its task runs record regime task-agnostic (fine-tuned) or general+task (distilled)"))),
        "methods": _names("methods of config/methods.yaml (`ckd distill --list-methods`) or names of variants below"),
        "variants": {"description": (
            "named method variants: a methods-file entry run with changed settings. Their records carry "
            "method=<variant name>, method_base=<base>, method_overrides=<options>."),
            "type": "object", "default": {}, "propertyNames": _ref("name"), "additionalProperties": variant},
        "resources": {"description": "per rule, what one job asks the scheduler for", "type": "object", "default": {},
                      "additionalProperties": False, "properties": {
                          rule: _ref("resources", default={})
                          for rule in ("finetune", "distill", "cache_logits", "aggregate", "pack_corpus", "general_distill", "dynabert")}},
        "search": search,
        **general_schema(),
        "dynabert": _dynabert_schema(),  # ckd/dynabert/study_schema.py
        "retries": {"type": ["integer", "null"], "minimum": 0, "description": (
            "how often a failed training job is retried (it resumes from its last checkpoint, attempt k asks for k x "
            "mem_mb and runtime). Not set: Snakemake's --retries (0 unless a profile sets it).")},
    }
    student = properties["students"]["additionalProperties"]  # a student gives a model, or a general entry to start from
    student.pop("required")
    student["oneOf"] = [{"required": ["model"], "not": {"required": ["general"]}}, {"required": ["general"], "not": {"required": ["model"]}}]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "description": (
            "A study of the ckd-repro workflow: teachers fine-tuned per (task, teacher, teacher seed), students "
            "distilled per (task, student, method, seed), then tables, plots and a report. One schema for every "
            "study file in config/. Unknown keys fail everywhere (additionalProperties: false)."),
        "type": "object", "additionalProperties": False,
        "required": ["study", "tasks", "seeds", "teachers", "students", "methods"],
        "$defs": defs, "properties": properties,
    }


def _dynabert_schema() -> dict[str, Any]:
    """The `dynabert:` study key, declared beside its rules' package (light module, no torch)."""
    from ckd.dynabert.study_schema import dynabert_schema

    return dynabert_schema()


def general_schema() -> dict[str, Any]:
    """The study keys of general (task-agnostic) distillation (ckd.general, workflow/rules/general.smk)."""
    corpus = {"description": (
        "unlabelled corpora by name, each {sources: [...], max_documents}: sources {glue: [tasks]} (the GLUE training "
        "sentences under $GLUE_DIR, labels dropped: in-domain text, not the paper's corpus), {synthetic: [tasks], size, "
        "seed}, {files: path, docs: line|blank, text_field}, {hub: id, config, split, text_field, max_documents} "
        "(ckd/corpus/sources.py checks them)"),
        "type": "object", "default": {}, "propertyNames": _ref("name"),
        "additionalProperties": {"type": "object", "required": ["sources"], "additionalProperties": False, "properties": {
            "sources": {"type": "array", "minItems": 1, "items": {"type": "object"}},
            "max_documents": {"type": ["integer", "null"], "minimum": 1}}}}
    entry = {"type": "object", "additionalProperties": False, "required": ["teacher", "student", "corpus", "method", "train"],
             "properties": {
                 "teacher": _ref("model", description="a pre-trained (not fine-tuned) model spec"),
                 "student": _ref("model", description="random init with a shape, truncate, or a checkpoint"),
                 "corpus": _ref("name", description="a name of the corpus section"),
                 "method": {"type": "string", "description": "a method of ckd/resources/general_methods.yaml"},
                 "method_options": {"type": "object", "default": {}},
                 "max_length": {"type": "integer", "minimum": 3, "default": 128},
                 "seed": _ref("seed", default=1),
                 "train": _ref("train", description="train.* of the general run (max_steps required; not the study's train)"),
                 "budget_source": {"type": "string", "description": "where the step budget comes from (documentation)"},
             }}
    general = {"description": (
        "general-distillation students by name: `ckd general-distill` on the packed corpus (rules pack_corpus, "
        "general_distill). A student whose model is {general: <name>} starts from it: fine-tuned (regime task-agnostic) "
        "or task-distilled (regime general+task)."),
        "type": "object", "default": {}, "propertyNames": _ref("name"), "additionalProperties": entry}
    return {"corpus": corpus, "general": general}


SCHEMA_FILE = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
HEADER = ("# GENERATED from ckd/config_schema.py by `python -m ckd.config_schema --write`: do not edit here,\n"
          "# edit ckd/config_schema.py and re-run it (tests/test_config_schema.py fails when they differ).\n")


def render() -> str:
    """The text of workflow/schemas/config.schema.yaml."""
    return HEADER + yaml.safe_dump(study_schema(), sort_keys=False, width=110, default_flow_style=None, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ckd.config_schema", description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write the schema to --path (default {SCHEMA_FILE})")
    parser.add_argument("--check", action="store_true", help="exit 1 when the file at --path differs from the generated one")
    parser.add_argument("--path", type=Path, default=SCHEMA_FILE)
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        from ckd.atomic import atomic_write_text

        atomic_write_text(args.path, text)
    elif args.check:
        if not args.path.is_file() or args.path.read_text(encoding="utf-8") != text:
            print(f"{args.path} differs from ckd/config_schema.py: run `python -m ckd.config_schema --write`", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
