"""Grid search without selection bias: the carved selection split, `ckd select`, the selected-settings
table, and a tiny search study through the real `snakemake` (synthetic task, 2 settings x 2 search seeds)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import yaml

from ckd.aggregate import aggregate_study
from ckd.config import resolve_config
from ckd.data.loading import SELECTION_SPLIT, carve_selection, load_split, run_splits, selection_spec
from ckd.errors import ConfigError, DataError
from ckd.records import RecordError
from ckd.runs import execute
from ckd.search import grid_points, point_name, select
from tests.conftest import job_counts, snakemake
from tests.fixtures.markdown import compact_markdown
from tests.fixtures.study import write_run

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ the carved split


def test_carve_is_stratified_seeded_capped_and_disjoint():
    examples = load_split("syn-pair", "train", source="synthetic", synthetic_sizes={"train": 600})
    rest, carved = carve_selection(examples, "syn-pair", fraction=0.1, max_examples=2000, seed=0)
    assert len(carved) == 60 and len(rest) == 540
    assert {e.guid for e in rest} | {e.guid for e in carved} == {e.guid for e in examples}
    assert not {e.guid for e in rest} & {e.guid for e in carved}
    # both parts keep the file order
    position = {e.guid: i for i, e in enumerate(examples)}
    assert [position[e.guid] for e in carved] == sorted(position[e.guid] for e in carved)
    # stratified: each class's share of the carved split is its share of the training set (to one example)
    whole, part = Counter(e.label for e in examples), Counter(e.label for e in carved)
    for label, count in whole.items():
        assert abs(part[label] - count * 60 / 600) <= 1, (label, part, whole)
    assert carve_selection(examples, "syn-pair", fraction=0.1, seed=0) == (rest, carved)
    assert carve_selection(examples, "syn-pair", fraction=0.1, seed=1)[1] != carved
    assert len(carve_selection(examples, "syn-pair", fraction=0.1, max_examples=7, seed=0)[1]) == 7


def test_carve_of_a_regression_task_spans_the_scores():
    examples = load_split("syn-similarity", "train", source="synthetic", synthetic_sizes={"train": 500})
    _, carved = carve_selection(examples, "syn-similarity", fraction=0.1, seed=0)
    scores = sorted(e.label for e in examples)
    # ten rank strata of 50 examples, 5 drawn from each: the carved split has a spread like the whole set
    low, high = scores[len(scores) // 10], scores[-len(scores) // 10]
    assert len(carved) == 50
    assert sum(e.label <= low for e in carved) >= 4 and sum(e.label >= high for e in carved) >= 4


def test_too_small_a_set_cannot_be_carved():
    examples = load_split("syn-sentiment", "train", source="synthetic", synthetic_sizes={"train": 3})
    with pytest.raises(DataError, match="cannot carve"):
        carve_selection(examples, "syn-sentiment", fraction=0.9)


@pytest.mark.parametrize("value, culprit", [
    ({"fraction": 1.5}, "data.selection_split.fraction must be a number in (0, 1), got 1.5"),
    ({"fractoin": 0.1}, "data.selection_split.fractoin is unknown"),
    ({"max_examples": 0}, "data.selection_split.max_examples must be a positive integer or null"),
    ({"seed": -1}, "data.selection_split.seed must be a non-negative integer (as numpy seeds are), got -1"),
    ("yes", "data.selection_split must be null or a mapping"),
])
def test_bad_selection_split_is_one_line_naming_the_key(value, culprit, tmp_path):
    with pytest.raises(ConfigError) as error:
        resolve_config("finetune", None, ["task=syn-sentiment", f"output_dir={tmp_path}", "model.init=random",
                                          f"data.selection_split={json.dumps(value)}"])
    assert culprit in str(error.value) and "\n" not in str(error.value)
    assert selection_spec({}) == {"fraction": 0.1, "max_examples": 2000, "seed": 0}


# ------------------------------------------------------------------ dev labels are never read


def _glue_rte(root: Path, dev: str | None) -> Path:
    """A small RTE folder in the GLUE layout; `dev` is the dev file's text (None: no dev file)."""
    folder = root / "RTE"
    folder.mkdir(parents=True)
    words = ["the cat sat", "a dog ran", "birds fly high", "fish swim", "rain falls", "sun shines"]
    rows = ["index\tsentence1\tsentence2\tlabel"]
    for i in range(80):
        label = "entailment" if i % 2 else "not_entailment"
        rows.append(f"{i}\t{words[i % 6]} today\t{words[(i * 5) % 6]}\t{label}")
    (folder / "train.tsv").write_text("\n".join(rows) + "\n")
    if dev is not None:
        (folder / "dev.tsv").write_text(dev)
    return root


CORRUPT_DEV = "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tbanana\n1\tc\td\t\n"
TINY_MODEL = ["model.init=random", "model.tokenizer=synthetic", "model.layers=1", "model.hidden=16", "model.heads=2", "model.ffn=32"]
QUIET = ["train.progress=false", "train.tensorboard=false", "train.threads=1", "train.epochs=1", "train.batch_size=16",
         "train.save_model=false", "data.max_length=16"]
CARVE = 'data.selection_split={"fraction": 0.25, "seed": 3}'


def _finetune(glue: Path, out: Path, *overrides: str) -> dict:
    config = resolve_config("finetune", None, ["task=rte", f"output_dir={out}", "data.source=glue_dir", f"data.glue_dir={glue}",
                                               *TINY_MODEL, *QUIET, *overrides])
    execute("finetune", config)
    return json.loads((out / "record.json").read_text())


@pytest.mark.parametrize("dev", [CORRUPT_DEV, None], ids=["corrupt-dev-labels", "no-dev-file"])
def test_a_carved_run_never_reads_the_dev_file(dev, tmp_path):
    glue = _glue_rte(tmp_path / "glue", dev)
    # the same run scored on dev fails on the dev file: a run that read it would fail the same way
    with pytest.raises(DataError, match="dev.tsv"):
        _finetune(glue, tmp_path / "dev-run")
    record = _finetune(glue, tmp_path / "carved", CARVE)
    assert {k for k in record["metrics"]["final"] if k != "step"} == {SELECTION_SPLIT}
    assert record["metrics"]["selection"]["split"] == SELECTION_SPLIT
    assert set(record["data_fingerprint"]) == {"train", SELECTION_SPLIT}
    assert record["config"]["data"]["selection_split"] == {"fraction": 0.25, "max_examples": 2000, "seed": 3}
    predictions = json.loads((tmp_path / "carved" / "predictions.json").read_text())
    assert set(predictions) == {SELECTION_SPLIT} and len(predictions[SELECTION_SPLIT]["labels"]) == 20
    assert record["timing"]["train_steps"] == math.ceil(60 / 16)  # trained on 80 - 20 examples


def test_run_splits_opens_no_dev_file_when_carving(tmp_path):
    glue = _glue_rte(tmp_path / "glue", None)
    data = resolve_config("finetune", None, ["task=rte", f"output_dir={tmp_path}", "data.source=glue_dir", f"data.glue_dir={glue}",
                                             "model.init=random", CARVE])["data"]
    train, splits = run_splits("rte", data)
    assert len(train) == 60 and list(splits) == [SELECTION_SPLIT] and len(splits[SELECTION_SPLIT]) == 20
    assert run_splits("rte", data, evaluation=False) == (train, {})


# ------------------------------------------------------------------ grids and selection


def test_grid_points_product_list_and_names():
    points = grid_points({"alpha": [0.5, 0.9], "temperature": [1, 4.0]}, "search.methods.kd")
    assert [p.options for p in points] == [{"alpha": 0.5, "temperature": 1}, {"alpha": 0.5, "temperature": 4.0},
                                           {"alpha": 0.9, "temperature": 1}, {"alpha": 0.9, "temperature": 4.0}]
    assert [p.name for p in points] == ["alpha0.5_temperature1", "alpha0.5_temperature4", "alpha0.9_temperature1",
                                        "alpha0.9_temperature4"]
    assert point_name({"lr": 3e-5, "window": None}) == "lr3e-05_windownull" and point_name({}) == "default"
    explicit = grid_points([{"beta": 10}, {"beta": 100, "alpha": 0.5}], "search.methods.pkd")
    assert [p.name for p in explicit] == ["beta10", "alpha0.5_beta100"]
    with pytest.raises(ConfigError, match="points 1 and 2 are the same setting"):
        grid_points([{"beta": 10}, {"beta": 10.0}], "search.methods.pkd")
    with pytest.raises(ConfigError, match=r"search.methods.kd.alpha: give a non-empty list"):
        grid_points({"alpha": 0.5}, "search.methods.kd")


def _search_record(path: Path, seed: int, value: float, *, split: str = SELECTION_SPLIT, fingerprint: str = "fp",
                   data: str = "carved") -> dict:
    path.mkdir(parents=True)
    final = {"step": 10, split: {"accuracy": value}}
    record = {"schema_version": 1, "kind": "distill", "task": "syn-sentiment", "method": "kd", "seed": seed,
              "metrics": {"selection": {"split": split, "metric": "accuracy"}, "final": final, "best": final},
              "config_fingerprint": fingerprint, "data_fingerprint": {"train": "rest", split: data}}
    (path / "record.json").write_text(json.dumps(record))
    return {"seed": seed, "record": str(path / "record.json"), "config_fingerprint": "fp"}


def _plan(tmp_path: Path, values: dict[str, list[float]], **kwargs) -> dict:
    points = []
    for name, scores in values.items():
        runs = [_search_record(tmp_path / name / f"seed{seed}", seed, v, **kwargs) for seed, v in enumerate(scores, 1)]
        points.append({"name": name, "options": {"alpha": float(name[5:])}, "runs": runs})
    return {"task": "syn-sentiment", "student": "s", "method": "kd", "selection": "carve", "split": SELECTION_SPLIT,
            "metric": "accuracy", "fixed_options": {"window": 5}, "points": points}


def test_select_takes_the_best_mean_over_seeds(tmp_path):
    # alpha0.9 has the best single run, alpha0.5 the best mean
    summary = select(_plan(tmp_path, {"alpha0.1": [0.60, 0.62], "alpha0.5": [0.70, 0.72], "alpha0.9": [0.90, 0.40]}))
    assert summary["selected"] == "alpha0.5" and summary["selected_mean"] == pytest.approx(0.71)
    assert summary["method_options"] == {"window": 5, "alpha": 0.5}
    assert [p["mean"] for p in summary["points"]] == pytest.approx([0.61, 0.71, 0.65])


def test_select_breaks_ties_by_declared_order_and_never_picks_nan(tmp_path):
    summary = select(_plan(tmp_path, {"alpha0.9": [0.5, float("nan")], "alpha0.3": [0.6, 0.7], "alpha0.1": [0.7, 0.6]}))
    assert summary["selected"] == "alpha0.3"


def test_select_refuses_stale_missing_and_dev_scored_records(tmp_path):
    with pytest.raises(RecordError, match="stale search run"):
        select(_plan(tmp_path / "a", {"alpha0.1": [0.5]}, fingerprint="other"))
    # a carve-mode search run that was scored on dev (it read dev labels) cannot be used
    with pytest.raises(RecordError, match="not only on the carved 'selection' split"):
        select(_plan(tmp_path / "b", {"alpha0.1": [0.5]}, split="dev"))
    plan = _plan(tmp_path / "c", {"alpha0.1": [0.5]})
    Path(plan["points"][0]["runs"][0]["record"]).unlink()
    with pytest.raises(RecordError, match="search run not finished"):
        select(plan)
    # two points scored on different carved splits are not comparable
    plan = _plan(tmp_path / "d", {"alpha0.1": [0.5], "alpha0.9": [0.6]})
    record = Path(plan["points"][1]["runs"][0]["record"])
    record.write_text(record.read_text().replace('"carved"', '"another"'))
    with pytest.raises(RecordError, match="scored on different selection data"):
        select(plan)


def test_select_dev_reads_the_dev_metric(tmp_path):
    plan = {**_plan(tmp_path, {"alpha0.1": [0.5, 0.6], "alpha0.9": [0.7, 0.6]}, split="dev"), "selection": "dev", "split": "dev"}
    summary = select(plan)
    assert summary["selected"] == "alpha0.9" and summary["selection"] == "dev"
    with pytest.raises(ConfigError, match="selection carve scores on the 'selection' split"):
        select({**plan, "selection": "carve"})


# ------------------------------------------------------------------ tables


def test_selected_settings_table_and_dev_label(tmp_path):
    study = tmp_path / "s"
    write_run(study, "mrpc", "3L-384", "kd", 1, {"dev": {"f1": 0.8, "accuracy": 0.7}}, overrides={"alpha": 0.5})
    write_run(study, "mrpc", "3L-384", "pkd", 1, {"dev": {"f1": 0.8, "accuracy": 0.7}}, overrides={"beta": 10})
    selected = study / "search" / "selected" / "mrpc" / "3L-384"
    selected.mkdir(parents=True)
    summary = {"task": "mrpc", "student": "3L-384", "method": "kd", "selection": "dev", "split": "dev", "metric": "f1",
               "score": "final", "selection_split": None, "selected": "alpha0.5", "selected_options": {"alpha": 0.5},
               "selected_mean": 0.81, "method_options": {"alpha": 0.5},
               "points": [{"point": "alpha0.5", "seeds": [1, 2], "mean": 0.81}, {"point": "alpha0.9", "seeds": [1, 2], "mean": 0.79}]}
    (selected / "kd.json").write_text(json.dumps(summary))
    # a selection the pkd runs were not made with (beta 100 vs their 10): it labels nothing
    stale = {**summary, "method": "pkd", "selected": "beta100", "selected_options": {"beta": 100}, "method_options": {"beta": 100}}
    (selected / "pkd.json").write_text(json.dumps(stale))
    # a search run's record under search/ never enters the tables
    write_run(study / "search", "mrpc", "3L-384", "kd", 7, {"dev": {"f1": 0.1, "accuracy": 0.1}})
    tables = study / "tables"
    aggregate_study(study, tables, n_boot=10)
    table = compact_markdown((tables / "selected_settings.md").read_text())
    assert "| MRPC | 3L-384 | kd | alpha=0.5 | f1 81.0 | dev (dev) — as the papers did; optimistic | 2 | 2 |" in table
    assert "| pkd |" not in table and "1 selection(s) under search/selected/ match no tabulated run's settings" in table
    for name in ("main", "paper_delta", "significance", "ablation"):
        text = compact_markdown((tables / f"{name}.md").read_text())
        assert "[settings selected on dev]" in text.splitlines()[0], name
        assert "Settings of kd: chosen by grid search ON THE DEV SET" in text, name
    main = compact_markdown((tables / "main.md").read_text())
    assert "80.0 (1)" in main and "10.0" not in main
    csv = (tables / "selected_settings.csv").read_text().splitlines()
    assert csv[0].startswith("task,student,method,selection,split,metric") and len(csv) == 2
    assert "selected_settings.tex" in {p.name for p in tables.iterdir()}


# ------------------------------------------------------------------ the workflow


def _tiny_study(results: Path, **search) -> dict:
    return {
        "study": "tinysearch",
        "results_dir": str(results),
        "tasks": ["syn-sentiment"],
        "seeds": [1],
        "data": {"source": "synthetic", "max_length": 24, "synthetic_train_size": 200, "synthetic_dev_size": 60},
        "train": {"epochs": 1, "lr": 1.0e-3, "batch_size": 32, "tensorboard": False},
        "teachers": {"t": {"model": {"init": "random", "tokenizer": "synthetic", "layers": 1, "hidden": 16, "heads": 2, "ffn": 32}}},
        "students": {"s": {"model": {"init": "random", "tokenizer": "synthetic", "layers": 1, "hidden": 16, "heads": 2, "ffn": 32}}},
        "methods": ["kd"],
        "search": {"seeds": [11, 12], "methods": {"kd": {"alpha": [0.1, 0.9]}}, **search},
        "aggregate": {"bootstrap": 10},
        "resources": {kind: {"threads": 1, "mem_mb": 1000, "runtime": 5} for kind in ("finetune", "distill", "cache_logits", "aggregate")},
    }


def _write(tmp_path: Path, study: dict, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(study))
    return path


FIRST = "search/runs/syn-sentiment/s/kd/alpha0.9/seed12/record.json"


@pytest.fixture(scope="module")
def tiny_search(tmp_path_factory) -> tuple[Path, dict, float]:
    """The tiny search study, interrupted after one search run and resumed (tables only, no plots: the
    plots rule is tested with the smoke study). Returns the study folder, the job counts planned for the
    resumed invocation ran, and the first search record's mtime before it."""
    root = tmp_path_factory.mktemp("search")
    config = _write(root, _tiny_study(root / "results"))
    study = root / "results" / "tinysearch"
    first = snakemake(str(study / FIRST), "--cores", "1", "--configfile", str(config), timeout=300)
    assert first.returncode == 0, first.stdout[-5000:]
    assert job_counts(first.stdout) == {"finetune_teacher": 1, "search_distill": 1}, first.stdout[-3000:]
    mtime = (study / FIRST).stat().st_mtime
    tables = [str(study / "tables" / f"{name}.md") for name in ("main", "selected_settings")]
    done = snakemake(*tables, "--cores", "2", "--configfile", str(config), timeout=600)
    assert done.returncode == 0, done.stdout[-5000:]
    return study, job_counts(done.stdout), mtime


def test_search_runs_are_scored_on_the_carved_split_only(tiny_search):
    tiny_search = tiny_search[0]
    records = sorted((tiny_search / "search" / "runs").glob("syn-sentiment/s/kd/*/seed*/record.json"))
    assert [p.relative_to(tiny_search / "search" / "runs").as_posix() for p in records] == [
        f"syn-sentiment/s/kd/{point}/seed{seed}/record.json" for point in ("alpha0.1", "alpha0.9") for seed in (11, 12)]
    for path in records:
        record = json.loads(path.read_text())
        assert {k for k in record["metrics"]["final"] if k != "step"} == {SELECTION_SPLIT}, path
        assert set(record["data_fingerprint"]) == {"train", SELECTION_SPLIT}, path
        assert record["config"]["data"]["selection_split"] == {"fraction": 0.1, "max_examples": 2000, "seed": 0}
        assert record["method_overrides"] == {"alpha": float(path.parent.parent.name[5:])}


def test_the_winner_is_rerun_on_the_report_seeds_on_the_full_training_set(tiny_search):
    tiny_search = tiny_search[0]
    means = {}
    for point in ("alpha0.1", "alpha0.9"):
        values = [json.loads(p.read_text())["metrics"]["final"][SELECTION_SPLIT]["accuracy"]
                  for p in sorted((tiny_search / "search" / "runs" / "syn-sentiment" / "s" / "kd" / point).glob("seed*/record.json"))]
        means[point] = sum(values) / len(values)
    winner = "alpha0.9" if means["alpha0.9"] > means["alpha0.1"] else "alpha0.1"  # a tie goes to the first declared
    summary = json.loads((tiny_search / "search" / "selected" / "syn-sentiment" / "s" / "kd.json").read_text())
    assert summary["selected"] == winner and summary["selected_mean"] == pytest.approx(means[winner])
    report = json.loads((tiny_search / "runs" / "syn-sentiment" / "s" / "kd" / "seed1" / "record.json").read_text())
    assert report["method_overrides"] == {"alpha": float(winner[5:])}
    assert report["config"]["data"]["selection_split"] is None
    assert set(report["data_fingerprint"]) == {"train", "dev"} and "dev" in report["metrics"]["final"]
    search = json.loads(next((tiny_search / "search" / "runs").rglob("record.json")).read_text())
    assert report["data_fingerprint"]["train"] != search["data_fingerprint"]["train"]  # full vs carved-out
    table = compact_markdown((tiny_search / "tables" / "selected_settings.md").read_text())
    assert f"| Syn-Sentiment | s | kd | alpha={float(winner[5:])} |" in table
    assert "split carved from train (10%, at most 2000, seed 0) | 2 | 2 |" in table
    main = compact_markdown((tiny_search / "tables" / "main.md").read_text())
    assert "Settings of kd: chosen by grid search on a split carved from the training set" in main
    assert "selected on dev" not in main
    expected = json.loads((tiny_search / "expected.json").read_text())
    assert all(e["config_fingerprint"] for e in expected)  # the report run's fingerprint, known after selection
    assert "No missing runs." in compact_markdown((tiny_search / "tables" / "missing.md").read_text())  # and the record carries it


def test_an_interrupted_search_resumes_with_the_missing_points_only(tiny_search):
    study, resumed, mtime = tiny_search
    # one grid point x seed (and its teacher) had finished: the resumed invocation runs the other three
    assert resumed == {"search_plan": 1, "search_distill": 3, "select": 1, "distill": 1, "expected_runs": 1, "aggregate": 1}
    assert (study / FIRST).stat().st_mtime == mtime


def test_selection_dev_plans_search_runs_on_the_full_training_set(tmp_path):
    study = _tiny_study(tmp_path / "results", selection="dev")
    study["teacher_logits"] = True
    study["search"]["methods"]["kd"] = {"lr": [1.0e-3, 3.0e-3]}  # the grid's lr, not the study's train.lr
    planned = snakemake("-n", "-p", "--configfile", str(_write(tmp_path, study)))
    assert planned.returncode == 0, planned.stdout[-3000:]
    counts = job_counts(planned.stdout)
    assert counts["search_distill"] == 4 and counts["select"] == 1 and "search_teacher_logits" not in counts, counts
    search_commands = [line for line in planned.stdout.splitlines() if "ckd distill" in line and "/search/runs/" in line]
    assert len(search_commands) == 4
    assert all("selection_split" not in line and "/train_logits.pt" in line for line in search_commands)
    assert all("train.lr=" not in line for line in search_commands)
    assert sum('method_options={"lr": 0.003}' in line for line in search_commands) == 2
    report = [line for line in planned.stdout.splitlines() if "ckd distill" in line and "/tinysearch/runs/" in line]
    assert len(report) == 1 and "train.lr=" not in report[0] and "-c " in report[0] and "method_options" not in report[0]


@pytest.mark.parametrize("edit, culprit", [
    (lambda s: s["search"]["methods"].update(kd={"alpah": [0.1]}), "search.methods.kd: method_options.alpah: not a setting"),
    (lambda s: s["search"]["methods"].update(pkd={"beta": [1]}), "search.methods.pkd: 'pkd' is not a method of this study"),
    (lambda s: (s["methods"].append("finetune"), s["search"]["methods"].update(finetune={"lr": [1e-3, 2e-3, 3e-3]})),
     "equal_budget is on but the methods get different numbers of runs"),
    (lambda s: (s["methods"].append("tinybert"), s["search"]["methods"].update({"tinybert-intermediate": {"lr": [1e-3, 2e-3]}})),
     "is a first stage (no scores of its own)"),
    (lambda s: s["search"].update(selection="test"), "'test' is not one of ['carve', 'dev']"),
])
def test_bad_search_block_fails_before_any_job(edit, culprit, tmp_path):
    study = _tiny_study(tmp_path / "results")
    edit(study)
    planned = snakemake("-n", "--configfile", str(_write(tmp_path, study)))
    assert planned.returncode != 0 and culprit in planned.stdout, planned.stdout[-3000:]
    assert not (tmp_path / "results").exists()


def test_tuned_study_plans_an_equal_search_for_every_method(tmp_path):
    config = yaml.safe_load((REPO / "config" / "tuned.yaml").read_text())
    search = config["search"]
    sizes = {m: len(grid_points(g, m)) * len(search["seeds"]) for m, g in search["methods"].items()}
    assert set(sizes) == {"kd", "pkd", "tinybert", "minilm", "ckd"} and set(sizes.values()) == {12}
    tasks, seeds = len(config["tasks"]), len(config["seeds"])
    expected = {
        "finetune_teacher": tasks, "cache_teacher_logits": tasks, "search_teacher_logits": tasks,
        # every grid point x search seed, plus TinyBERT's first stage once per search seed
        "search_distill": tasks * (sum(sizes.values()) + len(search["seeds"])),
        "search_plan": tasks * len(sizes), "select": tasks * len(sizes),
        "distill": tasks * seeds * (len(config["methods"]) + 1),  # + TinyBERT's first stage
        "expected_runs": 1, "aggregate": 1, "plots": 1, "cost": 1, "all": 1,
    }
    assert sum(expected.values()) == 470
    planned = snakemake("-n", "--configfile", "config/tuned.yaml", "--config", f"results_dir={tmp_path}")
    assert planned.returncode == 0, planned.stdout[-3000:]
    assert job_counts(planned.stdout) == expected
