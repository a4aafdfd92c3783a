"""The notebooks in notebooks/: stored clean, executed top to bottom against the smoke study (the
shared `smoke_results` fixture, what `make demo` writes) and against a hand-made study with every
ablation sweep, and a broken cell fails the run. Also the helpers of `ckd.explore` they rely on."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from ckd import explore
from ckd.cli import main as cli
from tests.fixtures.markdown import compact_markdown
from tests.fixtures.study import write_run

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
NAMES = ("results", "ablations", "relations")


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def parameters_index(nb) -> int:
    return next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))


def execute(nb, study_dir: Path, monkeypatch, params: dict | None = None) -> nbformat.NotebookNode:
    """Run a notebook as `make notebooks` does: CKD_STUDY_DIR names the study, and `params` (papermill
    style) go in a cell after the parameters cell. Raises CellExecutionError at the first failing cell."""
    nb = copy.deepcopy(nb)
    if params:
        source = "\n".join(f"{name} = {value!r}" for name, value in params.items())
        cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
        nb.cells.insert(parameters_index(nb) + 1, cell)
    monkeypatch.setenv(explore.STUDY_ENV, str(study_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    client = NotebookClient(nb, timeout=240, startup_timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    return nb


def outputs(nb, mime: str) -> list[str]:
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and mime == "stream":
                found.append(out["text"])
            elif mime in out.get("data", {}):
                found.append(out["data"][mime])
    return found


def errors_or_warnings(nb) -> list[str]:
    return [text for text in outputs(nb, "stream") if "Error" in text or "Warning" in text]


# ---------------------------------------------------------------- stored notebooks


@pytest.mark.parametrize("name", NAMES)
def test_stored_notebooks_are_clean(name):
    """Stored without outputs or execution counts, valid, with one tagged parameters cell first."""
    nb = read(name)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, name
    for cell in code:
        assert cell.outputs == [], f"{name}: a code cell has stored outputs: {cell.source[:60]!r}"
        assert cell.execution_count is None, f"{name}: a code cell has an execution count: {cell.source[:60]!r}"
        assert set(cell.metadata.get("tags", [])) <= {"parameters"}, f"{name}: unexpected tags {cell.metadata}"
    assert code[0].metadata.get("tags") == ["parameters"], f"{name}: the first code cell must be the parameters cell"
    for cell in nb.cells:
        assert not cell.get("attachments"), f"{name}: stored attachments"


# ---------------------------------------------------------------- executed against the demo


@pytest.fixture(scope="module")
def smoke_study(smoke_results) -> Path:
    return smoke_results / "smoke"


def markdown_rows(text: str) -> dict[str, list[list[str]]]:
    """{title: rows of cells} of every Markdown table in `text` (a table's rows follow its `# title`)."""
    tables, title = {}, None
    for line in text.replace("&lt;", "<").replace("&gt;", ">").splitlines():
        if line.startswith("# "):
            title = line[2:]
            tables[title] = []
        elif line.startswith("|") and title is not None and not line.startswith("|---"):
            tables[title].append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return tables


def assert_notebook_shows_the_workflow_tables(nb, tables_dir: Path, names=("main", "paper_delta", "significance",
                                                                             "missing")) -> None:
    """Every table the notebook shows equals the workflow's tables/<name>.md, cell by cell."""
    shown = markdown_rows("\n".join(outputs(nb, "text/markdown")))
    for name in names:
        written = markdown_rows((tables_dir / f"{name}.md").read_text(encoding="utf-8"))
        (title, rows), = written.items()
        assert title in shown, (name, title, list(shown))
        assert len(shown[title]) == len(rows), name
        for mine, theirs in zip(shown[title], rows):
            assert mine == theirs, (name, mine, theirs)


def test_results_notebook(smoke_study, monkeypatch):
    nb = execute(read("results"), smoke_study, monkeypatch)
    markdown = "\n".join(outputs(nb, "text/markdown"))
    for title in ("Main results, study smoke", "Ours vs published", "Significance vs kd", "No missing runs"):
        assert title in markdown, title
    assert_notebook_shows_the_workflow_tables(nb, smoke_study / "tables")
    assert "| ckd |" in compact_markdown(markdown) and "| kd |" in compact_markdown(markdown)
    # seed spread figure + the ckd plots figures (ablation bars, curves, cost)
    assert len(outputs(nb, "image/png")) >= 6
    assert not errors_or_warnings(nb)


def test_results_notebook_filters(smoke_study, monkeypatch):
    nb = execute(read("results"), smoke_study, monkeypatch,
                 {"TASKS": ["syn-pair"], "METHODS": ["teacher", "kd", "ckd"], "BOOTSTRAP": 200})
    main = next(m for m in outputs(nb, "text/markdown") if m.startswith("# Main results"))
    assert "Syn-Pair" in main and "Syn-Sentiment" not in main
    assert "| ckd |" in compact_markdown(main) and "| minilm |" not in compact_markdown(main) and "(teacher)" in main


def test_ablations_notebook_on_the_demo(smoke_study, monkeypatch):
    """The demo has only term ablations: the notebook reads them and names the missing sweeps."""
    nb = execute(read("ablations"), smoke_study, monkeypatch)
    markdown = "\n".join(outputs(nb, "text/markdown"))
    assert "#### Relation terms" in markdown and "`ckd-ltr`" in markdown and "`ckd-pair`" in markdown
    for family in ("window", "weights", "temperature"):
        assert f"Missing: **{explore.FAMILIES[family]}**" in markdown
    assert "seed std" in markdown
    assert len(outputs(nb, "image/png")) == 1  # the relation-terms figure


def test_relations_notebook(smoke_study, monkeypatch):
    nb = execute(read("relations"), smoke_study, monkeypatch)
    markdown = "\n".join(outputs(nb, "text/markdown"))
    assert "**Tokens**" in markdown and "[CLS]" in markdown and "uniform+emb" in markdown
    assert len(outputs(nb, "image/png")) == 3  # WR pair, LTR pair, WR triple heatmaps
    html = "\n".join(outputs(nb, "text/html"))
    for term in ("wr_pair", "wr_triple", "ltr_pair", "ltr_triple"):
        assert term in html
    assert not errors_or_warnings(nb)


def test_results_notebook_equals_tables_made_with_another_bootstrap(tmp_path, monkeypatch):
    """A study aggregated with 37 bootstrap draws (not the default): the notebook's significance cells,
    intervals and p-values included, are the workflow's, cell by cell, because it reads the settings."""
    root = tmp_path / "b37"
    labels = [0, 1, 0, 1, 1, 0, 1, 0, 1, 1]
    for seed in (1, 2):
        for method, wrong, acc in (("kd", {seed, 5}, 0.8), ("ckd", {seed + 6}, 0.9)):
            preds = [1 - y if i in wrong else y for i, y in enumerate(labels)]
            write_run(root, "rte", "3L-384", method, seed, {"dev": {"accuracy": acc}},
                      predictions={"dev": {"labels": labels, "final": preds, "best": preds}})
    write_run(root, "rte", "bert-base", "finetune", 0, {"dev": {"accuracy": 0.95}}, teacher=True, params=110_000_000)
    planned = [{"task": "rte", "student": "3L-384", "method": m, "seed": s} for m in ("kd", "ckd") for s in (1, 2)]
    (root / "expected.json").write_text(json.dumps(planned + [{"task": "rte", "student": "bert-base",
                                                                 "method": "teacher", "seed": 0}]))
    assert cli(["aggregate", "--study-dir", str(root), "--bootstrap", "37", "--expected", str(root / "expected.json")]) == 0
    assert "B=37 draws" in (root / "tables" / "significance.md").read_text()
    nb = execute(read("results"), root, monkeypatch)
    assert_notebook_shows_the_workflow_tables(nb, root / "tables")
    # the notebook shows the written files; computing the tables afresh from the frame with the
    # settings file's bootstrap count gives the same cells
    from ckd import explore

    recomputed = explore.study_tables(explore.load_study(root), recompute=True)
    assert set(recomputed) == {"main", "paper_delta", "ablation", "significance", "one_class", "missing"}
    for name, table in recomputed.items():
        (title, rows), = markdown_rows((root / "tables" / f"{name}.md").read_text(encoding="utf-8")).items()
        assert title == table.title and rows == ([table.header] + table.rows if table.rows else []), name


# ---------------------------------------------------------------- a broken cell fails the run


def test_a_broken_cell_fails_the_run(tmp_path, monkeypatch):
    """A copy of a notebook with one failing cell in the middle: execution raises, naming the error."""
    study = _sweep_study(tmp_path / "toy", seeds=(1, 2))
    nb = read("ablations")
    broken = nbformat.v4.new_code_cell("frame['no such column']  # a cell broken on purpose")
    nb.cells.insert(parameters_index(nb) + 2, broken)
    with pytest.raises(CellExecutionError) as info:
        execute(nb, study, monkeypatch)
    assert "KeyError" in str(info.value) and "no such column" in str(info.value)


# ---------------------------------------------------------------- a study with every sweep

SETTINGS = {"alpha": 0.5, "temperature": 4.0, "window": 21, "wr_pair": 1.0, "wr_triple": 10.0, "ltr_pair": 1.0,
            "ltr_triple": 10.0}
TERMS = ("kd", "wr_pair", "wr_triple", "ltr_pair", "ltr_triple")
VARIANTS = {  # method: (setting changes, dropped terms, score shift)
    "ckd": ({}, (), 0.0),
    "ckd-wr": ({}, ("ltr_pair", "ltr_triple"), -0.02),
    "ckd-ltr": ({}, ("wr_pair", "wr_triple"), -0.05),
    "ckd-pair": ({}, ("wr_triple", "ltr_triple"), 0.002),
    "ckd-window3": ({"window": 3}, (), -0.01),
    "ckd-window41": ({"window": 41}, (), 0.003),
    "ckd-full-triple": ({"window": None}, (), 0.001),
    "ckd-alpha0.1": ({"alpha": 0.1}, (), -0.03),
    "ckd-alpha0.9": ({"alpha": 0.9}, (), 0.01),
    "ckd-wr_pair10": ({"wr_pair": 10}, (), 0.002),
    "ckd-T1": ({"temperature": 1}, (), -0.015),
    "ckd-T8": ({"temperature": 8}, (), 0.001),
}


def _sweep_study(root: Path, seeds=(1, 2, 3)) -> Path:
    """Records shaped like config/ablation.yaml's: term ablations, window, weight and temperature sweeps."""
    for task, base in (("rte", 0.60), ("mrpc", 0.80)):
        for seed in seeds:
            noise = (seed - 2) * 0.004
            scores = lambda v: {"dev": {"accuracy": v, "f1": v}}  # noqa: E731
            write_run(root, task, "3L-384", "kd", seed, scores(base - 0.01 + noise))
            for method, (changes, dropped, shift) in VARIANTS.items():
                resolved = {"name": method, "base": "ckd", "layer_map": "uniform+emb",
                            "settings": {**SETTINGS, **changes},
                            "terms": [{"name": t, "weight": 1.0} for t in TERMS if t not in dropped]}
                # ckd-full-triple is a methods-file entry (no overrides); the others are variants
                overrides = {} if method == "ckd-full-triple" else changes
                write_run(root, task, "3L-384", method, seed, scores(base + shift + noise), method_base="ckd",
                          overrides=overrides, resolved=resolved)
    return root


def test_ablation_frame_families_and_reading(tmp_path):
    study = explore.load_study(_sweep_study(tmp_path / "sweeps"))
    frame = explore.ablation_frame(study)
    family = dict(zip(frame["method"], frame["family"]))
    assert family["ckd"] == "full"
    assert {m for m, f in family.items() if f == "terms"} == {"ckd-wr", "ckd-ltr", "ckd-pair"}
    assert {m for m, f in family.items() if f == "window"} == {"ckd-window3", "ckd-window41", "ckd-full-triple"}
    assert {m for m, f in family.items() if f == "weights"} == {"ckd-alpha0.1", "ckd-alpha0.9", "ckd-wr_pair10"}
    assert {m for m, f in family.items() if f == "temperature"} == {"ckd-T1", "ckd-T8"}
    rte = frame[frame["column"] == "RTE"].set_index("method")
    assert rte.loc["ckd-ltr", "delta"] == pytest.approx(-5.0)
    assert rte.loc["ckd-ltr", "exceeds"] is True and rte.loc["ckd-pair", "exceeds"] is False
    assert rte.loc["ckd-full-triple", "value"] is None  # window null stays None, not NaN

    assert explore.missing_ablations(frame) == []
    findings = explore.ablation_findings(frame)
    terms_rte = next(f for f in findings if f.startswith("**Relation terms") and ", RTE**" in f)
    assert "best `ckd-pair`" in terms_rte and "worst `ckd-ltr`" in terms_rte
    assert "−5.0 vs full ckd, larger than the seed std" in terms_rte
    window_rte = next(f for f in findings if f.startswith("**Window size") and ", RTE**" in f)
    assert "By value: window 3 → 59.0, 41 → 60.3, all → 60.1" in window_rte
    reading = explore.ablation_reading(frame)
    assert "#### KD temperature" in reading and "Not in this study" not in reading
    for family in ("terms", "window", "weights", "temperature"):
        assert explore.ablation_figure(frame, family, study) is not None
    assert explore.ablation_figure(frame, "other", study) is None


def test_ablation_reading_with_one_seed_and_nothing(tmp_path):
    study = explore.load_study(_sweep_study(tmp_path / "one", seeds=(1,)), methods=["kd", "ckd", "ckd-wr", "ckd-T1"])
    frame = explore.ablation_frame(study)
    assert frame[frame["method"] == "ckd-wr"]["exceeds"].tolist() == [None, None]
    assert "seed spread is unknown (one seed)" in explore.ablation_reading(frame)
    missing = explore.missing_ablations(frame)
    assert len(missing) == 2 and any("window" in m for m in missing) and any("alpha" in m for m in missing)
    none = explore.ablation_frame(explore.load_study(study.path, methods=["kd"]))
    assert none.empty and "no CKD rows" in explore.missing_ablations(none)[0]


def test_ablations_notebook_with_every_sweep(tmp_path, monkeypatch):
    nb = execute(read("ablations"), _sweep_study(tmp_path / "sweeps"), monkeypatch)
    markdown = "\n".join(outputs(nb, "text/markdown"))
    for title in ("#### Relation terms", "#### Window size", "#### Loss weights", "#### KD temperature"):
        assert title in markdown
    assert "Missing:" not in markdown and "Not in this study" not in markdown
    assert len(outputs(nb, "image/png")) == 4


# ---------------------------------------------------------------- helpers on the demo's records and models


def test_study_filters_and_tables(smoke_study):
    study = explore.load_study(smoke_study, tasks="syn-sentiment", methods=["kd", "ckd"])
    assert study.tasks == ["syn-sentiment"] and study.methods == ["kd", "ckd"]
    tables = explore.study_tables(study, n_boot=100)
    assert set(tables) == {"main", "paper_delta", "ablation", "significance", "one_class"}  # no missing-runs grid when filtered
    assert list(explore.table_frame(tables["main"])["Method"]) == ["kd", "ckd"]
    spread = explore.seed_spread(study)
    assert set(spread["method"]) == {"kd", "ckd"} and (spread["n"] == 2).all()
    assert ((spread["range"] - (spread["max"] - spread["min"])).abs() < 1e-9).all()
    with pytest.raises(explore.CkdError, match="students filter: nobody not in study smoke; it has tiny-2L"):
        explore.load_study(smoke_study, students=["nobody"])
    with pytest.raises(explore.CkdError, match="unknown task"):
        explore.load_study(smoke_study, tasks=["no-such-task"])


def test_relation_view_shows_what_the_losses_compare(smoke_study):
    """The heatmaps are the distributions the CKD losses compare: their KL, with the losses'
    denominators, gives back the values ckd.losses.relations computes."""
    run = explore.find_run(smoke_study, "syn-sentiment", "ckd")
    text, _ = explore.example_sentence("syn-sentiment")
    view = explore.explore_relations(run, None, text)
    n, K = len(view.tokens), len(view.pairs)
    assert view.pairs == [(0, 0), (2, 1), (4, 2)] and view.layer_map == "uniform+emb"
    assert view.wr_teacher.shape == view.wr_student.shape == (K, n, n)
    assert view.ltr_teacher.shape == (n, K, K)
    np.testing.assert_allclose(view.wr_teacher.sum(-1), 1.0, atol=1e-9)

    def kl(p, q):
        keep = ~np.eye(p.shape[-1], dtype=bool)
        return float((p[..., keep] * np.log(p[..., keep] / q[..., keep])).sum())

    for k in range(K):
        assert kl(view.wr_teacher[k], view.wr_student[k]) / n**2 == pytest.approx(view.per_layer.iloc[k]["wr_pair"], rel=1e-3)
    wr = view.losses.set_index("term")["value"]
    assert wr["wr_pair"] == pytest.approx(view.per_layer["wr_pair"].mean(), rel=1e-5)
    for i in range(n):
        assert kl(view.ltr_teacher[i], view.ltr_student[i]) / K**2 == pytest.approx(view.per_token.iloc[i]["ltr_pair"], rel=1e-3)
    assert wr["ltr_pair"] == pytest.approx(view.per_token["ltr_pair"].mean(), rel=1e-5)
    # the run's weights: ckd trains on all four terms
    weights = view.losses.set_index("term")["weight"]
    assert all(weights > 0) and all(math.isfinite(v) for v in wr)
    for figure in (explore.wr_pair_figure(view), explore.ltr_figure(view), explore.wr_triple_figure(view)):
        assert explore.figure_png(figure).startswith(b"\x89PNG")


def test_notebook_study_leaves_out_what_the_tables_leave_out(tmp_path):
    """explore.load_study reads the study's expected.json as `ckd aggregate --expected` does: runs the
    study no longer plans are not shown; without filters study_frame is the workflow's scores.csv."""
    root = _sweep_study(tmp_path / "sweeps", seeds=(1, 2))
    planned = [{"task": "rte", "student": "3L-384", "method": m, "seed": s} for m in ("kd", "ckd", "ckd-wr") for s in (1, 2)]
    (root / "expected.json").write_text(json.dumps(planned))  # mrpc and the sweeps were dropped from the study
    study = explore.load_study(root)
    assert study.tasks == ["rte"] and study.methods == ["kd", "ckd", "ckd-wr"] and len(study.records) == 6
    assert len(study.unplanned) == 2 * 2 * 13 - 6 and "no longer plans left out" in study.summary()
    assert cli(["aggregate", "--study-dir", str(root), "--bootstrap", "20", "--expected", str(root / "expected.json")]) == 0
    frame = explore.study_frame(study)
    assert frame.equals(pd.read_csv(root / "tables" / "scores.csv", dtype=frame.dtypes.to_dict()))
    assert set(frame.loc[frame["shown"], "method"]) == {"kd", "ckd", "ckd-wr"} and (~frame["planned"]).sum() > 0
    filtered = explore.study_frame(explore.load_study(root, methods=["kd"]))
    assert set(filtered["method"]) == {"kd"} and filtered["shown"].all()
