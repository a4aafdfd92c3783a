"""Figures (PNG and PDF) from the run records of a study.

Figures are drawn on matplotlib's Agg canvas without pyplot, so nothing needs a display and the
global backend of the calling process is left alone.
"""

from __future__ import annotations

import io
import itertools
import math
import re
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ckd import paths
from ckd.atomic import atomic_write_bytes
from ckd.errors import CkdError
from ckd.frame import runs_frame
from ckd.records import model_info, row_method_base, study_records
from ckd.stats import lookup_metric, mean_std
from ckd.tables.ablation import flatten_options, is_ckd_variant, method_changes
from ckd.tables.common import Column, cell, frame_groups, study_columns

Log = Callable[[str], None]
SCORE_LABEL = {"final": "final", "best": "best-on-dev"}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", str(text)).strip("_") or "x"


def agg_figure(fig: Figure) -> Figure:
    """The figure on its own Agg canvas (no pyplot, the process's backend left alone)."""
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    written = []
    for fmt, metadata in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Producer": None})):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=150, metadata=metadata)
        path = out_dir / f"{stem}.{fmt}"
        atomic_write_bytes(path, buffer.getvalue())
        written.append(path)
    return written


def _grid(n: int, width: float = 3.6, height: float = 3.0) -> tuple[Figure, list]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows))
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    return fig, axes


def _colors(names) -> dict[str, tuple]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return {name: palette(i % 10) for i, name in enumerate(sorted(set(names)))}


def _title(fig: Figure, text: str) -> None:
    width = max(40, int(fig.get_figwidth() * 11))
    fig.suptitle(textwrap.fill(text, width), fontsize=10)


def _err(std: float) -> float:
    return std if math.isfinite(std) else 0.0


def _label(key) -> str:
    role, student, method = key
    return f"{student} (teacher)" if role == "teacher" else f"{student} / {method}"


# ---------------------------------------------------------------- ablation bars


def plot_ablation(groups, columns: list[Column], score: str, out_dir: Path, log: Log) -> list[Path]:
    written = []
    students = dict.fromkeys(k[1] for k in groups if k[0] == "student")
    for student in students:
        keys = [k for k in groups if k[0] == "student" and k[1] == student
                and (k[2] == "ckd" or is_ckd_variant(k[2], row_method_base(groups[k][0])))]
        if not any(k[2] != "ckd" for k in keys):
            continue
        cols = [c for c in columns if any(cell(groups[k], c, score)[2] for k in keys)]
        width = 0.8 / len(keys)
        fig = Figure(figsize=(max(5.0, 1.0 + len(cols) * len(keys) * 0.35), 3.6))
        ax = fig.add_subplot(1, 1, 1)
        x = np.arange(len(cols))
        for i, key in enumerate(keys):
            stats = [cell(groups[key], c, score) for c in cols]
            means = [m if n else np.nan for m, _, n, _ in stats]
            ax.bar(x + (i - (len(keys) - 1) / 2) * width, means, width, yerr=[_err(s) for _, s, _, _ in stats],
                   capsize=2, label=key[2])
        ax.set_xticks(x, [c.name for c in cols])
        # bars start near the lowest score so that differences of a point or two stay visible
        lows = [m - _err(s) for k in keys for m, s, n, _ in (cell(groups[k], c, score) for c in cols) if n]
        ax.set_ylim(bottom=max(0.0, math.floor(min(lows)) - 5))
        ax.set_ylabel(f"dev score x100 ({SCORE_LABEL[score]})")
        _title(fig, f"CKD ablation, student {student} (mean ± std over seeds)")
        ax.legend(fontsize=7)
        written += _save(fig, out_dir, f"ablation_{_slug(student)}")
    if not written:
        log("plots: ablation skipped: no CKD variants (method_base ckd or ckd-*) in this study")
    return written


# ---------------------------------------------------------------- score vs student size


def plot_size(groups, columns: list[Column], score: str, out_dir: Path, log: Log) -> list[Path]:
    sizes = {model_info(runs[0]).get("params") for k, runs in groups.items() if k[0] == "student"}
    sizes.discard(None)
    if len(sizes) < 2:
        log("plots: score vs size skipped: fewer than two student sizes with params in their records")
        return []
    sizes_of: dict[str, set] = {}
    for key, runs in groups.items():
        if key[0] == "student":
            sizes_of.setdefault(key[2], set()).add(model_info(runs[0]).get("params"))
    # methods run at one size only (typically ablation variants) would be lone dots
    methods = sorted(m for m, s in sizes_of.items() if len(s - {None}) >= 2)
    colors = _colors(methods)
    fig, axes = _grid(len(columns))
    for ax, c in zip(axes, columns):
        for method in methods:
            points = []
            for key, runs in groups.items():
                params = model_info(runs[0]).get("params")
                if key[0] != "student" or key[2] != method or params is None:
                    continue
                mean, std, n, _ = cell(runs, c, score)
                if n:
                    points.append((params, mean, _err(std)))
            if points:
                points.sort()
                xs, ys, es = zip(*points)
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=2, color=colors[method], label=method)
        ax.set_xscale("log")
        ax.set_title(c.name)
        ax.set_xlabel("student parameters")
        ax.set_ylabel(f"{c.metric} x100")
    axes[0].legend(fontsize=7)
    _title(fig, f"Score ({SCORE_LABEL[score]}) vs student size, mean ± std over seeds")
    return _save(fig, out_dir, "score_vs_size")


# ---------------------------------------------------------------- loss-weight sweeps


def _sweep_value(runs: list[dict], base_runs: list[dict]) -> tuple[str, float] | None:
    changed, dropped, added = method_changes(runs, base_runs)
    if len(changed) != 1 or dropped or added:
        return None
    (key, value), = changed.items()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return key, float(value)


def _base_value(base_runs: list[dict], param: str) -> float | None:
    """The base method's own value of a swept setting, when its record resolves it."""
    for record in base_runs:
        value = flatten_options((record.get("method_resolved") or {}).get("settings") or {}).get(param)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def plot_sweeps(groups, columns: list[Column], score: str, out_dir: Path, log: Log) -> list[Path]:
    sweeps: dict[tuple, list] = {}
    for key, runs in groups.items():
        base = row_method_base(runs[0])
        if key[0] != "student" or base == key[2]:
            continue
        found = _sweep_value(runs, groups.get(("student", key[1], base), []))
        if found:
            sweeps.setdefault((key[1], base, found[0]), []).append((found[1], key))
    written = []
    for (student, base, param), variants in sorted(sweeps.items()):
        default = groups.get(("student", student, base), [])
        default_x = _base_value(default, param)
        if default_x is not None:
            variants = variants + [(default_x, ("student", student, base))]
        if len({x for x, _ in variants}) < 2:
            continue
        cols = [c for c in columns if any(cell(groups[k], c, score)[2] for _, k in variants)]
        fig, axes = _grid(len(cols))
        for ax, c in zip(axes, cols):
            points = sorted((x, *cell(groups[k], c, score)[:3]) for x, k in variants)
            points = [(x, m, _err(s)) for x, m, s, n in points if n]
            xs, ys, es = zip(*points)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=2, label=f"{base} with {param}=x")
            if default_x is not None:
                ax.axvline(default_x, linestyle=":", color="grey", label=f"{base} default ({default_x:g})")
            elif default:
                mean, std, n, _ = cell(default, c, score)
                if n:
                    ax.axhline(mean, linestyle="--", color="grey", label=f"{base} (default)")
            if min(xs) > 0 and max(xs) / min(xs) >= 100:
                ax.set_xscale("log")
            ax.set_title(c.name)
            ax.set_xlabel(param)
            ax.set_ylabel(f"{c.metric} x100")
        axes[0].legend(fontsize=7)
        _title(fig, f"{base}: sweep of {param}, student {student} ({SCORE_LABEL[score]}, mean ± std over seeds)")
        written += _save(fig, out_dir, f"sweep_{_slug(student)}_{_slug(base)}_{_slug(param)}")
    if not written:
        log("plots: sweep skipped: no method variants changing one numeric setting to two or more values")
    return written


# ---------------------------------------------------------------- training curves


def _selection(record: dict) -> tuple[str, str]:
    from ckd.data.tasks import get_task

    selection = (record["metrics"] or {}).get("selection") or {}
    task = get_task(record["task"])
    return selection.get("split") or task.dev_splits[0], selection.get("metric") or task.selection_metric


def _curve(runs: list[dict], value_of) -> tuple[list, list, list]:
    by_step: dict[float, list] = {}
    for record in runs:
        for entry in record.get("history") or []:
            value = value_of(record, entry)
            if isinstance(entry.get("step"), (int, float)) and isinstance(value, (int, float)) and math.isfinite(value):
                by_step.setdefault(entry["step"], []).append(value)
    steps = sorted(by_step)
    stats = [mean_std(by_step[s]) for s in steps]
    return steps, [m for m, _, _ in stats], [_err(s) for _, s, _ in stats]


def _dev_value(record: dict, entry: dict):
    split, metric = _selection(record)
    dev = entry.get("dev") if isinstance(entry.get("dev"), dict) else {}
    # history entries hold {"dev": {<split>: {<metric>: v}}}; older ones {"dev": {<metric>: v}} or {<split>: {...}}
    for block in (dev.get(split), entry.get(split), dev):
        if isinstance(block, dict):
            value = lookup_metric(block, metric)
            if value is not None:
                break
    else:
        value = None
    return 100 * value if isinstance(value, (int, float)) else None


def plot_curves(groups, out_dir: Path, log: Log) -> list[Path]:
    written = []
    tasks = sorted({r["task"] for runs in groups.values() for r in runs})
    for task in tasks:
        curves = {key: [r for r in runs if r["task"] == task and r.get("history")] for key, runs in groups.items()}
        curves = {k: v for k, v in curves.items() if v}
        if not curves:
            continue
        fig = Figure(figsize=(10, 3.6))
        dev_ax, loss_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        metric = _selection(next(iter(curves.values()))[0])[1]
        for key, runs in curves.items():
            for ax, value_of in ((dev_ax, _dev_value), (loss_ax, lambda r, e: e.get("train_loss"))):
                steps, means, stds = _curve(runs, value_of)
                if steps:
                    line, = ax.plot(steps, means, marker=".", label=f"{_label(key)} ({len(runs)})")
                    ax.fill_between(steps, np.subtract(means, stds), np.add(means, stds), alpha=0.15,
                                    color=line.get_color())
        dev_ax.set(title=f"{task}: dev {metric} x100", xlabel="step")
        loss_ax.set(title=f"{task}: training loss", xlabel="step")
        dev_ax.legend(fontsize=6)
        _title(fig, "mean over seeds (n seeds), band = ± std")
        written += _save(fig, out_dir, f"curves_{_slug(task)}")
    if not written:
        log("plots: training curves skipped: no record has a history")
    return written


# ---------------------------------------------------------------- score vs cost

_COSTS = (("params", "parameters"), ("eval_ms_per_example", "eval ms / example"), ("wall_s", "train wall time (s)"))


def _cost(record: dict, name: str):
    value = model_info(record).get("params") if name == "params" else (record.get("timing") or {}).get(name)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def plot_score_vs_cost(groups, columns: list[Column], score: str, out_dir: Path, log: Log) -> list[Path]:
    written = []
    colors = _colors(k[2] for k in groups)
    markers = dict(zip(dict.fromkeys(k[1] for k in groups), itertools.cycle("osD^vP*X")))
    for task in dict.fromkeys(c.task for c in columns):
        column = next(c for c in columns if c.task == task)
        panels = []
        for name, label in _COSTS:
            points = []
            for key, runs in groups.items():
                runs = [r for r in runs if r["task"] == task]
                mean, std, n, _ = cell(runs, column, score)
                costs = [v for v in (_cost(r, name) for r in runs) if v is not None]
                if n and costs:
                    cost_mean, cost_std, _ = mean_std(costs)
                    points.append((key, cost_mean, _err(cost_std), mean, _err(std)))
            if points:
                panels.append((label, points))
        if not panels:
            continue
        fig, axes = _grid(len(panels), width=4.0)
        for ax, (label, points) in zip(axes, panels):
            for key, x, xe, y, ye in points:
                ax.errorbar([x], [y], xerr=[xe], yerr=[ye], marker=markers[key[1]], capsize=2, color=colors[key[2]],
                            label=_label(key))
            if label == "parameters":
                ax.set_xscale("log")
            ax.set(xlabel=label, ylabel=f"{column.name} {column.metric} x100")
        axes[0].legend(fontsize=6)
        _title(fig, f"{column.name}: score ({SCORE_LABEL[score]}) vs cost, mean ± std over seeds")
        written += _save(fig, out_dir, f"cost_{_slug(task)}")
    if not written:
        log("plots: score vs cost skipped: no run has params or timings")
    return written


# ---------------------------------------------------------------- entry point


def plot_study(study_dir: str | Path, out_dir: str | Path | None = None, *, score: str = "final",
               log: Log = print, expected: str | Path | None = None, include_stale: bool = False) -> list[Path]:
    """Draw every figure the study's records support; returns the files written.

    `expected`/`include_stale`: as for `ckd aggregate` (`ckd.records.study_records`): records made with
    another config, and runs the study no longer plans, are left out, so the figures show what the tables do.
    """
    if score not in SCORE_LABEL:
        raise CkdError(f"--score must be final or best, not {score!r}")
    study_dir = Path(study_dir)
    out_dir = Path(out_dir) if out_dir is not None else study_dir / paths.PLOTS
    loaded = study_records(study_dir, expected, include_stale)
    if loaded.stale and not include_stale:
        log(f"left out {len(loaded.stale)} stale record(s) (config_fingerprint differs from {expected}); "
            "--include-stale draws them")
    if loaded.unplanned:
        log(f"left out {len(loaded.unplanned)} record(s) of runs the study no longer plans (not in {expected})")
    records = loaded.records  # a TinyBERT first stage has no scores but a training curve
    groups = frame_groups(runs_frame(loaded), {r["_path"]: r for r in records}, intermediate=True)
    columns = study_columns(r["task"] for r in records)
    written = []
    written += plot_ablation(groups, columns, score, out_dir, log)
    written += plot_size(groups, columns, score, out_dir, log)
    written += plot_sweeps(groups, columns, score, out_dir, log)
    written += plot_curves(groups, out_dir, log)
    written += plot_score_vs_cost(groups, columns, score, out_dir, log)
    return written
