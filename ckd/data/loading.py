"""`load_split`: one interface over the three data sources, plus subsampling and `data_fingerprint`."""

from __future__ import annotations

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
from ckd.errors import DataError

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
