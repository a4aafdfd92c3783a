"""DynaBERT tables and plots of a study: per task, a tidy width x depth table for each objective (exported
parameter count, CPU latency, dev score mean ± std over seeds), CKD minus DynaBERT per sub-network
(mean ± std of the per-seed differences), and a score-vs-parameters plot for both objectives.

Reads only the workflow's files (ckd.paths.dynabert_results: eval/seed<k>.json, export/seed<k>/sizes.json);
a pure function of them. Scores are the task's selection metric on its first dev split, in percent.
Files: <out>/<task>.csv (tidy: one row per task, objective, width, depth), <out>/<task>.md, and
<out>/<task>_score_vs_params.{png,pdf}.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from ckd.atomic import atomic_write_text
from ckd.errors import CkdError
from ckd.paths import DYNABERT_REPORT, dynabert_results
from ckd.stats import mean_std

BASELINE, CKD = "dynabert", "dynabert-ckd"
COLUMNS = ["task", "teacher", "objective", "width", "depth", "params", "latency_ms", "score_metric", "score_mean", "score_std",
           "seeds", "ckd_minus_dynabert_mean", "ckd_minus_dynabert_std", "pairs"]


def collect(study_dir) -> list[dict[str, Any]]:
    """One row per (task, teacher, objective, seed, width, depth) with score (percent), params, latency."""
    rows = []
    for key, eval_path, export_dir in dynabert_results(study_dir):
        scores = json.loads(Path(eval_path).read_text())
        sizes_path = Path(export_dir) / "sizes.json"
        sizes = {r["tag"]: r for r in json.loads(sizes_path.read_text())["subnets"]} if sizes_path.is_file() else {}
        for entry in scores["subnets"]:
            size = sizes.get(entry["tag"], {})
            rows.append({**key, "width": entry["width"], "depth": entry["depth"], "score": 100.0 * float(entry["score"]),
                         "score_metric": entry["score_metric"], "params": entry["params"], "latency_ms": size.get("latency_ms")})
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tidy table: mean ± std over seeds per (task, teacher, objective, width, depth), and for the CKD
    objective the per-seed paired difference to DynaBERT's objective."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["task"], row["teacher"], row["objective"], row["width"], row["depth"])].append(row)
    by_seed = {(r["task"], r["teacher"], r["objective"], r["width"], r["depth"], r["seed"]): r["score"] for r in rows}
    table = []
    for (task, teacher, objective, width, depth), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], -kv[0][4], -kv[0][3])):
        mean, std, n = mean_std(r["score"] for r in members)
        latency = mean_std(r["latency_ms"] for r in members)[0]
        diffs = []
        if objective != BASELINE:
            for r in members:
                base = by_seed.get((task, teacher, BASELINE, width, depth, r["seed"]))
                if base is not None:
                    diffs.append(r["score"] - base)
        d_mean, d_std, d_n = mean_std(diffs)
        table.append({
            "task": task, "teacher": teacher, "objective": objective, "width": width, "depth": depth,
            "params": members[0]["params"], "latency_ms": latency, "score_metric": members[0]["score_metric"],
            "score_mean": mean, "score_std": std, "seeds": n,
            "ckd_minus_dynabert_mean": d_mean if d_n else None, "ckd_minus_dynabert_std": d_std if d_n else None, "pairs": d_n,
        })
    return table


def _pm(mean, std, digits: int = 1) -> str:
    if mean is None or mean != mean:
        return "–"
    return f"{mean:.{digits}f}" + ("" if std is None or std != std else f" ± {std:.{digits}f}")


def _score(row: dict[str, Any] | None) -> str:
    return _pm(row["score_mean"], row["score_std"]) if row else "–"


def markdown(task: str, table: list[dict[str, Any]]) -> str:
    """Per objective, a width x depth grid of score mean ± std; then params / latency and the CKD difference."""
    rows = [r for r in table if r["task"] == task]
    widths = sorted({r["width"] for r in rows}, reverse=True)
    depths = sorted({r["depth"] for r in rows}, reverse=True)
    cell = {(r["objective"], r["width"], r["depth"]): r for r in rows}
    metric = rows[0]["score_metric"] if rows else "score"
    out = [f"# DynaBERT on {task}: dev {metric} (%) mean ± std over seeds\n"]

    def grid(title: str, value) -> None:
        out.append(f"\n## {title}\n\n| depth \\ width | " + " | ".join(f"{w:g}" for w in widths) + " |")
        out.append("|---|" + "---|" * len(widths))
        for d in depths:
            out.append(f"| {d:g} | " + " | ".join(value(d, w) for w in widths) + " |")

    for objective in sorted({r["objective"] for r in rows}):
        seeds = max(r["seeds"] for r in rows if r["objective"] == objective)
        grid(f"{objective} ({seeds} seeds)", lambda d, w, o=objective: _score(cell.get((o, w, d))))
    any_row = {(r["width"], r["depth"]): r for r in rows}
    grid("parameters (M) of the exported sub-network", lambda d, w: f"{any_row[(w, d)]['params'] / 1e6:.2f}" if (w, d) in any_row else "–")
    grid("CPU latency (ms per batch, median; see sizes.json for batch and threads)",
         lambda d, w: _pm(any_row[(w, d)]["latency_ms"], None, 2) if (w, d) in any_row else "–")
    for objective in sorted({r["objective"] for r in rows} - {BASELINE}):
        grid(f"{objective} minus {BASELINE} (points; mean ± std of per-seed differences)",
             lambda d, w, o=objective: _pm(cell[(o, w, d)]["ckd_minus_dynabert_mean"], cell[(o, w, d)]["ckd_minus_dynabert_std"], 2)
             if (o, w, d) in cell else "–")
    return "\n".join(out) + "\n"


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def plot(task: str, table: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    from matplotlib.figure import Figure

    from ckd.plots import _save

    rows = [r for r in table if r["task"] == task]
    fig = Figure(figsize=(5.0, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    for objective in sorted({r["objective"] for r in rows}):
        mine = sorted((r for r in rows if r["objective"] == objective), key=lambda r: r["params"])
        ax.errorbar([r["params"] / 1e6 for r in mine], [r["score_mean"] for r in mine],
                    yerr=[0.0 if r["score_std"] != r["score_std"] else r["score_std"] for r in mine],
                    fmt="o", capsize=2, label=objective, alpha=0.8)
    ax.set_xlabel("parameters of the exported sub-network (M)")
    ax.set_ylabel(f"dev {rows[0]['score_metric'] if rows else 'score'} (%)")
    ax.set_title(f"DynaBERT sub-networks, {task}")
    ax.legend(fontsize=8)
    return _save(fig, out_dir, f"{task}_score_vs_params")


def write_report(study_dir, out_dir=None) -> list[Path]:
    """Write every task's CSV, Markdown table and plot; returns the paths. CkdError when nothing was evaluated."""
    study_dir = Path(study_dir)
    out = Path(out_dir) if out_dir else study_dir / DYNABERT_REPORT
    rows = collect(study_dir)
    if not rows:
        raise CkdError(f"no DynaBERT evaluations under {study_dir}/dynabert: run the study's dynabert rules first")
    table = summarise(rows)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for task in sorted({r["task"] for r in table}):
        mine = [r for r in table if r["task"] == task]
        atomic_write_text(out / f"{task}.csv", _csv(mine))
        atomic_write_text(out / f"{task}.md", markdown(task, table))
        written += [out / f"{task}.csv", out / f"{task}.md", *plot(task, table, out)]
    return written
