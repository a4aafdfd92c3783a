# The grid search's plan (see search.smk for the rules): the study's `search:` block expanded into
# search runs, and the helpers common.smk's distill functions call for them. Included right after
# common.smk.

from ckd.data.loading import SELECTION_SPLIT, selection_spec
from ckd.search import DEFAULT_POINT, grid_points, train_keys

SEARCH = config.get("search") or {}
SEARCH_DIR = f"{STUDY_DIR}/{paths.SEARCH}"
SEARCH_RUN_DIR = f"{STUDY_DIR}/{paths.SEARCH_RUN}"
SEARCH_LOGITS = f"{TEACHER_DIR}/search_train_logits.pt"  # the teacher's logits on the carved-out training set
SELECTED = f"{STUDY_DIR}/{paths.SELECTED}"
SEARCH_PLAN = f"{STUDY_DIR}/{paths.SEARCH_PLAN}"
SELECTION = SEARCH.get("selection", "carve")
SEARCH_SEEDS = list(SEARCH.get("seeds") or [])
SEARCH_SCORE = SEARCH.get("score", "final")


def _plan_search():
    """{method: [Point, ...]} of the study's search block, checked against the study's methods."""
    document = load_methods(None)
    searched = {}
    for name, grid in (SEARCH.get("methods") or {}).items():
        where = f"search.methods.{name}"
        if name not in METHODS:
            _fail(
                f"{where}: {name!r} is not a method of this study (methods, students.*.methods); add it there or drop it here"
            )
        method = METHODS[name]
        try:
            points = grid_points(grid, where)
            for point in points:
                resolved = resolve_method(
                    document,
                    method.base,
                    config["tasks"][0],
                    use_task_settings=config["use_task_settings"],
                    options={**method.options, **point.options},
                )
        except ConfigError as error:
            _fail(f"{where}: {error}")
        if resolved.intermediate:
            _fail(
                f"{where}: {name!r} is a first stage (no scores of its own); search the method that runs after it"
            )
        searched[name] = points
    sizes = {name: len(points) * len(SEARCH_SEEDS) for name, points in searched.items()}
    if SEARCH.get("equal_budget", True) and len(set(sizes.values())) > 1:
        _fail(
            "search: equal_budget is on but the methods get different numbers of runs per task and student "
            f"({', '.join(f'{m} {n}' for m, n in sizes.items())}); give every grid the same number of points"
        )
    return searched


SEARCHED = _plan_search()
POINT_OPTIONS = {
    (name, point.name): point.options
    for name, points in SEARCHED.items()
    for point in points
}
SEARCH_TRAIN_KEYS = {name: train_keys(points) for name, points in SEARCHED.items()}
# (task, student, method) of every search, and its runs: grid points x search seeds, plus a chained
# method's first stage once per search seed (run with its default settings, folder `default`)
SEARCH_ENTRIES = [
    (t, s, m)
    for t in config["tasks"]
    for s in STUDENTS
    for m in STUDENTS[s]["methods"]
    if m in SEARCHED
]
SEARCH_GRID = []
for _t, _s, _m in SEARCH_ENTRIES:
    if METHODS[_m].after:
        SEARCH_GRID += [
            (_t, _s, METHODS[_m].after, DEFAULT_POINT, seed) for seed in SEARCH_SEEDS
        ]
    SEARCH_GRID += [
        (_t, _s, _m, point.name, seed)
        for point in SEARCHED[_m]
        for seed in SEARCH_SEEDS
    ]
SEARCH_GRID = list(dict.fromkeys(SEARCH_GRID))
for _t, _s, _m, _p, _seed in SEARCH_GRID:
    POINT_OPTIONS.setdefault((_m, _p), {})


def search_point(wildcards):
    """The grid point of a search run; None for a run of the main grid."""
    return getattr(wildcards, "point", None)


def search_record(task, student, method, point, seed):
    return f"{SEARCH_RUN_DIR.format(task=task, student=student, method=method, point=point, seed=seed)}/record.json"


def selected_config(task, student, method):
    return f"{SELECTED.format(task=task, student=student, method=method)}.yaml"


def selected_summary(task, student, method):
    return f"{SELECTED.format(task=task, student=student, method=method)}.json"


def teacher_logits_file(point):
    """The cached teacher logits a logit-only run reads: a carve-mode search run trains on fewer examples."""
    return (
        SEARCH_LOGITS if point is not None and SELECTION == "carve" else TEACHER_LOGITS
    )


def search_data(point):
    """data.* of a search run: with selection carve, train minus the carved split, scored on it."""
    if point is None or SELECTION != "carve":
        return {}
    return {"selection_split": selection_spec(SEARCH.get("carve") or {})}


def search_train(point, method):
    """train.* of a search run: its model is not kept (a first stage keeps it anyway, its second stage reads it)."""
    return {} if point is None else {"save_model": False}


SEARCH_RECORDS = [search_record(*key) for key in SEARCH_GRID]
SELECTED_CONFIGS = [selected_config(*key) for key in SEARCH_ENTRIES]
SELECTED_SUMMARIES = [selected_summary(*key) for key in SEARCH_ENTRIES]


def search_plan(wildcards):
    """What `ckd select` reads for one (task, student, method): every grid point's runs with the
    config fingerprint their records must carry, the selection split and metric."""
    from ckd.data.tasks import get_task

    task = get_task(wildcards.task)
    method = METHODS[wildcards.method]
    points = []
    for point in SEARCHED[method.name]:
        runs = []
        for seed in SEARCH_SEEDS:
            keys = _Wildcards(
                task=wildcards.task,
                student=wildcards.student,
                method=method.name,
                point=point.name,
                seed=seed,
            )
            runs.append(
                {
                    "seed": seed,
                    "record": search_record(
                        wildcards.task, wildcards.student, method.name, point.name, seed
                    ),
                    "config_fingerprint": run_fingerprint(
                        "distill", distill_overrides(keys)
                    ),
                }
            )
        points.append({"name": point.name, "options": point.options, "runs": runs})
    return {
        "study": STUDY,
        "task": task.name,
        "student": wildcards.student,
        "method": method.name,
        "selection": SELECTION,
        "selection_split": search_data(DEFAULT_POINT).get("selection_split"),
        "split": SELECTION_SPLIT if SELECTION == "carve" else task.dev_splits[0],
        "metric": task.selection_metric,
        "fixed_options": method.options,
        "points": points,
    }


wildcard_constraints:
    point=r"[A-Za-z0-9][A-Za-z0-9_.+-]*",
