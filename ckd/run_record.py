"""The run record: one JSON per run, the single source of truth, written atomically and last."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

from ckd import __version__

SCHEMA_VERSION = 1
RECORD_FILE = "record.json"
PREDICTIONS_FILE = "predictions.json"


def library_versions() -> dict[str, str]:
    import numpy
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "ckd": __version__,
    }


CHECKOUT = Path(__file__).resolve().parent.parent  # the folder holding this package: a git checkout, or not


def _git(*args: str) -> str | None:
    """stdout of a git command in CHECKOUT; None outside a git checkout."""
    try:
        out = subprocess.run(["git", *args], cwd=CHECKOUT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit() -> str | None:
    """The checkout's HEAD commit; None when ckd is not run from a git checkout (an installed wheel)."""
    out = _git("rev-parse", "HEAD")
    return out.strip() or None if out is not None else None


def git_dirty() -> bool | None:
    """Whether tracked files differ from HEAD (the code that ran is then not exactly `git_commit`); None
    outside a git checkout. Untracked files (results, caches) do not count."""
    out = _git("status", "--porcelain", "--untracked-files=no")
    return bool(out.strip()) if out is not None else None


def git_state() -> dict[str, Any]:
    """The record fields `git_commit` and `git_dirty`."""
    return {"git_commit": git_commit(), "git_dirty": git_dirty()}


def determinism(runtime: dict[str, Any]) -> dict[str, Any]:
    """Whether re-running the same command reproduces this record exactly (timings aside), and if not, why."""
    if str(runtime["device"]).startswith("cpu"):
        return {"deterministic": True, "determinism_note": None}
    return {
        "deterministic": False,
        "determinism_note": (
            f"trained on {runtime['device']}: GPU kernels (cuBLAS reductions, atomic adds in backward passes) are not "
            "bit-reproducible, so a re-run can differ in the last digits; CPU runs are exact"
        ),
    }


def predictions_payload(final: dict[str, dict[str, list]], best: dict[str, dict[str, list]] | None) -> dict[str, Any]:
    """Per dev split: gold labels, final-model predictions and best-on-dev predictions."""
    payload = {}
    for split, values in final.items():
        payload[split] = {
            "labels": values["labels"],
            "final": values["predictions"],
            "best": (best or {}).get(split, {}).get("predictions", values["predictions"]),
        }
    return payload


def build_record(*, kind, config, config_fingerprint, task, method, result, student, teacher, layer_map,
                 data_fingerprints, wall_seconds, eval_ms_per_example, runtime) -> dict[str, Any]:
    selection = {"split": task.dev_splits[0], "metric": task.selection_metric}
    metrics = None
    if result.final is not None:
        metrics = {
            "selection": selection,
            "final": {"step": result.final["step"], **result.final["metrics"]},
            "best": {"step": result.best["step"], **result.best["metrics"]},
        }
    method_name = config.get("method_name") or method.name
    overrides = dict(config.get("method_options") or {})
    return {
        "schema_version": SCHEMA_VERSION,
        "ckd_version": __version__,
        "kind": kind,
        "study": config.get("study"),
        "task": task.name,
        "method": method_name,
        "method_base": method.base,
        "method_overrides": overrides,
        "method_resolved": method.to_record(),
        "seed": config["seed"],
        "student": student,
        "teacher": teacher,
        "layer_map": layer_map,
        "metrics": metrics,
        "history": result.history,
        "predictions": PREDICTIONS_FILE if result.final_predictions is not None else None,
        "timing": {
            "wall_s": round(wall_seconds, 3),
            "train_s": round(result.train_seconds, 3),
            "train_steps": result.steps,
            "train_examples_per_s": round(result.examples_seen / result.train_seconds, 2) if result.train_seconds else None,
            "eval_ms_per_example": round(eval_ms_per_example, 4) if eval_ms_per_example is not None else None,
        },
        "runtime": runtime,
        **determinism(runtime),
        "versions": library_versions(),
        **git_state(),
        "data_fingerprint": data_fingerprints,
        "config_fingerprint": config_fingerprint,
        "config": config,
    }
