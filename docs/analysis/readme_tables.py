"""Print the README's two tables of a shipped study from its `tables/` folder.

Usage: python docs/analysis/readme_tables.py [STUDY_DIR]   (default results/glue-minilm)

Reads `tables/main.csv` (mean, sample std and seed count per task column), `tables/significance.csv`
(each method against the baseline) and `tables/scores.csv` (the tidy frame of every run's metrics, for MRPC
accuracy, which the main table does not show: the task spec reports F1). Prints, in Markdown:

1. the main table: dev score x100, mean ± std over seeds; "(1 seed)"/"(2 seeds)" where fewer than 3 seeds
   finished; – where none did;
2. the significance table: Δ x100 [95% interval], the one-sided paired-bootstrap p and, in brackets, the
   seed-level sign-flip p.

`tests/test_readme_tables.py` checks that README.md holds exactly these lines, so the README cannot drift
from the committed tables.
"""

import sys
from pathlib import Path

import pandas as pd

from ckd.frame import cell_stats, read_scores
from ckd.tables.common import fmt_num, fmt_params, row_label

TASK_COLUMNS = ["SST-2", "STS-B", "MRPC", "RTE", "CoLA"]  # README order; main.csv names the columns so


def _cell(mean: float, std: float, n: int) -> str:
    if n == 0 or pd.isna(mean):
        return "–"
    if n == 1:
        return f"{fmt_num(mean)} (1 seed)"
    return f"{fmt_num(mean)} ± {fmt_num(std)}" + ("" if n >= 3 else f" ({n} seeds)")


def _p(x: float) -> str:
    return "p < 0.0001" if x < 1e-4 else f"p = {x:.3f}"


def _header(names: list[str]) -> list[str]:
    return ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]


def main_table(tables: Path) -> list[str]:
    """The main table's Markdown lines (one row per main.csv row, final scores)."""
    main = pd.read_csv(tables / "main.csv")
    cols = [c for c in TASK_COLUMNS if main[f"{c}_n"].max() > 0]
    stats = cell_stats(read_scores(tables / "scores.csv"), score="final")
    acc = stats[(stats.task == "mrpc") & (stats.metric == "accuracy")].set_index(["role", "student", "method"])
    names = []
    for c in cols:
        names += ["MRPC F1", "MRPC acc"] if c == "MRPC" else [c]
    lines = _header(["Model", "Params", "Method"] + names)
    for _, r in main.iterrows():
        cells = []
        for c in cols:
            cells.append(_cell(r[c], r[f"{c}_std"], int(r[f"{c}_n"])))
            if c == "MRPC":
                key = (r.role, r.student, r.method)
                a = acc.loc[key] if key in acc.index else None
                cells.append("–" if a is None else _cell(a["mean"], a["std"], int(a["n"])))
        label = row_label(r.role, r.student)
        lines.append(f"| {label} | {fmt_params(r.params)} | {r.method} | " + " | ".join(cells) + " |")
    return lines


def significance_table(tables: Path) -> list[str]:
    """The significance table's Markdown lines (one row per method, one column per task with runs)."""
    sig = pd.read_csv(tables / "significance.csv")
    cols = [c for c in TASK_COLUMNS if c in set(sig.column)]
    lines = _header(["Method"] + [("MRPC F1" if c == "MRPC" else c) for c in cols])
    for method in dict.fromkeys(sig.method):
        row = []
        for c in cols:
            s = sig[(sig.method == method) & (sig.column == c)]
            if s.empty:
                row.append("–")
                continue
            s = s.iloc[0]
            row.append(
                f"{fmt_num(s['diff'], signed=True)} [{fmt_num(s.ci_low, signed=True)}, "
                f"{fmt_num(s.ci_high, signed=True)}], "
                f"{_p(s.p_bootstrap)} ({s.p_signflip:.3f})"
            )
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return lines


if __name__ == "__main__":
    study = Path(sys.argv[1] if len(sys.argv) > 1 else "results/glue-minilm")
    print("\n".join(main_table(study / "tables") + [""] + significance_table(study / "tables")))
