"""The CKD ablations of a study read out for the ablations notebook: each CKD variant's family (relation
terms, WR triple window, loss weights, KD temperature, other) from its record, its Δ vs the full `ckd`
objective on the same student with the pooled seed std, error-bar figures per family, and a written
reading generated from the numbers (`ablation_reading`). Built on `ckd.aggregate`'s cells and method
differences; `ckd.explore` re-exports everything here."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import pandas as pd
from matplotlib.figure import Figure

from ckd.plots import agg_figure
from ckd.records import row_method_base
from ckd.tables.ablation import changes_text, flatten_options, is_ckd_variant, method_changes
from ckd.tables.common import cell, fmt_num, method_sort_key

if TYPE_CHECKING:
    from ckd.explore import Study

FAMILIES = {
    "terms": "Relation terms (which WR/LTR terms matter)",
    "window": "Window size of the WR triple term",
    "weights": "Loss weights (alpha and the relation-term weights)",
    "temperature": "KD temperature",
    "other": "Other variants",
}
# What each family is about, and where a study that lacks it gets it.
FAMILY_HINTS = {
    "terms": "variants that drop relation terms (ckd-wr, ckd-ltr, ckd-pair, ckd-triple, ckd-{wr,ltr}-{pair,triple})",
    "window": "variants that change `window` (ckd-window3/5/11/41 and ckd-full-triple in config/ablation.yaml)",
    "weights": "variants that change alpha or a relation-term weight (ckd-alpha*, ckd-wr_pair*, ... in config/ablation.yaml)",
    "temperature": "variants that change `temperature` (ckd-T1/T2/T8 in config/ablation.yaml)",
}
WEIGHT_SETTINGS = ("alpha", "wr_pair", "wr_triple", "ltr_pair", "ltr_triple", "beta")


def _family(changed: dict, dropped: list, added: list) -> tuple[str, str | None, Any]:
    """(family, swept setting or None, its value) of a variant's differences from full ckd."""
    if (dropped or added) and not changed:
        return "terms", None, None
    if len(changed) == 1 and not (dropped or added):
        (key, value), = changed.items()
        leaf = key.split(".")[-1]
        if leaf == "window":
            return "window", key, value
        if leaf in ("temperature", "T"):
            return "temperature", key, value
        if leaf in WEIGHT_SETTINGS or "weight" in key:
            return "weights", key, value
    return "other", None, None


def _setting_of(runs: list[dict], task: str, key: str):
    """The resolved value of a setting (flattened key) in the runs' records for one task; KeyError if unknown."""
    for record in runs:
        if record["task"] != task:
            continue
        settings = flatten_options((record.get("method_resolved") or {}).get("settings") or {})
        overrides = flatten_options(record.get("method_overrides") or {})
        for source in (overrides, settings):
            if key in source:
                return source[key]
    raise KeyError(key)


def ablation_frame(study: Study, score: str = "final") -> pd.DataFrame:
    """One row per (student, column, CKD row): the full `ckd` row (family "full") and each CKD variant
    with its family (terms, window, weights, temperature, other), the setting it sweeps and the value,
    mean/std/n x100, and Δ vs full ckd with the pooled seed std sqrt((std_variant² + std_ckd²) / 2).

    `exceeds` is True when |Δ| is larger than that pooled std, False when not, None when a std is
    unknown (fewer than two seeds on a side)."""
    rows = []
    for student in study.students:
        full = study.groups.get(("student", student, "ckd"), [])
        variants = [k for k in study.groups if k[0] == "student" and k[1] == student
                    and is_ckd_variant(k[2], row_method_base(study.groups[k][0]))]
        if not variants and not full:
            continue
        for column in study.columns:
            fm, fs, fn, _ = cell(full, column, score)
            if fn:
                rows.append({"student": student, "column": column.name, "metric": column.metric, "method": "ckd",
                             "family": "full", "setting": None, "value": None, "changes": "(full objective)",
                             "mean": fm, "std": fs, "n": fn, "ckd_mean": fm, "ckd_std": fs, "ckd_n": fn, "delta": 0.0,
                             "pooled_std": fs, "exceeds": None})
            for key in variants:
                runs = study.groups[key]
                mean, std, n, _ = cell(runs, column, score)
                if not n:
                    continue
                changed, dropped, added = method_changes(runs, full)
                family, setting, value = _family(changed, dropped, added)
                delta = mean - fm if fn else math.nan
                pooled = math.sqrt((std ** 2 + fs ** 2) / 2) if math.isfinite(std) and math.isfinite(fs) else math.nan
                exceeds = None if not (math.isfinite(pooled) and math.isfinite(delta)) else bool(abs(delta) > pooled)
                rows.append({"student": student, "column": column.name, "metric": column.metric, "method": key[2],
                             "family": family, "setting": setting, "value": value,
                             "changes": changes_text(changed, dropped, added), "mean": mean, "std": std, "n": n,
                             "ckd_mean": fm if fn else math.nan, "ckd_std": fs if fn else math.nan, "ckd_n": fn,
                             "delta": delta, "pooled_std": pooled, "exceeds": exceeds})
    columns = ["student", "column", "metric", "method", "family", "setting", "value", "changes", "mean", "std", "n",
               "ckd_mean", "ckd_std", "ckd_n", "delta", "pooled_std", "exceeds"]
    frame = pd.DataFrame(rows, columns=columns)
    # settings keep their own type (window None = all tokens, not NaN); exceeds stays True/False/None
    for name in ("setting", "value", "exceeds"):
        frame[name] = pd.Series([row[name] for row in rows], dtype=object)
    return frame


def ablation_coverage(frame: pd.DataFrame) -> dict[str, list[str]]:
    """family -> the variant methods the study has for it (empty list: the study lacks that sweep)."""
    present = frame[frame["family"] != "full"] if len(frame) else frame
    return {family: sorted(set(present[present["family"] == family]["method"]), key=method_sort_key)
            for family in FAMILIES}


def missing_ablations(frame: pd.DataFrame) -> list[str]:
    """Sentences naming each ablation this study lacks (and how to get it)."""
    if frame.empty:
        return ["This study has no CKD rows at all (neither `ckd` nor a CKD variant): every ablation is missing. "
                "Run `snakemake --configfile config/ablation.yaml` for the full set."]
    notes = []
    if not (frame["family"] == "full").any():
        notes.append("No full `ckd` row: the variants cannot be compared with the full objective (no Δ).")
    coverage = ablation_coverage(frame)
    for family, methods in coverage.items():
        if family in FAMILY_HINTS and not methods:
            notes.append(f"Missing: **{FAMILIES[family]}** — this study has no {FAMILY_HINTS[family]}.")
    return notes


def _fmt(value: float) -> str:
    return fmt_num(value)


def _value_text(setting: str | None, value) -> str:
    if setting and setting.endswith("window") and value is None:
        return "all"
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else json.dumps(value)


def _variant_label(row) -> str:
    if row["family"] in ("window", "weights", "temperature") and row["setting"]:
        return f"`{row['method']}` ({row['setting']}={_value_text(row['setting'], row['value'])})"
    return f"`{row['method']}` ({row['changes']})"


def _versus(row) -> str:
    delta = row["delta"]
    if not math.isfinite(delta):
        return "no full ckd score to compare with"
    if row["exceeds"] is None:
        spread = "the seed spread is unknown (one seed)"
    elif row["exceeds"]:
        spread = f"larger than the seed std ({_fmt(row['pooled_std'])})"
    else:
        spread = f"within the seed std ({_fmt(row['pooled_std'])})"
    return f"{fmt_num(delta, signed=True)} vs full ckd, {spread}"


def _findings(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(family, where: "<column>[, <student>]", sentence) per (student, family, column)."""
    if frame.empty:
        return []
    found = []
    multi_student = frame["student"].nunique() > 1
    for student in dict.fromkeys(frame["student"]):
        part = frame[frame["student"] == student]
        for family in FAMILIES:
            fam = part[part["family"] == family]
            for column in dict.fromkeys(fam["column"]):
                col = fam[fam["column"] == column].sort_values("mean", ascending=False)
                full = part[(part["family"] == "full") & (part["column"] == column)]
                where = column + (f", {student}" if multi_student else "")
                ckd_text = (f"full ckd {_fmt(full.iloc[0]['mean'])} ± {_fmt(full.iloc[0]['std'])}"
                            if len(full) else "no full ckd row")
                best, worst = col.iloc[0], col.iloc[-1]
                if len(col) == 1:
                    text = (f"one variant ({ckd_text}): {_variant_label(best)} at {_fmt(best['mean'])}, "
                            f"{_versus(best)}.")
                else:
                    text = (f"{len(col)} variants ({ckd_text}): best {_variant_label(best)} at "
                            f"{_fmt(best['mean'])} ({_versus(best)}); worst {_variant_label(worst)} at "
                            f"{_fmt(worst['mean'])} ({_versus(worst)}).")
                deltas = col["delta"].dropna()
                if len(deltas) and len(full):
                    if (deltas < 0).all():
                        text += " Full ckd is ahead of every variant here."
                    elif (deltas > 0).all():
                        text += " Every variant scores above full ckd here."
                if family in ("window", "weights", "temperature"):
                    text += _sweep_sentence(col, full)
                clear = col[col["exceeds"] == True]  # noqa: E712 (None means unknown)
                if len(clear) == 0 and col["exceeds"].notna().any():
                    text += (" No difference exceeds the seed std: with these seeds the "
                             + ("variants are" if len(col) > 1 else "variant is") + " not told apart from full ckd.")
                found.append((family, where, text))
    return found


def ablation_findings(frame: pd.DataFrame) -> list[str]:
    """A short reading of the ablation numbers, one Markdown sentence per (student, family, column),
    generated from `ablation_frame`: best and worst variant, by how much vs full ckd, whether the
    difference exceeds the seed std, and for sweeps the score at each value."""
    return [f"**{FAMILIES[family]}, {where}**: {text}" for family, where, text in _findings(frame)]


def _sweep_sentence(col: pd.DataFrame, full: pd.DataFrame) -> str:
    """" Scores by value: alpha 0.1 → 57.0, 0.9 → 61.0." for each swept setting of a family in one column."""
    pieces = []
    for setting in dict.fromkeys(s for s in col["setting"] if s):
        rows = col[col["setting"] == setting]
        points = sorted(((r["value"], r["mean"]) for _, r in rows.iterrows()), key=lambda p: _sort_value(p[0]))
        pieces.append(f"{setting} " + ", ".join(f"{_value_text(setting, v)} → {_fmt(m)}" for v, m in points))
    if not pieces:
        return ""
    return " By value: " + "; ".join(pieces) + (f" (full ckd {_fmt(full.iloc[0]['mean'])})." if len(full) else ".")


def ablation_reading(frame: pd.DataFrame) -> str:
    """The written reading of the ablations as Markdown: per family a heading and one bullet per
    column (`ablation_findings`), what the study lacks (`missing_ablations`) and, per variant run on
    several columns, its average effect (`ablation_overview`). Generated from the numbers only."""
    lines = []
    findings = _findings(frame)
    for family, title in FAMILIES.items():
        mine = [f"- **{where}**: {text}" for fam, where, text in findings if fam == family]
        if mine:
            lines += [f"#### {title}", ""] + mine + [""]
    overview = ablation_overview(frame)
    if overview:
        lines += ["#### Across columns", ""] + [f"- {o}" for o in overview] + [""]
    missing = missing_ablations(frame)
    if missing:
        lines += ["#### Not in this study", ""] + [f"- {m.removeprefix('Missing: ')}" for m in missing] + [""]
    if not lines:
        lines = ["No CKD ablation results to read."]
    return "\n".join(lines).rstrip() + "\n"


def _summary_by_variant(frame: pd.DataFrame) -> pd.DataFrame:
    variants = frame[frame["family"] != "full"]
    if variants.empty:
        return pd.DataFrame(columns=["student", "method", "family", "columns", "mean_delta", "worse", "better", "clear"])
    rows = []
    for (student, method), part in variants.groupby(["student", "method"], sort=False):
        deltas = part["delta"].dropna()
        rows.append({"student": student, "method": method, "family": part["family"].iloc[0], "columns": len(part),
                     "mean_delta": deltas.mean() if len(deltas) else math.nan,
                     "worse": int((deltas < 0).sum()), "better": int((deltas > 0).sum()),
                     "clear": int((part["exceeds"] == True).sum())})  # noqa: E712
    return pd.DataFrame(rows)


def ablation_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per variant: mean Δ vs full ckd over the columns, in how many columns it is worse/better, and in
    how many the difference exceeds the seed std."""
    return _summary_by_variant(frame)


def ablation_overview(frame: pd.DataFrame) -> list[str]:
    """One sentence per variant that was run on more than one column: its average Δ and how consistent it is."""
    lines = []
    for _, row in _summary_by_variant(frame).iterrows():
        if row["columns"] < 2 or not math.isfinite(row["mean_delta"]):
            continue
        lines.append(f"`{row['method']}` ({row['family']}): mean Δ {fmt_num(row['mean_delta'], signed=True)} vs full ckd "
                     f"over {row['columns']} columns; worse in {row['worse']}, better in {row['better']}, "
                     f"difference beyond the seed std in {row['clear']}.")
    return lines


def _sort_value(value) -> float:
    if value is None:
        return math.inf  # window null (all tokens) after every finite window
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _figure_points(frame: pd.DataFrame, family: str, student: str, column: str, study: Study | None) -> list[dict]:
    """The points of one panel of `ablation_figure`: full ckd first (for a sweep: at its own value of
    each swept setting), then the variants, sweeps ordered by setting and value."""
    part = frame[(frame["family"] == family) & (frame["student"] == student) & (frame["column"] == column)]
    full = frame[(frame["family"] == "full") & (frame["student"] == student) & (frame["column"] == column)]
    points = [{"label": r["method"], "setting": r["setting"], "value": r["value"], "mean": r["mean"], "std": r["std"],
               "exceeds": r["exceeds"], "full": False} for _, r in part.iterrows()]
    if family in ("window", "weights", "temperature"):
        for setting in dict.fromkeys(p["setting"] for p in points):
            own = None
            if study is not None and len(full):
                task = next((c.task for c in study.columns if c.name == column), None)
                try:
                    own = _setting_of(study.groups.get(("student", student, "ckd"), []), task, setting)
                except KeyError:
                    own = None
            if len(full) and (own is not None or setting.endswith("window")):
                points.append({"label": f"ckd ({setting.split('.')[-1]}={_value_text(setting, own)})",
                               "setting": setting, "value": own, "mean": full.iloc[0]["mean"],
                               "std": full.iloc[0]["std"], "exceeds": None, "full": True})
        order = list(dict.fromkeys(p["setting"] for p in points))
        points.sort(key=lambda p: (order.index(p["setting"]), _sort_value(p["value"])))
    elif len(full):
        points.insert(0, {"label": "ckd (full)", "setting": None, "value": None, "mean": full.iloc[0]["mean"],
                          "std": full.iloc[0]["std"], "exceeds": None, "full": True})
    return points


def ablation_figure(frame: pd.DataFrame, family: str, study: Study | None = None) -> Figure | None:
    """Error-bar plot of one ablation family: per column, full ckd (black) and each variant's mean ±
    std over seeds (red where |Δ| vs full ckd exceeds the seed std), with full ckd's mean ± std as a
    grey band. Sweeps are ordered by setting and value, full ckd placed at its own value (needs
    `study`). None when the study has no variant of that family."""
    fam = frame[frame["family"] == family]
    if fam.empty:
        return None
    panels = list(dict.fromkeys(zip(fam["student"], fam["column"])))
    cols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / cols)
    widest = max(len(_figure_points(frame, family, s, c, study)) for s, c in panels)
    fig = agg_figure(Figure(figsize=(max(3.6, 0.45 * widest + 1.6) * cols, 3.6 * nrows), layout="constrained"))
    several_students = len({s for s, _ in panels}) > 1
    for i, (student, column) in enumerate(panels):
        ax = fig.add_subplot(nrows, cols, i + 1)
        points = _figure_points(frame, family, student, column, study)
        for x, p in enumerate(points):
            color = "black" if p["full"] else ("tab:red" if p["exceeds"] else "tab:blue")
            ax.errorbar([x], [p["mean"]], yerr=[p["std"] if math.isfinite(p["std"]) else 0], fmt="s" if p["full"] else "o",
                        capsize=3, color=color)
        for x in range(1, len(points)):
            if points[x]["setting"] != points[x - 1]["setting"]:
                ax.axvline(x - 0.5, color="lightgrey", linewidth=0.8)
        ax.set_xticks(range(len(points)), [p["label"] for p in points], rotation=50, ha="right", fontsize=7)
        ax.set_xlim(-0.6, len(points) - 0.4)
        full = frame[(frame["family"] == "full") & (frame["student"] == student) & (frame["column"] == column)]
        if len(full):
            m, s = full.iloc[0]["mean"], full.iloc[0]["std"]
            ax.axhline(m, color="grey", linestyle="--", linewidth=1, label="full ckd ± std")
            if math.isfinite(s):
                ax.axhspan(m - s, m + s, color="grey", alpha=0.15)
            if i == 0:
                ax.legend(fontsize=7)
        metric = fam[(fam["student"] == student) & (fam["column"] == column)]["metric"].iloc[0]
        ax.set_title(column + (f" · {student}" if several_students else ""), fontsize=9)
        ax.set_ylabel(f"{metric} x100")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{FAMILIES[family]}: mean ± std over seeds (red: |Δ| vs full ckd > seed std)", fontsize=10)
    return fig




__all__ = ["FAMILIES", "FAMILY_HINTS", "WEIGHT_SETTINGS", "ablation_coverage", "ablation_figure", "ablation_findings",
           "ablation_frame", "ablation_overview", "ablation_reading", "ablation_summary", "missing_ablations"]
