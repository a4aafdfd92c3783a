"""Grid search over method settings, selected without looking at the reported dev set.

A study's `search:` block (workflow/schemas/config.schema.yaml) names, per method, a grid over its
settings (alpha, temperature, beta, relation weights, lr, epochs: any setting of config/methods.yaml,
given to the runs as `method_options`). Every grid point is trained once per search seed. With
`selection: carve` (the default) those runs train on the training set minus a split carved from it
(`ckd.data.loading.carve_selection`, run config key data.selection_split) and are scored on that
split only; the dev set is never read. `selection: dev` trains them on the full training set and
scores them on dev, as the papers did (tables say so).

`select` reads the search runs' records and picks the point with the best mean, over the search
seeds, of the task's selection metric (CoLA mcc, MRPC f1, STS-B spearman, accuracy elsewhere) on the
selection split; ties go to the point declared first. The workflow then re-runs that point on the
study's report seeds on the full training set (`ckd distill -c <selected>.yaml ...`); only those
runs enter the tables.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ckd.atomic import atomic_write_json, atomic_write_text
from ckd.data.loading import SELECTION_SPLIT
from ckd.errors import ConfigError
from ckd.records import RecordError, _read_json, validate_record

SELECTIONS = ("carve", "dev")
SCORES = ("final", "best")
DEFAULT_POINT = "default"  # the folder of a run with no grid options (a chained method's first stage)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]")


@dataclass(frozen=True)
class Point:
    """One grid point: its folder name and the method settings it sets."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


def _value_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 4.0 and 4 are the same setting
    return _UNSAFE.sub("-", json.dumps(value, sort_keys=True, separators=(",", ":")).strip('"'))


def point_name(options: Mapping[str, Any]) -> str:
    """The folder name of a grid point, e.g. {"alpha": 0.9, "temperature": 4} -> "alpha0.9_temperature4";
    settings in sorted order, so the name depends on the values only; {} -> "default"."""
    if not options:
        return DEFAULT_POINT
    return "_".join(f"{key}{_value_text(options[key])}" for key in sorted(options))


def grid_points(grid: Any, where: str) -> list[Point]:
    """The points of one method's grid, in declared order.

    grid: a mapping setting -> list of values (the Cartesian product, the first setting varying
    slowest), or a list of mappings (explicit points). Raises ConfigError (naming `where`) for an
    empty grid, a non-list value, or two points with the same settings.
    """
    if isinstance(grid, Mapping):
        if not grid:
            raise ConfigError(f"{where}: the grid is empty; give setting: [values, ...]")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}.{key}: give a non-empty list of values, got {values!r}")
        keys = list(grid)
        points = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    elif isinstance(grid, list) and grid and all(isinstance(p, Mapping) for p in grid):
        points = [dict(p) for p in grid]
    else:
        raise ConfigError(f"{where}: a grid is a mapping setting -> [values] or a list of {{setting: value}} points, got {grid!r}")
    named = [Point(point_name(p), p) for p in points]
    seen: dict[str, int] = {}
    for index, point in enumerate(named):
        if point.name in seen:
            raise ConfigError(f"{where}: points {seen[point.name] + 1} and {index + 1} are the same setting ({point.name})")
        seen[point.name] = index
    return named


def train_keys(points: list[Point]) -> set[str]:
    """The settings of a grid that the study's train.* would otherwise override (lr, epochs): the
    workflow leaves those train keys out of the method's runs so that the grid value holds."""
    return {key for point in points for key in point.options if key in ("lr", "epochs")}


# ------------------------------------------------------------------ selection


def _metric(record: dict, score: str, split: str, metric: str, path: str) -> float:
    metrics = record.get("metrics")
    if not isinstance(metrics, dict) or not isinstance(metrics.get(score), dict):
        raise RecordError(f"{path}: no {score} metrics (an intermediate or unfinished run?); it cannot be scored")
    block = metrics[score]
    splits = sorted(k for k, v in block.items() if isinstance(v, dict))
    if split == SELECTION_SPLIT and splits != [SELECTION_SPLIT]:
        # a carve-mode search run must have been scored on the carved split and on nothing else
        raise RecordError(f"{path}: scored on {', '.join(splits) or 'nothing'}, not only on the carved "
                          f"'{SELECTION_SPLIT}' split; delete the search run folder and re-run it")
    if split not in block or metric not in block[split]:
        raise RecordError(f"{path}: no {score} {split} {metric} in its metrics; delete the folder and re-run it")
    value = block[split][metric]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def select(plan: Mapping[str, Any], score: str = "final") -> dict[str, Any]:
    """The selected grid point of one (task, student, method) and every point's scores.

    plan: {"task", "student", "method", "selection" (carve|dev), "split", "metric",
    "fixed_options" (a variant's own options), "points": [{"name", "options",
    "runs": [{"seed", "record", "config_fingerprint"}]}]} as the workflow writes it.
    Each point's value is the mean over its seeds of metrics[score][split][metric] (a fraction); a
    NaN (diverged) run makes its point's mean NaN, which never wins. The highest mean wins; ties go
    to the point listed first. Raises RecordError for a missing or stale record (config_fingerprint
    differs from the plan's), a carve-mode record scored on anything but the carved split, or runs
    scored on different data (their records' data_fingerprint of the split differs).
    """
    if score not in SCORES:
        raise ConfigError(f"--score must be one of {', '.join(SCORES)}, not {score!r}")
    if plan.get("selection") not in SELECTIONS:
        raise ConfigError(f"plan selection must be one of {', '.join(SELECTIONS)}, got {plan.get('selection')!r}")
    split, metric = plan["split"], plan["metric"]
    scored_on: dict[str, str] = {}  # data fingerprint of the split each run was scored on -> one such run
    if plan["selection"] == "carve" and split != SELECTION_SPLIT:
        raise ConfigError(f"plan: selection carve scores on the {SELECTION_SPLIT!r} split, not {split!r}")
    rows, best = [], None
    for point in plan["points"]:
        values = []
        for run in point["runs"]:
            path = Path(run["record"])
            if not path.is_file():
                raise RecordError(f"{path}: search run not finished (no record.json); run the search first")
            record = _read_json(path)
            validate_record(record, path)
            wanted = run.get("config_fingerprint")
            if wanted is not None and record.get("config_fingerprint") != wanted:
                raise RecordError(f"{path}: stale search run (made with another config than the study's); "
                                  "delete its folder and re-run the workflow")
            if record["seed"] != run["seed"]:
                raise RecordError(f"{path}: seed {record['seed']} where the plan expects {run['seed']}")
            values.append(_metric(record, score, split, metric, str(path)))
            scored_on.setdefault(str((record.get("data_fingerprint") or {}).get(split)), str(path))
        mean = math.fsum(values) / len(values) if values else math.nan
        rows.append({"point": point["name"], "options": point["options"], "seeds": [r["seed"] for r in point["runs"]],
                     "values": values, "mean": mean})
        if math.isfinite(mean) and (best is None or mean > best["mean"]):
            best = rows[-1]
    if len(scored_on) > 1:
        first, second = list(scored_on.values())[:2]
        raise RecordError(f"{first} and {second} were scored on different {split} data (data_fingerprint differs): "
                          "the points are not comparable; delete the search runs of this method and re-run them")
    if best is None:
        raise RecordError(f"{plan['task']}/{plan['student']}/{plan['method']}: every grid point has a NaN or missing "
                          f"{split} {metric}; no setting can be selected (lower the learning rates of the grid?)")
    return {
        "task": plan["task"], "student": plan["student"], "method": plan["method"],
        "selection": plan["selection"], "split": split, "metric": metric, "score": score,
        "selection_split": plan.get("selection_split"), "split_fingerprint": next(iter(scored_on), None),
        "selected": best["point"], "selected_options": best["options"], "selected_mean": best["mean"],
        "method_options": {**(plan.get("fixed_options") or {}), **best["options"]},
        "points": rows,
        "rule": "highest mean over search seeds; ties go to the point declared first",
    }


def write_selection(summary: Mapping[str, Any], out_config: str | Path, out_summary: str | Path) -> None:
    """The selected settings as a run config (`ckd distill -c`, method_options only) and the whole summary (JSON)."""
    atomic_write_json(out_summary, dict(summary))
    text = ("# written by `ckd select`: the grid point chosen for "
            f"{summary['task']}/{summary['student']}/{summary['method']} (see {Path(out_summary).name})\n")
    atomic_write_text(out_config, text + yaml.safe_dump({"method_options": summary["method_options"]}, sort_keys=True))


def read_plan(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the search plan ({exc}); regenerate it with the workflow") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("points"), list) or not plan["points"]:
        raise ConfigError(f"{path}: a search plan is an object with a non-empty 'points' list; regenerate it with the workflow")
    return plan
