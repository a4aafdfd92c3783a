"""Reader for the classic `glue_data/<TASK>/{train,dev,dev_matched,dev_mismatched}.tsv` layout.

The files are split on tabs only, with no quote handling (what `csv.QUOTE_NONE` does): sentences
contain bare `"` characters, and quote-aware readers merge rows or fail. Cell values are kept as
written, so tokens such as "null" or "NA" stay text. Each line is decoded on its own so that bad
bytes are reported with their line number; a UTF-8 BOM on the first line (MRPC) is dropped.

Per-task quirks handled by `LAYOUTS`:
* CoLA train/dev have no header: source, label, original_mark, sentence.
* STS-B's `score` and MNLI's `gold_label` are the last columns; columns are found by header name.
* Labels coded 0/1 (CoLA, SST-2, MRPC, QQP, WNLI) are translated to label *names* and then to
  indices through `TaskSpec.label_index`, so the index never depends on the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ckd.data.examples import Example
from ckd.data.tasks import TaskSpec, get_task
from ckd.errors import DataError

SPLIT_FILES = {
    "train": "train.tsv",
    "dev": "dev.tsv",
    "dev_matched": "dev_matched.tsv",
    "dev_mismatched": "dev_mismatched.tsv",
}


@dataclass(frozen=True)
class TsvLayout:
    """Where a task's texts and label live in its TSV files.

    With `header=True` the columns are header names; otherwise 0-based positions and
    `n_columns` fixes the row width.
    """

    header: bool
    text_columns: tuple[str | int, ...]
    label_column: str | int
    label_codes: dict[str, str] | None = None  # TSV value -> official label name; None: value is the name
    n_columns: int | None = None
    score_range: tuple[float, float] | None = None  # regression only


_BINARY = ("0", "1")

LAYOUTS: dict[str, TsvLayout] = {
    "cola": TsvLayout(header=False, n_columns=4, text_columns=(3,), label_column=1,
                      label_codes=dict(zip(_BINARY, ("unacceptable", "acceptable")))),
    "sst2": TsvLayout(header=True, text_columns=("sentence",), label_column="label",
                      label_codes=dict(zip(_BINARY, ("negative", "positive")))),
    "mrpc": TsvLayout(header=True, text_columns=("#1 String", "#2 String"), label_column="Quality",
                      label_codes=dict(zip(_BINARY, ("not_equivalent", "equivalent")))),
    "stsb": TsvLayout(header=True, text_columns=("sentence1", "sentence2"), label_column="score",
                      score_range=(0.0, 5.0)),
    "qqp": TsvLayout(header=True, text_columns=("question1", "question2"), label_column="is_duplicate",
                     label_codes=dict(zip(_BINARY, ("not_duplicate", "duplicate")))),
    "mnli": TsvLayout(header=True, text_columns=("sentence1", "sentence2"), label_column="gold_label"),
    "qnli": TsvLayout(header=True, text_columns=("question", "sentence"), label_column="label"),
    "rte": TsvLayout(header=True, text_columns=("sentence1", "sentence2"), label_column="label"),
    "wnli": TsvLayout(header=True, text_columns=("sentence1", "sentence2"), label_column="label",
                      label_codes=dict(zip(_BINARY, ("not_entailment", "entailment")))),
}


def glue_split_path(task: str | TaskSpec, split: str, glue_dir: str | Path) -> Path:
    """`<glue_dir>/<TASK>/<split>.tsv`, checked to exist."""
    task = get_task(task)
    if task.glue_dir is None:
        raise DataError(f"task {task.name} is synthetic and has no GLUE files; use source='synthetic'")
    if split not in task.splits or split not in SPLIT_FILES:
        raise DataError(f"task {task.name} has no split {split!r}; use one of {', '.join(task.splits)}")
    root = Path(glue_dir)
    path = root / task.glue_dir / SPLIT_FILES[split]
    if not path.is_file():
        raise DataError(
            f"GLUE file not found: {path}; the glue_dir layout expects <GLUE_DIR>/{task.glue_dir}/"
            f"{SPLIT_FILES[split]} (set GLUE_DIR or glue_dir to the folder holding {task.glue_dir}/, "
            f"or use source='hub')")
    return path


def read_glue_split(task: str | TaskSpec, split: str, glue_dir: str | Path) -> list[Example]:
    """All labelled examples of one split of one task, in file order."""
    task = get_task(task)
    return read_glue_tsv(glue_split_path(task, split, glue_dir), task)


def read_glue_tsv(path: str | Path, task: str | TaskSpec) -> list[Example]:
    """Parse one task TSV file; every problem is a DataError naming the file and 1-based line."""
    task = get_task(task)
    path = Path(path)
    layout = LAYOUTS[task.name]
    guid_prefix = f"{task.glue_dir}/{path.name}"
    examples: list[Example] = []
    n_columns = layout.n_columns
    text_idx: tuple[int, ...] = tuple(c for c in layout.text_columns if isinstance(c, int))
    label_idx = layout.label_column if isinstance(layout.label_column, int) else -1
    for lineno, fields in _tsv_rows(path):
        if layout.header and n_columns is None:
            n_columns, text_idx, label_idx = _resolve_header(path, lineno, fields, layout, task)
            continue
        if len(fields) != n_columns:
            raise DataError(f"{path}: line {lineno}: expected {n_columns} tab-separated columns, "
                            f"found {len(fields)}; fix or remove the row (a stray tab or newline "
                            f"inside a sentence?)")
        texts = [fields[i] for i in text_idx]
        for i, text in zip(text_idx, texts):
            if not text.strip():
                raise DataError(f"{path}: line {lineno}: empty text in column {_column_name(layout, i, text_idx)}; "
                                f"fill in or remove the row")
        label = _parse_label(path, lineno, fields[label_idx], layout, task)
        examples.append(Example(text_a=texts[0], text_b=texts[1] if len(texts) > 1 else None,
                                label=label, guid=f"{guid_prefix}:{lineno}"))
    if not examples:
        raise DataError(f"{path}: no examples (the file is empty or has only a header); "
                        f"restore the file from the GLUE download")
    return examples


def _tsv_rows(path: Path):
    """(1-based line number, tab-separated fields) for each non-blank line, no quote handling."""
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            raw = raw.rstrip(b"\n").removesuffix(b"\r")
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}: line {lineno}: bytes are not valid UTF-8 (byte {exc.start + 1} "
                                f"of the line); re-save the file as UTF-8") from None
            if line:
                yield lineno, line.split("\t")


def _resolve_header(path, lineno, header, layout, task):
    empty = [i + 1 for i, name in enumerate(header) if not name.strip()]
    if empty:
        trailing = empty[-1] == len(header)
        raise DataError(f"{path}: line {lineno}: the header has an empty column name (column {empty[0]} of {len(header)}"
                        f"{'; a stray tab at the end of the line?' if trailing else ''}); remove the extra tab from "
                        f"the header line")
    wanted = (*layout.text_columns, layout.label_column)
    missing = [name for name in wanted if name not in header]
    if missing:
        raise DataError(f"{path}: line {lineno}: header lacks column(s) {', '.join(map(repr, missing))} "
                        f"(found {header}); a {task.display} file needs columns {list(wanted)}")
    text_idx = tuple(header.index(name) for name in layout.text_columns)
    return len(header), text_idx, header.index(layout.label_column)


def _column_name(layout: TsvLayout, index: int, text_idx: tuple[int, ...]) -> str:
    column = layout.text_columns[text_idx.index(index)]
    return repr(column) if isinstance(column, str) else str(column + 1)


def _parse_label(path, lineno, value, layout, task) -> int | float:
    value = value.strip()
    if task.is_regression:
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        low, high = layout.score_range or (-math.inf, math.inf)
        if not (low <= score <= high):  # also rejects nan
            raise DataError(f"{path}: line {lineno}: score {value!r} is not a number in [{low:g}, {high:g}]; "
                            f"fix the last column")
        return score
    name = layout.label_codes.get(value) if layout.label_codes else value
    if name is None or name not in (task.labels or ()):
        allowed = ", ".join(layout.label_codes) if layout.label_codes else ", ".join(task.labels)
        raise DataError(f"{path}: line {lineno}: label {value!r} is not one of {allowed}; "
                        f"fix the row or check that the file belongs to {task.display}")
    return task.label_index(name)
