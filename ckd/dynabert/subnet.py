"""Which part of a BERT one DynaBERT sub-network keeps, and how many parameters it has.

Facts from the DynaBERT authors' code (huawei-noah/Pretrained-Language-Model, DynaBERT/
transformers/modeling_bert.py, Hou et al. NeurIPS 2020), re-stated here:

- width m_w keeps the first round(H * m_w) attention heads of every layer (after rewiring: the most
  important ones) and the first int(round(H * m_w) / H * I) FFN neurons (at least 1 of each);
  the hidden size, embeddings, pooler and classifier do not change (``round_to_nearest``);
- depth m_d keeps D = round(m_d * L) layers, the i-th kept layer being floor(i / m_d), i = 0..D-1
  (``BertEncoder.forward``): 12 layers at 0.5 keep 0,2,4,6,8,10; at 0.75 keep 0,1,2,4,5,6,8,9,10.
  Python's round (half to even) as in the released code: 6 layers at 0.75 keep round(4.5) = 4 layers.
  Computed on the exact decimal value of m_d (``Fraction(str(m_d))``), so 0.6 is 3/5, not the float.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ckd.errors import ConfigError


def _fraction(value: Any, what: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) <= 1:
        raise ConfigError(f"dynabert {what} multiplier must be a number in (0, 1], got {value!r}")
    return Fraction(str(float(value)))


def kept_heads(num_heads: int, width: float) -> int:
    """Heads a width-`width` sub-network keeps per layer: max(1, round(H * m_w))."""
    return max(1, round(num_heads * _fraction(width, "width")))


def kept_ffn(intermediate_size: int, num_heads: int, width: float) -> int:
    """FFN neurons kept per layer: max(1, int(kept_heads / H * I)), the released rounding."""
    return max(1, int(Fraction(kept_heads(num_heads, width), num_heads) * intermediate_size))


def kept_layers(num_layers: int, depth: float) -> tuple[int, ...]:
    """0-based indices of the layers a depth-`depth` sub-network runs, in order (the authors' pattern)."""
    m_d = _fraction(depth, "depth")
    count = max(1, round(num_layers * m_d))
    return tuple(math.floor(i / m_d) for i in range(count))


def depth_layer_map(num_layers: int, depth: float) -> tuple[tuple[int, int], ...]:
    """The authors' hidden-state pairs (teacher index, student index) for a depth sub-network distilled from a
    full-depth teacher: student state k (the input of the k-th kept layer, 0 = embeddings) <- teacher state
    kept[k], and the last student state <- the teacher's last (run_glue.py, `kept_layers_index + [n_layers]`)."""
    kept = kept_layers(num_layers, depth)
    return tuple((t, s) for s, t in enumerate((*kept, num_layers)))


@dataclass(frozen=True)
class SubNet:
    """One (width, depth) sub-network of a BERT with `layers` layers, `heads` heads, `ffn` FFN neurons."""

    width: float
    depth: float

    @property
    def tag(self) -> str:
        """Folder-safe name, e.g. ``w0.25-d0.5``."""
        return f"w{self.width:g}-d{self.depth:g}"

    def shape(self, config: Any) -> dict[str, Any]:
        """heads, head_size, ffn, layers (kept indices) of this sub-network of a BERT `config`."""
        heads = int(config.num_attention_heads)
        return {
            "heads": kept_heads(heads, self.width),
            "head_size": int(config.hidden_size) // heads,
            "ffn": kept_ffn(int(config.intermediate_size), heads, self.width),
            "layers": kept_layers(int(config.num_hidden_layers), self.depth),
        }


def grid(widths, depths) -> list[SubNet]:
    """Every (width, depth), widest and deepest first (the authors' loop order)."""
    return [SubNet(float(w), float(d)) for d in sorted(depths, reverse=True) for w in sorted(widths, reverse=True)]


def param_count(config: Any, subnet: SubNet) -> int:
    """Parameters of the exported sub-network of a BertForSequenceClassification `config`.

    With hidden d, vocabulary V, positions P, token types T, labels C, and per kept layer a = heads * head
    size attention units and f FFN neurons:
      embeddings (V + P + T) d + 2d (LayerNorm)
      each of the D kept layers: Q, K, V 3(d a + a); attention output a d + d; LayerNorm 2d;
                                 FFN d f + f + f d + d; LayerNorm 2d   = 4 d a + 3 a + 2 d f + f + 6 d
      pooler d d + d; classifier d C + C
    """
    shape = subnet.shape(config)
    d = int(config.hidden_size)
    a = shape["heads"] * shape["head_size"]
    f = shape["ffn"]
    embeddings = (int(config.vocab_size) + int(config.max_position_embeddings) + int(config.type_vocab_size)) * d + 2 * d
    layer = 4 * d * a + 3 * a + 2 * d * f + f + 6 * d
    head = d * d + d + d * int(config.num_labels) + int(config.num_labels)
    return embeddings + len(shape["layers"]) * layer + head
