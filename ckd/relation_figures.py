"""The relation explorer's heatmaps: what the four CKD relation terms compare on one input, teacher
against student, drawn from a `ckd.relation_explorer.RelationView` (re-exported there and by
`ckd.explore`). Each function returns a matplotlib Figure on its own Agg canvas."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from ckd.plots import agg_figure

if TYPE_CHECKING:
    from ckd.relation_explorer import RelationView

__all__ = ["ltr_figure", "wr_pair_figure", "wr_triple_figure"]


def _off_diagonal(matrix: np.ndarray) -> np.ndarray:
    """The matrix with its diagonal (j = i, excluded from every pair softmax) set to NaN (drawn grey)."""
    out = np.array(matrix, dtype=float)
    np.fill_diagonal(out, np.nan)
    return out


def _range(*matrices: np.ndarray) -> tuple[float, float]:
    values = np.concatenate([m[np.isfinite(m)].ravel() for m in matrices])
    if not values.size:
        return 0.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    return (lo, hi) if hi > lo else (lo - 1e-9, hi + 1e-9)


def _heatmap(ax, matrix: np.ndarray, labels: Sequence[str] | None, title: str, vmax: float, cmap: str = "viridis",
             vmin: float = 0.0):
    from matplotlib import colormaps

    palette = colormaps[cmap].with_extremes(bad="lightgrey")
    image = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap=palette)
    if labels is not None:
        ticks = range(len(labels))
        size = 6 if len(labels) <= 20 else 5
        ax.set_xticks(ticks, labels, rotation=90, fontsize=size)
        ax.set_yticks(ticks, labels, fontsize=size)
    ax.set_title(title, fontsize=8)
    return image


def _pair_columns(fig: Figure, panels, cmap: str) -> None:
    """One column per panel (t_mat, t_labels, t_title, s_mat, s_labels, s_title): the teacher's pair
    distribution on top, the student's below, diagonals grey, both on the column's colour scale."""
    for c, (t_mat, t_labels, t_title, s_mat, s_labels, s_title) in enumerate(panels):
        t_mat, s_mat = _off_diagonal(t_mat), _off_diagonal(s_mat)
        vmin, vmax = _range(t_mat, s_mat)
        top = fig.add_subplot(2, len(panels), c + 1)
        _heatmap(top, t_mat, t_labels, t_title, vmax, cmap=cmap, vmin=vmin)
        bottom = fig.add_subplot(2, len(panels), len(panels) + c + 1)
        image = _heatmap(bottom, s_mat, s_labels, s_title, vmax, cmap=cmap, vmin=vmin)
        fig.colorbar(image, ax=[top, bottom], shrink=0.6)


def wr_pair_figure(view: RelationView) -> Figure:
    """WR pair distributions per mapped layer: teacher on top, student below, one column per layer
    pair, each column on one colour scale; the title gives that layer's WR pair loss."""
    K = len(view.pairs)
    n = len(view.tokens)
    size = max(2.6, min(5.0, 0.16 * n + 1.2))
    fig = agg_figure(Figure(figsize=(size * K + 1.2, 2 * size + 0.8), layout="constrained"))
    _pair_columns(fig, [(view.wr_teacher[k], view.tokens, f"teacher h[{t}]", view.wr_student[k], view.tokens,
                         f"student h[{s}] · WR pair KL {view.per_layer.iloc[k]['wr_pair']:.3g}")
                        for k, (t, s) in enumerate(view.pairs)], "viridis")
    fig.suptitle("Word Relation (pair): row i = softmax over j≠i of cos(h_i, h_j)", fontsize=10)
    return fig


def ltr_figure(view: RelationView, positions: Sequence[int] | None = None, count: int = 3) -> Figure:
    """LTR pair distributions (K x K over the mapped layers), teacher on top and student below: the
    average over tokens, then the tokens given by `positions` (default: the `count` tokens with the
    largest LTR pair loss)."""
    if positions is None:
        positions = list(view.per_token.sort_values("ltr_pair", ascending=False)["position"][:count])
    t_names = [f"T{t}" for t, _ in view.pairs]
    s_names = [f"S{s}" for _, s in view.pairs]
    panels = [(view.ltr_teacher.mean(axis=0), t_names, "teacher · mean over tokens",
               view.ltr_student.mean(axis=0), s_names, "student")]
    for p in map(int, positions):
        loss = view.per_token.iloc[p]["ltr_pair"]
        panels.append((view.ltr_teacher[p], t_names, f"teacher · '{view.tokens[p]}' (pos {p})",
                       view.ltr_student[p], s_names, f"student · LTR pair KL {loss:.3g}"))
    fig = agg_figure(Figure(figsize=(2.9 * len(panels) + 0.8, 5.8), layout="constrained"))
    _pair_columns(fig, panels, "magma")
    fig.suptitle(f"Layer Transforming Relation (pair) over mapped layers {', '.join(view.layer_names())}: "
                 "row a = softmax over b≠a of cos(e_a, e_b)", fontsize=10)
    return fig


def wr_triple_figure(view: RelationView, position: int | None = None, layer: int = -1) -> Figure:
    """WR triple angles psi(i; j, k) at one centre token i in one mapped layer (teacher, student, and
    student − teacher): what the triple term matches, restricted to the window the run used."""
    K = len(view.pairs)
    k = layer % K
    n = len(view.tokens)
    if position is None:
        position = n // 2
    lo, hi = 0, n
    if view.window is not None:
        half = (view.window - 1) // 2
        lo, hi = max(0, position - half), min(n, position + half + 1)
    t_mat = view.angle_teacher[k, position, lo:hi, lo:hi]
    s_mat = view.angle_student[k, position, lo:hi, lo:hi]
    labels = view.tokens[lo:hi]
    size = max(3.0, min(5.0, 0.18 * (hi - lo) + 1.4))
    fig = agg_figure(Figure(figsize=(3 * size + 1.5, size + 1.0), layout="constrained"))
    t, s = view.pairs[k]
    diff = s_mat - t_mat
    spread = max(float(np.abs(diff).max()), 1e-6)
    for c, (title, matrix, cmap, vmin) in enumerate((
            (f"teacher h[{t}]", t_mat, "coolwarm", -1.0), (f"student h[{s}]", s_mat, "coolwarm", -1.0),
            ("student − teacher", diff, "PuOr", -spread))):
        ax = fig.add_subplot(1, 3, c + 1)
        image = _heatmap(ax, matrix, labels, title, -vmin, cmap=cmap, vmin=vmin)
        fig.colorbar(image, ax=ax, shrink=0.7)
    window = "all tokens" if view.window is None else f"window {view.window}"
    fig.suptitle(f"Word Relation (triple): angles at centre '{view.tokens[position]}' (pos {position}), "
                 f"layers T{t}↔S{s}, {window}", fontsize=10)
    return fig
