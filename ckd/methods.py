"""The methods file: each method a weighted set of loss terms with a layer map and a recipe, resolved per task.

A recipe (``recipes.<name>`` in the file) holds one method family's hyper-parameters with their source:
``settings`` (defaults) and ``tasks`` (per-task rows, applied under ``use_task_settings``). The resolved
method records which recipe it used and the values that recipe supplied (``ResolvedMethod.recipe``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ckd.config import load_yaml
from ckd.errors import ConfigError, refuse_unknown_keys

METHOD_KEYS = {"description", "extends", "drop", "terms", "settings", "layer_map", "teacher", "intermediate", "after", "recipe"}
RECIPE_KEYS = {"source", "settings", "tasks"}
TOP_KEYS = ("settings", "recipes", "methods")
TERM_OPTION_KEYS = {"weight"}  # other keys are passed to the loss term as options
TRAIN_SETTINGS = ("lr", "epochs")


def default_methods_file() -> Path:
    """$CKD_METHODS_FILE, else the packaged methods file (ckd/resources/methods.yaml, package data, so a
    wheel install has it; config/methods.yaml in the repository is a link to it)."""
    env = os.environ.get("CKD_METHODS_FILE")
    if env:
        return Path(env)
    return Path(str(resources.files("ckd").joinpath("resources", "methods.yaml")))


def load_methods(path: str | os.PathLike | None = None) -> dict[str, Any]:
    path = Path(path) if path else default_methods_file()
    if not path.is_file():
        raise ConfigError(f"methods file {path} does not exist: set methods_file= (or $CKD_METHODS_FILE)")
    document = load_yaml(path)
    for key in ("settings", "methods"):
        if not isinstance(document.get(key), dict):
            raise ConfigError(f"{path}: needs a '{key}' mapping")
    if "task_settings" in document:
        raise ConfigError(
            f"{path}: top-level 'task_settings' is no longer read; move the per-task rows under recipes.<name>.tasks "
            f"and give each method that uses them `recipe: <name>`"
        )
    unknown_top = set(document) - set(TOP_KEYS)
    if unknown_top:
        raise ConfigError(f"{path}: unknown top-level key {sorted(unknown_top)[0]!r} (expected {', '.join(TOP_KEYS)})")
    recipes = document.setdefault("recipes", {}) or {}
    if not isinstance(recipes, dict):
        raise ConfigError(f"{path}: 'recipes' must be a mapping of recipe name to {{source, settings, tasks}}")
    document["recipes"] = recipes
    for name, recipe in recipes.items():
        _check_recipe(path, name, recipe)
    for name, entry in document["methods"].items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: method {name!r} must be a mapping")
        refuse_unknown_keys(f"{path}: method {name!r}", entry, METHOD_KEYS)
        recipe = entry.get("recipe")
        if recipe is not None and recipe not in recipes:
            raise ConfigError(
                f"{path}: method {name!r} names recipe {recipe!r}, which recipes does not define; known recipes: "
                f"{', '.join(sorted(recipes)) or 'none'}"
            )
    document["_path"] = str(path)
    return document


def _check_recipe(path: Path, name: str, recipe: Any) -> None:
    where = f"{path}: recipes.{name}"
    if not isinstance(recipe, dict):
        raise ConfigError(f"{where} must be a mapping with source, settings and optionally tasks")
    refuse_unknown_keys(where, recipe, RECIPE_KEYS)
    if not isinstance(recipe.get("source"), str) or not recipe["source"].strip():
        raise ConfigError(f"{where} needs a `source:` naming where its values come from (paper, code, or 'declared default: ...')")
    if not isinstance(recipe.get("settings") or {}, dict):
        raise ConfigError(f"{where}.settings must be a mapping of setting to value")
    tasks = recipe.get("tasks") or {}
    if not isinstance(tasks, dict) or not all(isinstance(row, dict) for row in tasks.values()):
        raise ConfigError(f"{where}.tasks must map each task name to a mapping of setting to value")


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
    # {"name", "source", "task": the task row applied or None, "values": what the recipe supplied};
    # None for a method without a recipe. Values the method or method_options changed differ from `settings`.
    recipe: dict[str, Any] | None = None

    def to_record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base": self.base,
            "layer_map": self.layer_map,
            "recipe": self.recipe,
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
    """Method `name` for `task`: its terms with weights and options looked up in the resolved settings.

    Settings, later wins: the file's global `settings` < the method's recipe `settings` < the recipe's
    `tasks[task]` row (only when `use_task_settings`) < the method's own `settings` < `options`
    (the run's method_options, which may only name known settings). Raises ConfigError naming the
    file and key for an unknown method, setting, term or reference.
    """
    path = document.get("_path", "methods file")
    flat = _flatten(document["methods"], name, path)
    settings = dict(document["settings"])
    recipe_record = None
    recipe_name = flat.get("recipe")
    if recipe_name is not None:
        recipe = (document.get("recipes") or {}).get(recipe_name)
        if recipe is None:
            raise ConfigError(f"{path}: method {name!r} names recipe {recipe_name!r}, which recipes does not define")
        values = dict(recipe.get("settings") or {})
        row = (recipe.get("tasks") or {}).get(task) if use_task_settings else None
        values.update(row or {})
        settings.update(values)
        recipe_record = {
            "name": recipe_name, "source": " ".join(str(recipe["source"]).split()),
            "task": task if row else None, "values": values,
        }
    settings.update(flat.get("settings", {}))
    options = dict(options or {})
    unknown = set(options) - set(settings)
    if unknown:
        raise ConfigError(
            f"method_options.{sorted(unknown)[0]}: not a setting of method {name!r}; known settings: {', '.join(sorted(settings))}"
        )
    settings.update(options)
    for key, default in document["settings"].items():
        # A switch (a global setting whose default is true/false) must stay a boolean: "no" would read as true.
        if isinstance(default, bool) and not isinstance(settings[key], bool):
            where = f"method_options.{key}" if key in options else f"{path}: setting {key!r} of method {name!r}"
            raise ConfigError(f"{where} is a switch and must be true or false, got {settings[key]!r}")
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
        recipe=recipe_record,
    )
