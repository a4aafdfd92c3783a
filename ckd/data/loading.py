"""`load_split`: one interface over the three data sources, plus subsampling and `data_fingerprint`;
`run_splits`: what one run trains and is scored on, including the selection split carved from the
training set for hyper-parameter search (`carve_selection`, config key data.selection_split)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from pathlib import Path

from ckd.data.examples import Example
from ckd.data.glue_tsv import read_glue_split
from ckd.data.hub import read_hub_split
from ckd.data.synthetic import read_synthetic_split
from ckd.data.tasks import TaskSpec, get_task
from ckd.errors import ConfigError, DataError

SOURCES = ("glue_dir", "hub", "synthetic", "auto")
_SOURCE_OPTIONS = {
    "glue_dir": (),
    "hub": ("hub_dataset", "cache_dir"),
    "synthetic": ("synthetic_sizes", "synthetic_seed", "synthetic_noise"),
}


def load_split(task: str | TaskSpec, split: str, *, source: str = "glue_dir", glue_dir: str | Path | None = None,
               max_examples: int | None = None, subsample_seed: int = 0, **source_options) -> list[Example]:
    """Examples of one split ("train", "dev", "dev_matched", "dev_mismatched") of one task.

    source: "glue_dir" (folder from `glue_dir` or $GLUE_DIR), "hub", "synthetic", or "auto"
    (synthetic for syn-* tasks, else the GLUE folder when one is set, else the hub).
    max_examples: keep a seeded random subset of that size, in the original order.
    source_options: hub_dataset, cache_dir (hub); synthetic_sizes, synthetic_seed, synthetic_noise
    (synthetic); options meant for another source are ignored, so one config can serve all.
    """
    task = get_task(task)
    if split not in task.splits:
        raise DataError(f"task {task.name} has no split {split!r}; use one of {', '.join(task.splits)}")
    source = resolve_source(task, source, glue_dir)
    known = {name for names in _SOURCE_OPTIONS.values() for name in names}
    unknown = sorted(set(source_options) - known)
    if unknown:
        raise DataError(f"unknown data option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    options = {k: v for k, v in source_options.items() if k in _SOURCE_OPTIONS[source]}
    if source == "synthetic":
        if not task.is_synthetic:
            raise DataError(f"task {task.name} is a GLUE task; source='synthetic' serves only "
                            f"syn-sentiment, syn-pair, syn-similarity")
        examples = read_synthetic_split(task, split, **options)
    elif source == "hub":
        examples = read_hub_split(task, split, **options)
    else:
        examples = read_glue_split(task, split, _glue_dir(glue_dir))
    return subsample(examples, max_examples, subsample_seed)


def resolve_source(task: str | TaskSpec, source: str, glue_dir: str | Path | None = None) -> str:
    """The concrete source ("glue_dir", "hub" or "synthetic") that `source` means for `task`."""
    task = get_task(task)
    if source not in SOURCES:
        raise DataError(f"unknown data source {source!r}; use one of {', '.join(SOURCES)}")
    if source != "auto":
        return source
    if task.is_synthetic:
        return "synthetic"
    root = glue_dir or os.environ.get("GLUE_DIR")
    if root and (Path(root) / task.glue_dir).is_dir():
        return "glue_dir"
    return "hub"


def _glue_dir(glue_dir: str | Path | None) -> Path:
    value = glue_dir if glue_dir is not None else os.environ.get("GLUE_DIR")
    if not value:
        raise DataError("no GLUE folder given: set GLUE_DIR (or pass glue_dir) to the folder holding "
                        "CoLA/, SST-2/, ..., or use source='hub'")
    path = Path(value)
    if not path.is_dir():
        raise DataError(f"GLUE folder {path} does not exist; set GLUE_DIR (or glue_dir) to the folder "
                        f"holding CoLA/, SST-2/, ...")
    return path


def subsample(examples: list[Example], max_examples: int | None, seed: int = 0) -> list[Example]:
    """A seeded random subset of `max_examples` rows in their original order (all rows if fewer)."""
    if max_examples is not None and (isinstance(max_examples, bool) or not isinstance(max_examples, int)
                                     or max_examples < 1):
        raise DataError(f"max_examples={max_examples!r}; use a positive integer or None for all rows")
    if max_examples is None or max_examples >= len(examples):
        return list(examples)
    keep = sorted(random.Random(seed).sample(range(len(examples)), max_examples))
    return [examples[i] for i in keep]


def data_fingerprint(examples: list[Example]) -> str:
    """sha256 over the texts and labels, in order (guids are left out: they name files, not data)."""
    digest = hashlib.sha256()
    for example in examples:
        row = [example.text_a, example.text_b, example.label]
        digest.update(json.dumps(row, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


# ------------------------------------------------------------------ the carved selection split

SELECTION_SPLIT = "selection"
SELECTION_DEFAULTS = {"fraction": 0.1, "max_examples": 2000, "seed": 0}
_REGRESSION_STRATA = 10


def selection_spec(value) -> dict | None:
    """The run config's `data.selection_split`, checked and completed with SELECTION_DEFAULTS.

    None (the default): the run trains on the training set and is scored on the task's dev split(s).
    A mapping {fraction, max_examples, seed} (missing keys take the defaults: 0.1, 2000, 0): the run
    trains on the training set minus a carved split and is scored on that split only, named
    "selection" in its record; the dev split is never read. Raises ConfigError naming the bad key.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"config key data.selection_split must be null or a mapping {{fraction, max_examples, seed}}, "
                          f"got {value!r}")
    unknown = sorted(set(value) - set(SELECTION_DEFAULTS))
    if unknown:
        raise ConfigError(f"config key data.selection_split.{unknown[0]} is unknown; known: {', '.join(SELECTION_DEFAULTS)}")
    spec = {**SELECTION_DEFAULTS, **value}
    fraction, cap, seed = spec["fraction"], spec["max_examples"], spec["seed"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError(f"config key data.selection_split.fraction must be a number in (0, 1), got {fraction!r}")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise ConfigError(f"config key data.selection_split.max_examples must be a positive integer or null, got {cap!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"config key data.selection_split.seed must be a non-negative integer (as numpy seeds are), got {seed!r}")
    return {"fraction": float(fraction), "max_examples": cap, "seed": seed}


def _strata(examples: list[Example], task: TaskSpec) -> list[int]:
    """The stratum of each example: its class, or (regression) its score's decile by rank."""
    if not task.is_regression:
        return [int(example.label) for example in examples]
    order = sorted(range(len(examples)), key=lambda i: (float(examples[i].label), i))
    strata = [0] * len(examples)
    for rank, index in enumerate(order):
        strata[index] = rank * _REGRESSION_STRATA // len(examples)
    return strata


def carve_selection(examples: list[Example], task: str | TaskSpec, *, fraction: float = 0.1,
                    max_examples: int | None = 2000, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """(rest, carved): a seeded split of a training set, stratified, both parts in the original order.

    The carved part has min(max_examples, round(fraction * N)) examples (at least one per stratum),
    drawn by scikit-learn's stratified shuffle split (`train_test_split(stratify=...)`) with
    random_state=seed. Strata: the label for classification; for regression ten equal-count bins of
    the score by rank. Same examples, fraction, cap and seed give the same split on any machine
    with the same scikit-learn (run records carry both parts' data fingerprints, so a change shows).
    Raises DataError when the set is too small to carve (a class with one example, or fewer
    examples than strata).
    """
    from sklearn.model_selection import train_test_split

    task = get_task(task)
    size = round(fraction * len(examples))
    if max_examples is not None:
        size = min(size, max_examples)
    strata = _strata(examples, task)
    size = max(size, len(set(strata)))
    if size >= len(examples):
        raise DataError(f"task {task.name}: cannot carve {size} selection examples from {len(examples)} training "
                        "examples; use more training data (data.max_train_examples) or a smaller data.selection_split.fraction")
    try:
        rest, carved = train_test_split(list(range(len(examples))), test_size=size, random_state=seed, shuffle=True,
                                        stratify=strata)
    except ValueError as exc:
        raise DataError(f"task {task.name}: cannot carve a stratified selection split from {len(examples)} training "
                        f"examples ({exc}); use more training data") from None
    return [examples[i] for i in sorted(rest)], [examples[i] for i in sorted(carved)]


def _load_options(data: dict) -> dict:
    """load_split's keyword arguments from a run config's `data` section."""
    options = {"source": data["source"], "glue_dir": data["glue_dir"], "subsample_seed": data["subsample_seed"]}
    sizes = {"train": data.get("synthetic_train_size"), "dev": data.get("synthetic_dev_size")}
    sizes = {split: size for split, size in sizes.items() if size}
    if sizes:
        options["synthetic_sizes"] = sizes
    return options


def run_splits(task: str | TaskSpec, data: dict, *, evaluation: bool = True) -> tuple[list[Example], dict[str, list[Example]]]:
    """The examples one run trains on and the splits it is scored on, from its config's `data` section.

    Without data.selection_split: the training set (data.max_train_examples subsample) and every dev
    split of the task (data.max_eval_examples subsample each). With it: the training set minus the
    carved split (`carve_selection`, carved after the subsample) and {"selection": the carved
    split}; no dev file is opened. evaluation=False returns no evaluation splits (and, without a
    selection split, opens no dev file either).
    """
    task = get_task(task)
    options = _load_options(data)
    train = load_split(task, "train", max_examples=data["max_train_examples"], **options)
    spec = selection_spec(data.get("selection_split"))
    if spec is not None:
        train, carved = carve_selection(train, task, **spec)
        return train, ({SELECTION_SPLIT: carved} if evaluation else {})
    if not evaluation:
        return train, {}
    return train, {split: load_split(task, split, max_examples=data["max_eval_examples"], **options)
                   for split in task.dev_splits}


def scored_task(task: str | TaskSpec, data: dict) -> TaskSpec:
    """The task as a run scores it: with data.selection_split, its only evaluation split (model
    selection, the record's metrics) is "selection"; otherwise the task unchanged."""
    task = get_task(task)
    if selection_spec(data.get("selection_split")) is None:
        return task
    report = ((f"{task.display} ({SELECTION_SPLIT})", SELECTION_SPLIT, task.selection_metric),)
    return dataclasses.replace(task, dev_splits=(SELECTION_SPLIT,), report=report)
