"""The relation explorer of the relations notebook: a teacher and a student checkpoint on one input,
the distributions and angles the four CKD relation terms compare (heatmaps), and the terms' values
from `ckd.losses.relations` with the run's layer map, window and weights. Run folders are found with
`ckd.paths`; `ckd.explore` re-exports everything here."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ckd import paths
from ckd.errors import CkdError
from ckd.plots import agg_figure


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
    from ckd.aggregate import task_sort_key
    from ckd.data.tasks import get_task

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


def _pair_distributions(states) -> np.ndarray:
    """Row softmax (over j != i) of cosines between the rows of each (m, d) matrix in a (..., m, d) array."""
    import torch

    h = torch.as_tensor(states, dtype=torch.float64)
    unit = torch.nn.functional.normalize(h, dim=-1)
    cos = unit @ unit.transpose(-1, -2)
    m = h.shape[-2]
    if m < 2:
        return np.zeros(tuple(h.shape[:-1]) + (m,))
    eye = torch.eye(m, dtype=torch.bool)
    return cos.masked_fill(eye, -math.inf).softmax(dim=-1).masked_fill(eye, 0.0).numpy()


def _angles(states) -> np.ndarray:
    """psi(i; j, k) = cos of the angle at i between h_j and h_k, for (m, d) -> (m, m, m); 0 when j or k == i."""
    import torch

    h = torch.as_tensor(states, dtype=torch.float64)
    diff = h.unsqueeze(0) - h.unsqueeze(1)          # diff[i, j] = h_j - h_i
    norm = diff.norm(dim=-1, keepdim=True)
    unit = torch.where(norm > 1e-12, diff / norm.clamp_min(1e-12), torch.zeros_like(diff))
    return (unit @ unit.transpose(-1, -2)).numpy()   # [i, j, k]


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

    t_np = [h[0].double().numpy() for h in t_states]
    s_np = [h[0].double().numpy() for h in s_states]
    labels = _label_names(task, t_out.logits.shape[-1])
    predictions = pd.DataFrame({
        "label": labels,
        "teacher": _probabilities(t_out.logits[0], task),
        "student": _probabilities(s_out.logits[0], task),
    })
    return RelationView(
        text=text, text_b=text_b, tokens=tokens, teacher=str(teacher_dir), student=str(student_dir), task=task,
        layer_map=map_name, pairs=[tuple(p) for p in lmap.pairs], window=window,
        wr_teacher=np.stack([_pair_distributions(h) for h in t_np]),
        wr_student=np.stack([_pair_distributions(h) for h in s_np]),
        ltr_teacher=_pair_distributions(np.stack(t_np, axis=1)),
        ltr_student=_pair_distributions(np.stack(s_np, axis=1)),
        angle_teacher=np.stack([_angles(h) for h in t_np]), angle_student=np.stack([_angles(h) for h in s_np]),
        losses=losses, per_layer=pd.DataFrame(per_layer), per_token=per_token_frame, predictions=predictions,
        record=record,
    )


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


def _off_diagonal(matrix: np.ndarray) -> np.ndarray:
    """The matrix with its diagonal (j = i, excluded from every pair softmax) set to NaN (drawn grey)."""
    out = np.array(matrix, dtype=float)
    np.fill_diagonal(out, np.nan)
    return out


def _range(*matrices: np.ndarray) -> tuple[float, float]:
    values = np.concatenate([m[np.isfinite(m)].ravel() for m in matrices])
    if not values.size:
        return 0.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    return (lo, hi) if hi > lo else (lo - 1e-9, hi + 1e-9)


def _heatmap(ax, matrix: np.ndarray, labels: Sequence[str] | None, title: str, vmax: float, cmap: str = "viridis",
             vmin: float = 0.0):
    from matplotlib import colormaps

    palette = colormaps[cmap].with_extremes(bad="lightgrey")
    image = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap=palette)
    if labels is not None:
        ticks = range(len(labels))
        size = 6 if len(labels) <= 20 else 5
        ax.set_xticks(ticks, labels, rotation=90, fontsize=size)
        ax.set_yticks(ticks, labels, fontsize=size)
    ax.set_title(title, fontsize=8)
    return image


def wr_pair_figure(view: RelationView) -> Figure:
    """WR pair distributions per mapped layer: teacher on top, student below, one column per layer
    pair, each column on one colour scale; the title gives that layer's WR pair loss."""
    K = len(view.pairs)
    n = len(view.tokens)
    size = max(2.6, min(5.0, 0.16 * n + 1.2))
    fig = agg_figure(Figure(figsize=(size * K + 1.2, 2 * size + 0.8), layout="constrained"))
    for k, (t, s) in enumerate(view.pairs):
        t_mat, s_mat = _off_diagonal(view.wr_teacher[k]), _off_diagonal(view.wr_student[k])
        vmin, vmax = _range(t_mat, s_mat)
        loss = view.per_layer.iloc[k]["wr_pair"]
        top = fig.add_subplot(2, K, k + 1)
        _heatmap(top, t_mat, view.tokens, f"teacher h[{t}]", vmax, vmin=vmin)
        bottom = fig.add_subplot(2, K, K + k + 1)
        image = _heatmap(bottom, s_mat, view.tokens, f"student h[{s}] · WR pair KL {loss:.3g}", vmax, vmin=vmin)
        fig.colorbar(image, ax=[top, bottom], shrink=0.6)
    fig.suptitle("Word Relation (pair): row i = softmax over j≠i of cos(h_i, h_j)", fontsize=10)
    return fig


def ltr_figure(view: RelationView, positions: Sequence[int] | None = None, count: int = 3) -> Figure:
    """LTR pair distributions (K x K over the mapped layers), teacher on top and student below: the
    average over tokens, then the tokens given by `positions` (default: the `count` tokens with the
    largest LTR pair loss)."""
    if positions is None:
        positions = list(view.per_token.sort_values("ltr_pair", ascending=False)["position"][:count])
    panels = [("mean over tokens", view.ltr_teacher.mean(axis=0), view.ltr_student.mean(axis=0), None)]
    for p in positions:
        row = view.per_token.iloc[int(p)]
        panels.append((f"'{view.tokens[int(p)]}' (pos {int(p)})", view.ltr_teacher[int(p)], view.ltr_student[int(p)],
                       row["ltr_pair"]))
    names = view.layer_names()
    t_names = [f"T{t}" for t, _ in view.pairs]
    s_names = [f"S{s}" for _, s in view.pairs]
    fig = agg_figure(Figure(figsize=(2.9 * len(panels) + 0.8, 5.8), layout="constrained"))
    for c, (title, t_mat, s_mat, loss) in enumerate(panels):
        t_mat, s_mat = _off_diagonal(t_mat), _off_diagonal(s_mat)
        vmin, vmax = _range(t_mat, s_mat)
        top = fig.add_subplot(2, len(panels), c + 1)
        _heatmap(top, t_mat, t_names, f"teacher · {title}", vmax, cmap="magma", vmin=vmin)
        bottom = fig.add_subplot(2, len(panels), len(panels) + c + 1)
        extra = f" · LTR pair KL {loss:.3g}" if loss is not None else ""
        image = _heatmap(bottom, s_mat, s_names, f"student{extra}", vmax, cmap="magma", vmin=vmin)
        fig.colorbar(image, ax=[top, bottom], shrink=0.6)
    fig.suptitle(f"Layer Transforming Relation (pair) over mapped layers {', '.join(names)}: "
                 "row a = softmax over b≠a of cos(e_a, e_b)", fontsize=10)
    return fig


def wr_triple_figure(view: RelationView, position: int | None = None, layer: int = -1) -> Figure:
    """WR triple angles psi(i; j, k) at one centre token i in one mapped layer (teacher, student, and
    student − teacher): what the triple term matches, restricted to the window the run used."""
    K = len(view.pairs)
    k = layer % K
    n = len(view.tokens)
    if position is None:
        position = n // 2
    lo, hi = 0, n
    if view.window is not None:
        half = (view.window - 1) // 2
        lo, hi = max(0, position - half), min(n, position + half + 1)
    t_mat = view.angle_teacher[k, position, lo:hi, lo:hi]
    s_mat = view.angle_student[k, position, lo:hi, lo:hi]
    labels = view.tokens[lo:hi]
    size = max(3.0, min(5.0, 0.18 * (hi - lo) + 1.4))
    fig = agg_figure(Figure(figsize=(3 * size + 1.5, size + 1.0), layout="constrained"))
    t, s = view.pairs[k]
    diff = s_mat - t_mat
    spread = max(float(np.abs(diff).max()), 1e-6)
    for c, (title, matrix, cmap, vmin) in enumerate((
            (f"teacher h[{t}]", t_mat, "coolwarm", -1.0), (f"student h[{s}]", s_mat, "coolwarm", -1.0),
            ("student − teacher", diff, "PuOr", -spread))):
        ax = fig.add_subplot(1, 3, c + 1)
        image = _heatmap(ax, matrix, labels, title, -vmin, cmap=cmap, vmin=vmin)
        fig.colorbar(image, ax=ax, shrink=0.7)
    window = "all tokens" if view.window is None else f"window {view.window}"
    fig.suptitle(f"Word Relation (triple): angles at centre '{view.tokens[position]}' (pos {position}), "
                 f"layers T{t}↔S{s}, {window}", fontsize=10)
    return fig


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
