"""The settings of `ckd aggregate` (score, baseline, bootstrap draws, seed, alternative): their defaults,
and the aggregate.json beside the tables that records what they were made with, so that the notebooks
recompute nothing with other settings (a light module: the CLI reads the defaults at start-up)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ckd.errors import ConfigError

# used when not given; the workflow's config schema (aggregate:) has the same defaults
DEFAULTS = {"score": "final", "baseline": "kd", "bootstrap": 10000, "seed": 0, "alternative": "greater"}
SETTINGS_FILE = "aggregate.json"


def read_settings(tables_dir: str | os.PathLike) -> dict:
    """The settings `ckd aggregate` made the tables in `tables_dir` with: DEFAULTS updated with its
    aggregate.json (all DEFAULTS when there is none). Raises ConfigError for an unreadable file."""
    path = Path(tables_dir) / SETTINGS_FILE
    if not path.is_file():
        return dict(DEFAULTS)
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc}); re-run `ckd aggregate` (or the workflow) to rewrite it") from None
    if not isinstance(settings, dict):
        raise ConfigError(f"{path}: not a JSON object; re-run `ckd aggregate` (or the workflow) to rewrite it")
    return {**DEFAULTS, **settings}
