"""The relation explorer of the relations notebook: a teacher and a student checkpoint on one input,
the distributions and angles the four CKD relation terms compare (by their dense definition,
`ckd.losses.relations_dense`; drawn by `ckd.relation_figures`, re-exported here), and the terms' values
from `ckd.losses.relations` with the run's layer map, window and weights. Run folders are found with
`ckd.paths`; `ckd.explore` re-exports everything here."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from ckd import paths
from ckd.errors import CkdError
from ckd.relation_figures import ltr_figure, wr_pair_figure, wr_triple_figure


@dataclass
class RelationView:
    """The relations CKD compares for one input, teacher vs student.

    wr_*: (K, n, n) WR pair distributions, row i = softmax over j != i of cos(h_i, h_j) in each mapped
    layer; ltr_*: (n, K, K) LTR pair distributions, per token, row a = softmax over b != a of the
    cosines between the token's mapped-layer vectors; angle_*: (K, n, n, n) WR triple angles
    psi(i; j, k) (0 for degenerate triples), the quantity the triple term compares.
    losses: the four CKD relation terms on this input (ckd.losses.relations), with the run's weights.
    per_layer: WR pair and WR triple per mapped layer; per_token: LTR pair and LTR triple per token.
    """

    text: str
    text_b: str | None
    tokens: list[str]
    teacher: str
    student: str
    task: str | None
    layer_map: str
    pairs: list[tuple[int, int]]
    window: int | None
    wr_teacher: np.ndarray
    wr_student: np.ndarray
    ltr_teacher: np.ndarray
    ltr_student: np.ndarray
    angle_teacher: np.ndarray
    angle_student: np.ndarray
    losses: pd.DataFrame
    per_layer: pd.DataFrame
    per_token: pd.DataFrame
    predictions: pd.DataFrame
    record: dict | None = None

    def layer_names(self) -> list[str]:
        return [f"T{t}↔S{s}" for t, s in self.pairs]


def _read_record(folder: Path) -> dict | None:
    path = folder / "record.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return None


def _run_and_model(path: Path) -> tuple[Path | None, Path]:
    """(run folder or None, model folder) from a run folder (holding model/) or a model folder."""
    path = Path(path).expanduser()
    if (path / "model" / "config.json").is_file():
        return path, path / "model"
    if (path / "config.json").is_file():
        return (path.parent if (path.parent / "record.json").is_file() else None), path
    raise CkdError(f"{path}: neither a run folder with model/ nor a saved model folder (config.json); "
                   "point it at results/<study>/runs/<task>/<student>/<method>/seed<k>")


def _resolve_teacher(record: dict, run_dir: Path) -> Path | None:
    """The teacher model folder a student record names, found as written or relative to its study folder."""
    ref = ((record.get("teacher") or {}).get("name_or_path") or (record.get("config", {}).get("teacher") or {}).get("name_or_path"))
    if not ref:
        return None
    ref_path = Path(ref)
    if ref_path.is_dir():
        return ref_path
    parts = ref_path.parts
    study_dir = paths.study_of(run_dir)
    if paths.TEACHERS in parts and study_dir is not None:  # the study was moved: look in the run's own study
        candidate = study_dir.joinpath(*parts[parts.index(paths.TEACHERS):])
        if candidate.is_dir():
            return candidate
    return None


def _saved_runs(study_dir, task: str | None = None, method: str | None = None, model: str | None = None,
                seed: int | None = None) -> list[tuple[paths.RunId, Path]]:
    """The study's teacher and run folders with a saved model, matching the given fields, by model and seed."""
    found = [(run, folder) for run, folder in paths.run_folders(study_dir)
             if (folder / "model" / "config.json").is_file()
             and all(want is None or have == want for have, want in zip(run, (task, model, method, seed)))]
    return sorted(found, key=lambda item: (item[0].model, item[0].seed))


def default_task(study_dir: str | os.PathLike, method: str = "ckd") -> str:
    """A task of the study with a saved `method` student: single-sentence tasks first (shorter inputs,
    clearer heatmaps), then in table order."""
    from ckd.data.tasks import get_task
    from ckd.tables.common import task_sort_key

    tasks = {run.task for run, _ in _saved_runs(study_dir, method=method)}
    if not tasks:
        raise CkdError(f"no finished {method} run with a saved model under {Path(study_dir) / paths.RUNS}; run the study "
                       "(make demo) or pick another method")
    return min(tasks, key=lambda t: (get_task(t).is_pair, task_sort_key(get_task(t).name)))


def find_run(study_dir: str | os.PathLike, task: str | None = None, method: str = "ckd", student: str | None = None,
             seed: int | None = None) -> Path:
    """The run folder runs/<task>/<student>/<method>/seed<k> of a study (first student and lowest seed
    by default; task None: `default_task`)."""
    from ckd.data.tasks import get_task

    study_dir = Path(study_dir)
    task = get_task(task if task is not None else default_task(study_dir, method)).name
    candidates = _saved_runs(study_dir, task, method, student, seed)
    if not candidates:
        raise CkdError(f"no finished {method} run with a saved model under {study_dir / paths.RUNS / task}"
                       f"{'/' + student if student else ''}; run the study (make demo) or pick another method/task")
    return candidates[0][1]


def find_teacher(study_dir: str | os.PathLike, task: str, seed: int | None = None) -> Path:
    """The teacher run folder teachers/<task>/<teacher>/seed<k> of a study (lowest seed by default)."""
    from ckd.data.tasks import get_task

    study_dir = Path(study_dir)
    task = get_task(task).name
    candidates = _saved_runs(study_dir, task, paths.TEACHER_METHOD, seed=seed)
    if not candidates:
        raise CkdError(f"no fine-tuned teacher with a saved model under {study_dir / paths.TEACHERS / task}")
    return candidates[0][1]


def example_sentence(task: str, index: int = 0, *, split: str = "dev", source: str = "auto") -> tuple[str, str | None]:
    """(text_a, text_b) of one example of a task: for the synthetic tasks a dev sentence of their
    vocabulary (source "auto": synthetic for syn-*, else $GLUE_DIR or the hub)."""
    from ckd.data.loading import load_split

    example = load_split(task, split, source=source)[index]
    return example.text_a, example.text_b


@lru_cache(maxsize=8)
def _load(model_dir: Path, task: str | None):
    """A saved model (eval mode) and its tokenizer; cached, as a notebook loads the same teacher for
    several students."""
    with warnings.catch_warnings():
        # tqdm.auto, imported with transformers, warns in a notebook without ipywidgets
        warnings.simplefilter("ignore")
        from transformers import AutoConfig
        from transformers.utils import logging as hf_logging

    from ckd.models import build_model

    if task is not None:  # the task's label names, and a refusal when the head does not fit it
        shape = {"task": task, "head": "trained"}
    else:
        config = AutoConfig.from_pretrained(str(model_dir))
        shape = {"num_labels": int(config.num_labels), "regression": getattr(config, "problem_type", None) == "regression"}
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights" bars would fill the notebook's output
    try:
        built = build_model({"name_or_path": str(model_dir), "init": "pretrained"}, role=str(model_dir), **shape)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    built.model.eval()
    return built


def _method_settings(record: dict | None) -> tuple[dict[str, float], dict]:
    """(term -> weight, settings) of a student's run record (CKD defaults when there is none)."""
    from ckd.losses.relations import DEFAULT_WINDOW

    defaults = {"wr_pair": 1.0, "wr_triple": 10.0, "ltr_pair": 1.0, "ltr_triple": 10.0}
    resolved = (record or {}).get("method_resolved") or {}
    settings = dict(resolved.get("settings") or {})
    settings.setdefault("window", DEFAULT_WINDOW)
    settings.setdefault("released_window_quirks", False)
    terms = resolved.get("terms")
    if terms:
        weights = {t["name"]: float(t["weight"]) for t in terms if t["name"] in defaults}
        # terms the method does not train on are still shown, with weight 0
        weights = {name: weights.get(name, 0.0) for name in defaults}
    else:
        weights = {name: float(settings.get(name, w)) for name, w in defaults.items()}
    return weights, settings


def explore_relations(student: str | os.PathLike, teacher: str | os.PathLike | None = None,
                      text: str | None = None, text_b: str | None = None, *, layer_map: str | None = None,
                      window: int | None | str = "record", max_length: int = 128) -> RelationView:
    """Run a teacher and a student on one input and collect the relations CKD compares.

    student: a run folder (runs/<task>/<student>/<method>/seed<k>, its record gives the task, layer
    map, term weights and window) or a saved model folder. teacher: a run or model folder; default
    the teacher the student's record names. text/text_b: the input (default: the task's first dev
    example). layer_map: default the record's (else uniform+emb). window: the WR triple window
    (default the record's setting; None = all triples).
    """
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tqdm.auto (through transformers) warns in a notebook without ipywidgets
        from ckd.layer_maps import layer_map as build_layer_map
        from ckd.losses.relations import ltr_pair, ltr_triple, wr_pair, wr_triple
        from ckd.models import check_same_tokenizer
        from ckd.runs import run_forward

    run_dir, student_dir = _run_and_model(Path(student))
    record = _read_record(run_dir) if run_dir is not None else None
    task = record.get("task") if record else None
    if teacher is None:
        found = _resolve_teacher(record, run_dir) if record else None
        if found is None and record and paths.study_of(run_dir) is not None:
            try:  # the study's own teacher for the task
                found = find_teacher(paths.study_of(run_dir), record["task"])
            except CkdError:
                found = None
        if found is None:
            raise CkdError(f"{student}: give the teacher (a run or model folder): the student's record names none that exists")
        teacher = found
    teacher_run, teacher_dir = _run_and_model(Path(teacher))
    if text is None:
        if task is None:
            raise CkdError("give text= (the student has no run record naming its task)")
        text, text_b = example_sentence(task)

    t_built, s_built = _load(Path(teacher_dir).resolve(), task), _load(Path(student_dir).resolve(), task)
    check_same_tokenizer(t_built.tokenizer, s_built.tokenizer, str(teacher_dir), str(student_dir))
    tokenizer = s_built.tokenizer
    encoded = tokenizer(text, text_b, truncation=True, max_length=max_length, return_tensors="pt",
                        return_token_type_ids=True)
    batch = {k: encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        t_out = run_forward(t_built.model, batch, hidden=True, capture=False)
        s_out = run_forward(s_built.model, batch, hidden=True, capture=False)

    weights, settings = _method_settings(record)
    map_name = layer_map or ((record or {}).get("layer_map") or {}).get("name") or "uniform+emb"
    lmap = build_layer_map(map_name, t_built.model.config.num_hidden_layers, s_built.model.config.num_hidden_layers)
    t_states, s_states = lmap.select(t_out.hidden_states, s_out.hidden_states)
    mask = batch["attention_mask"]
    if window == "record":
        window = settings.get("window")
    quirks = bool(settings.get("released_window_quirks", False))
    triple_opts = {"window": window, "released_window_quirks": quirks if window is not None else False}

    with torch.no_grad():
        values = {
            "wr_pair": float(wr_pair(t_states, s_states, mask)),
            "wr_triple": float(wr_triple(t_states, s_states, mask, **triple_opts)),
            "ltr_pair": float(ltr_pair(t_states, s_states, mask)),
            "ltr_triple": float(ltr_triple(t_states, s_states, mask)),
        }
        per_layer = [{"layers": f"T{t}↔S{s}", "teacher layer": t, "student layer": s,
                      "wr_pair": float(wr_pair([th], [sh], mask)),
                      "wr_triple": float(wr_triple([th], [sh], mask, **triple_opts))}
                     for (t, s), th, sh in zip(lmap.pairs, t_states, s_states)]
        n = mask.shape[1]
        per_token = []
        for i in range(n):
            only = torch.zeros_like(mask)
            only[0, i] = 1
            per_token.append({"position": i, "ltr_pair": float(ltr_pair(t_states, s_states, only)),
                              "ltr_triple": float(ltr_triple(t_states, s_states, only))})
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    losses = pd.DataFrame([{"term": name, "value": value, "weight": weights[name], "weighted": value * weights[name]}
                           for name, value in values.items()])
    per_token_frame = pd.DataFrame(per_token)
    per_token_frame.insert(1, "token", tokens)

    labels = _label_names(task, t_out.logits.shape[-1])
    predictions = pd.DataFrame({
        "label": labels,
        "teacher": _probabilities(t_out.logits[0], task),
        "student": _probabilities(s_out.logits[0], task),
    })
    return RelationView(
        text=text, text_b=text_b, tokens=tokens, teacher=str(teacher_dir), student=str(student_dir), task=task,
        layer_map=map_name, pairs=[tuple(p) for p in lmap.pairs], window=window,
        **_heatmap_data("teacher", t_states), **_heatmap_data("student", s_states),
        losses=losses, per_layer=pd.DataFrame(per_layer), per_token=per_token_frame, predictions=predictions,
        record=record,
    )


def _heatmap_data(side: str, states) -> dict[str, np.ndarray]:
    """The RelationView fields of one side from its K mapped (1, n, d) states, by the dense definition
    (ckd.losses.relations_dense): WR pair (K, n, n), LTR pair (n, K, K) distributions, angles (K, n, n, n)."""
    import torch

    from ckd.losses.relations_dense import angles, off_diagonal, pair_distributions

    h = torch.stack([layer[0] for layer in states]).double()  # (K, n, d)
    K, n = h.shape[:2]
    return {f"wr_{side}": pair_distributions(h, off_diagonal(n)).numpy(),
            f"ltr_{side}": pair_distributions(h.transpose(0, 1), off_diagonal(K)).numpy(),
            f"angle_{side}": angles(h).numpy()}


def _label_names(task: str | None, count: int) -> list[str]:
    if task is not None:
        from ckd.data.tasks import get_task

        spec = get_task(task)
        if spec.labels:
            return list(spec.labels)
        if spec.is_regression:
            return ["score"]
    return [f"label {i}" for i in range(count)]


def _probabilities(logits, task: str | None) -> list[float]:
    if logits.shape[-1] == 1:
        return [float(logits[0])]
    return logits.double().softmax(-1).tolist()


def compare_students(study_dir: str | os.PathLike, task: str, methods: Sequence[str], text: str,
                     text_b: str | None = None, *, teacher: str | os.PathLike | None = None,
                     layer_map: str | None = "uniform+emb", window: int | None = 21) -> pd.DataFrame:
    """The four CKD relation terms on one input for the first-seed student of each method (methods the
    study lacks are skipped): how close each student's relations are to the teacher's, lower is closer.
    Every student is measured the same way (this layer map and window, unweighted values), whatever
    its method trained on."""
    rows = []
    for method in methods:
        try:
            run = find_run(study_dir, task, method)
        except CkdError:
            continue
        view = explore_relations(run, teacher, text, text_b, layer_map=layer_map, window=window)
        row = {"method": method, "run": str(run)}
        row.update({r["term"]: r["value"] for _, r in view.losses.iterrows()})
        rows.append(row)
    return pd.DataFrame(rows, columns=["method", "wr_pair", "wr_triple", "ltr_pair", "ltr_triple", "run"])


__all__ = ["RelationView", "compare_students", "default_task", "example_sentence", "explore_relations", "find_run",
           "find_teacher", "ltr_figure", "wr_pair_figure", "wr_triple_figure"]
