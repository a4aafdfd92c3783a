"""The tables of a study, each a function of the tidy runs frame (`ckd.frame`): which runs a table
shows is decided once, by the frame's `shown` flag (`ckd.records.study_records` sets it), and every
number in a cell is a group statistic of the frame's rows.

Modules: `common` (row groups, columns, cells, number formats), `render` (Markdown via
`DataFrame.to_markdown`, LaTeX via `Styler.to_latex`, CSV), `main` (main and paper-vs-ours tables),
`ablation`, `significance`, `selection` (grid-search settings), `missing` (missing and failed runs).
`ckd.aggregate.aggregate_study` writes them all.
"""
