"""Which teacher hidden state each student hidden state is matched with (METHODS.md, "Layer maps").

Indices are hidden-state indices as Hugging Face returns them with ``output_hidden_states=True``:
0 is the embedding output (after its LayerNorm), l is the output of block l (1-based blocks).
Every map is written to the run record with ``LayerMap.to_record()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from math import gcd

from ckd.errors import ConfigError, ModelError

LAYER_MAPS = ("uniform+emb", "pkd-skip", "pkd-last", "tinybert")


@dataclass(frozen=True)
class LayerMap:
    """A named list of (teacher hidden-state index, student hidden-state index) pairs.

    ``attention_pairs`` (``tinybert`` only, empty otherwise) pairs 0-based self-attention layer
    indices (teacher block j*L_T/L_S <- student block j, each minus one).
    """

    name: str
    pairs: tuple[tuple[int, int], ...]
    teacher_layers: int
    student_layers: int
    attention_pairs: tuple[tuple[int, int], ...] = field(default=())

    @property
    def teacher_indices(self) -> tuple[int, ...]:
        return tuple(t for t, _ in self.pairs)

    @property
    def student_indices(self) -> tuple[int, ...]:
        return tuple(s for _, s in self.pairs)

    def to_record(self) -> dict:
        return {"name": self.name, "pairs": [[t, s] for t, s in self.pairs]}

    def select(self, teacher_hidden_states: Sequence, student_hidden_states: Sequence) -> tuple[list, list]:
        """Pick the mapped states out of full ``hidden_states`` tuples (L + 1 entries each)."""
        for who, states, layers in (
            ("teacher", teacher_hidden_states, self.teacher_layers),
            ("student", student_hidden_states, self.student_layers),
        ):
            if len(states) != layers + 1:
                raise ModelError(
                    f"layer map '{self.name}' was built for a {layers}-layer {who} but got {len(states)} hidden "
                    f"states (expected {layers + 1}); rebuild the map with the {who}'s real depth"
                )
        return [teacher_hidden_states[t] for t in self.teacher_indices], [
            student_hidden_states[s] for s in self.student_indices
        ]


def _check_depths(name: str, teacher_layers: int, student_layers: int) -> None:
    for who, value in (("teacher", teacher_layers), ("student", student_layers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f"layer map '{name}': {who} must have at least one layer (got {value!r}); pass the model's "
                f"num_hidden_layers"
            )


def _require_not_deeper(name: str, teacher_layers: int, student_layers: int) -> None:
    if student_layers > teacher_layers:
        raise ConfigError(
            f"layer map '{name}' cannot map a {student_layers}-layer student onto a {teacher_layers}-layer "
            f"teacher (student deeper than teacher); use 'uniform+emb' or a shallower student"
        )


def layer_map(name: str, teacher_layers: int, student_layers: int) -> LayerMap:
    """Build the map ``name`` for an L_T-layer teacher and an L_S-layer student.

    Non-multiples round down: block indices are floor(j * L_T / L_S). ``uniform+emb`` uses
    g = gcd(L_T, L_S) and so also handles a student deeper than the teacher; the other maps refuse it.
    """
    if name not in LAYER_MAPS:
        raise ConfigError(f"unknown layer map '{name}'; choose one of {', '.join(LAYER_MAPS)}")
    _check_depths(name, teacher_layers, student_layers)
    lt, ls = teacher_layers, student_layers
    attention_pairs: tuple[tuple[int, int], ...] = ()

    if name == "uniform+emb":
        g = gcd(lt, ls)
        pairs = tuple((k * lt // g, k * ls // g) for k in range(g + 1))
    elif name == "pkd-skip":
        _require_not_deeper(name, lt, ls)
        pairs = tuple((j * lt // ls, j) for j in range(1, ls))
    elif name == "pkd-last":
        _require_not_deeper(name, lt, ls)
        pairs = tuple((lt - ls + j, j) for j in range(1, ls))
    else:  # tinybert
        _require_not_deeper(name, lt, ls)
        blocks = tuple((j * lt // ls, j) for j in range(1, ls + 1))
        pairs = ((0, 0),) + blocks
        attention_pairs = tuple((t - 1, s - 1) for t, s in blocks)

    if not pairs:
        # pkd-* map only blocks 1..L_S-1: a 1-layer student would silently get a zero patient loss.
        raise ConfigError(
            f"layer map '{name}' maps no layers for a {ls}-layer student; use a student with at least 2 layers "
            f"or the 'uniform+emb' map"
        )
    return LayerMap(name=name, pairs=pairs, teacher_layers=lt, student_layers=ls, attention_pairs=attention_pairs)


def tinybert_attention_pairs(teacher_layers: int, student_layers: int) -> tuple[tuple[int, int], ...]:
    """0-based (teacher, student) self-attention layer pairs of the ``tinybert`` map."""
    return layer_map("tinybert", teacher_layers, student_layers).attention_pairs
