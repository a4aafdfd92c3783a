"""Which training regime a task run belongs to, read from the model it starts from.

    task-specific   the student starts from anything but a general-distilled model (the default; also teachers)
    task-agnostic   it starts from a general-distilled model (`ckd general-distill`) and is fine-tuned (no teacher)
    general+task    it starts from one and is task-distilled with a method that has a teacher (TinyBERT's
                    "general distillation + task-specific distillation")

The general model is recognised by the ckd_general.json its model/ folder carries (ckd.general.run), not by
a config flag, so a record cannot claim a regime its weights do not have.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REGIMES = ("task-specific", "task-agnostic", "general+task")
MARKER = "ckd_general.json"  # in a general run's model/: what a task run records as its general stage


def general_marker(model_dir: Any) -> dict[str, Any] | None:
    """ckd_general.json of a general student's model/ folder, or None for any other model (or reference)."""
    try:
        value = json.loads((Path(model_dir).expanduser() / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def training_regime(model_spec: Mapping[str, Any] | None, needs_teacher: bool) -> dict[str, Any]:
    """{"regime": ...} and, for a general-distilled start, {"general": its ckd_general.json}."""
    source = (model_spec or {}).get("name_or_path")
    marker = None
    if isinstance(source, str) and (model_spec or {}).get("init", "pretrained") != "random":
        marker = general_marker(source) or _first_stage_general(source)
    if marker is None:
        return {"regime": "task-specific"}
    return {"regime": "general+task" if needs_teacher else "task-agnostic", "general": marker}


def _first_stage_general(model_dir: str) -> dict[str, Any] | None:
    """The general stage of a chained method's first stage (TinyBERT's stage 1 saves its model without the
    marker): the `general` its record.json, next to model/, carries."""
    try:
        record = json.loads((Path(model_dir).expanduser().parent / "record.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return None
    general = record.get("general") if isinstance(record, dict) else None
    return general if isinstance(general, dict) else None
