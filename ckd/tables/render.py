"""A `Table` as Markdown (`DataFrame.to_markdown`, GitHub pipe tables), LaTeX (`Styler.to_latex`,
booktabs rules) and CSV (its number frame), written atomically."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ckd.atomic import atomic_write_text
from ckd.tables.common import Table

_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
# what pdflatex cannot typeset from UTF-8 without extra packages
_LATEX_SYMBOLS = {"±": r"$\pm$", "–": "--", "−": "$-$", "Δ": r"$\Delta$", "≤": r"$\leq$", "≥": r"$\geq$",
                  "×": r"$\times$", "·": r"$\cdot$", "†": r"$^\dagger$", "<": "$<$", ">": "$>$"}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))
    return "".join(_LATEX_SYMBOLS.get(ch, ch) for ch in out)


def _cells(table: Table) -> pd.DataFrame:
    # positional column labels: two columns may share a header text
    return pd.DataFrame(table.rows, columns=range(len(table.header)), dtype=object)


def to_markdown(table: Table) -> str:
    if table.markdown is not None:
        return table.markdown
    lines = [f"# {table.title}", ""] + table.caption + [""]
    if table.rows:
        cells = _cells(table).map(lambda text: str(text).replace("|", "\\|"))
        header = [str(h).replace("|", "\\|") for h in table.header]
        lines += [cells.to_markdown(index=False, headers=header, tablefmt="github", disable_numparse=True), ""]
    lines += [f"{note}  " if i < len(table.notes) - 1 else note for i, note in enumerate(table.notes)]
    return "\n".join(lines).rstrip() + "\n"


def to_latex(table: Table) -> str:
    caption = latex_escape(" ".join([table.title + "."] + table.caption))
    lines = ["% written by `ckd aggregate`; needs \\usepackage{booktabs}"]
    if table.rows:
        cells = _cells(table)
        cells.columns = [latex_escape(h) for h in table.header]
        align = "".join("l" if i < table.label_columns else "r" for i in range(len(table.header)))
        styler = cells.style.hide(axis="index").format(latex_escape)
        body = styler.to_latex(column_format=align, hrules=True, caption=caption, label=f"tab:{table.stem}",
                               position="t", position_float="centering")
        lines += body.rstrip("\n").splitlines()
        end = lines.pop()  # \end{table}
    else:
        lines += ["\\begin{table}[t]", "\\centering", f"\\caption{{{caption}}}", f"\\label{{tab:{table.stem}}}"]
        end = "\\end{table}"
    if table.notes:
        lines.append("\\par\\footnotesize " + " \\\\ ".join(latex_escape(n) for n in table.notes))
    return "\n".join(lines + [end]) + "\n"


def read_table(out_dir: Path, stem: str) -> Table:
    """A table `write_table` wrote, back from its .md (title, header, rows; the text itself is kept as
    `markdown`) and its .csv (`frame`). Raises OSError when a file is missing."""
    text = (Path(out_dir) / f"{stem}.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    title = lines[0][2:] if lines and lines[0].startswith("# ") else stem
    cells = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
             for line in lines if line.startswith("|") and not line.startswith("|---")]
    try:
        frame = pd.read_csv(Path(out_dir) / f"{stem}.csv")
    except pd.errors.EmptyDataError:  # a table without rows
        frame = pd.DataFrame()
    return Table(stem, title, [], cells[0] if cells else [], cells[1:], frame, markdown=text)


def write_table(table: Table, out_dir: Path, formats: tuple[str, ...] = ("csv", "md", "tex")) -> list[Path]:
    render = {"csv": lambda t: t.frame.to_csv(index=False, float_format="%.10g", lineterminator="\n"),
              "md": to_markdown, "tex": to_latex}
    written = []
    for fmt in formats:
        path = Path(out_dir) / f"{table.stem}.{fmt}"
        atomic_write_text(path, render[fmt](table))
        written.append(path)
    return written
