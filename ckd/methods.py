"""The methods file: each method a weighted set of loss terms with a layer map, resolved per task."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ckd.config import load_yaml
from ckd.errors import ConfigError

METHOD_KEYS = {"description", "extends", "drop", "terms", "settings", "layer_map", "teacher", "intermediate", "after"}
TERM_OPTION_KEYS = {"weight"}  # other keys are passed to the loss term as options
TRAIN_SETTINGS = ("lr", "epochs")


def default_methods_file() -> Path:
    """config/methods.yaml of this repository, or $CKD_METHODS_FILE."""
    env = os.environ.get("CKD_METHODS_FILE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "config" / "methods.yaml"


def load_methods(path: str | os.PathLike | None = None) -> dict[str, Any]:
    path = Path(path) if path else default_methods_file()
    if not path.is_file():
        raise ConfigError(f"methods file {path} does not exist: set methods_file= (or $CKD_METHODS_FILE)")
    document = load_yaml(path)
    for key in ("settings", "methods"):
        if not isinstance(document.get(key), dict):
            raise ConfigError(f"{path}: needs a '{key}' mapping")
    unknown_top = set(document) - {"settings", "task_settings", "methods"}
    if unknown_top:
        raise ConfigError(f"{path}: unknown top-level key {sorted(unknown_top)[0]!r} (expected settings, task_settings, methods)")
    for name, entry in document["methods"].items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: method {name!r} must be a mapping")
        unknown = set(entry) - METHOD_KEYS
        if unknown:
            raise ConfigError(f"{path}: method {name!r} has unknown key {sorted(unknown)[0]!r}; known: {', '.join(sorted(METHOD_KEYS))}")
    document["_path"] = str(path)
    return document


@dataclass
class Term:
    name: str
    weight: float
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ResolvedMethod:
    name: str
    base: str
    description: str
    needs_teacher: bool
    layer_map: str | None
    intermediate: bool
    after: str | None
    terms: list[Term]
    settings: dict[str, Any]

    def to_record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base": self.base,
            "layer_map": self.layer_map,
            "terms": [{"name": t.name, "weight": t.weight, **({"options": t.options} if t.options else {})} for t in self.terms],
            "settings": self.settings,
        }


def _flatten(methods: Mapping[str, Any], name: str, path: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    if name not in methods:
        raise ConfigError(f"unknown method {name!r} in {path}; known methods: {', '.join(sorted(methods))}")
    if name in seen:
        raise ConfigError(f"{path}: method {name!r} extends itself through {' -> '.join(seen + (name,))}")
    entry = copy.deepcopy(methods[name])
    parent_name = entry.pop("extends", None)
    if parent_name is None:
        entry.setdefault("terms", {})
        entry.setdefault("settings", {})
        entry.pop("drop", None)
        return entry
    parent = _flatten(methods, parent_name, path, seen + (name,))
    merged = {k: v for k, v in parent.items() if k not in ("description",)}
    terms = dict(parent.get("terms", {}))
    for dropped in entry.pop("drop", []) or []:
        if dropped not in terms:
            raise ConfigError(f"{path}: method {name!r} drops {dropped!r}, which {parent_name!r} does not have")
        del terms[dropped]
    for term_name, options in (entry.pop("terms", {}) or {}).items():
        if options is None:
            terms.pop(term_name, None)
        else:
            terms[term_name] = options
    settings = {**parent.get("settings", {}), **(entry.pop("settings", {}) or {})}
    merged.update(entry)
    merged["terms"] = terms
    merged["settings"] = settings
    merged.setdefault("_base", parent.get("_base", parent_name))
    return merged


def _lookup(value: Any, settings: Mapping[str, Any], where: str) -> Any:
    if isinstance(value, str):
        if value not in settings:
            raise ConfigError(f"{where}: {value!r} is neither a number nor a known setting ({', '.join(sorted(settings))})")
        return settings[value]
    return value


def resolve_method(
    document: Mapping[str, Any],
    name: str,
    task: str,
    *,
    use_task_settings: bool = True,
    options: Mapping[str, Any] | None = None,
    known_terms: set[str] | None = None,
) -> ResolvedMethod:
    path = document.get("_path", "methods file")
    flat = _flatten(document["methods"], name, path)
    settings = dict(document["settings"])
    if use_task_settings:
        settings.update((document.get("task_settings") or {}).get(task, {}))
    settings.update(flat.get("settings", {}))
    options = dict(options or {})
    unknown = set(options) - set(settings)
    if unknown:
        raise ConfigError(
            f"method_options.{sorted(unknown)[0]}: not a setting of method {name!r}; known settings: {', '.join(sorted(settings))}"
        )
    settings.update(options)
    terms = []
    for term_name, spec in flat["terms"].items():
        if known_terms is not None and term_name not in known_terms:
            raise ConfigError(f"{path}: method {name!r} uses unknown loss term {term_name!r}; known terms: {', '.join(sorted(known_terms))}")
        spec = dict(spec or {})
        weight = _lookup(spec.pop("weight", 1.0), settings, f"{path}: method {name!r} term {term_name!r} weight")
        term_options = {k: _lookup(v, settings, f"{path}: method {name!r} term {term_name!r} option {k!r}") for k, v in spec.items()}
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ConfigError(f"{path}: method {name!r} term {term_name!r} weight must be a number, got {weight!r}")
        terms.append(Term(term_name, float(weight), term_options))
    if not terms:
        raise ConfigError(f"{path}: method {name!r} has no loss terms")
    return ResolvedMethod(
        name=name,
        base=flat.get("_base", name),
        description=str(flat.get("description", "")),
        needs_teacher=bool(flat.get("teacher", True)),
        layer_map=flat.get("layer_map"),
        intermediate=bool(flat.get("intermediate", False)),
        after=flat.get("after"),
        terms=terms,
        settings=settings,
    )
