"""Forward hooks that capture each layer's self-attention query/key/value projections.

The hooks sit on the projection ``nn.Linear`` modules, so they work with any attention
implementation (eager, sdpa, flash) and never copy the model's code::

    with AttentionCapture(model) as cap:
        out = model(input_ids, attention_mask=mask)
    scores = cap.scores(-1)            # (B, heads, n, n) = Q K^T / sqrt(d_head), no mask applied

Hooks are removed when the block exits (also on an exception). The tensors of the most recent
forward pass stay readable afterwards and keep their autograd graph.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ckd.errors import ModelError

# Where the encoder blocks live under ``model.base_model``, and the projection names inside a block.
_LAYER_LISTS = ("encoder.layer", "transformer.layer")
_PROJECTIONS = (
    ("attention.self", ("query", "key", "value")),  # BERT, RoBERTa, ELECTRA, XLM-R
    ("attention", ("q_lin", "k_lin", "v_lin")),  # DistilBERT
)
_KINDS = ("query", "key", "value")


def _get(module: nn.Module, dotted: str) -> nn.Module | None:
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _find_projections(model: nn.Module) -> tuple[list[tuple[nn.Linear, nn.Linear, nn.Linear]], int]:
    """Return per-layer (query, key, value) Linear modules and the number of heads."""
    base = getattr(model, "base_model", model)
    for list_path in _LAYER_LISTS:
        layers = _get(base, list_path)
        if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
            continue
        for attn_path, names in _PROJECTIONS:
            attn = [_get(layer, attn_path) for layer in layers]
            mods = [tuple(_get(a, n) if a is not None else None for n in names) for a in attn]
            if all(isinstance(m, nn.Linear) for triple in mods for m in triple):
                heads = getattr(attn[0], "num_attention_heads", None) or getattr(attn[0], "n_heads", None)
                if heads is None:
                    config = getattr(model, "config", None)
                    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", None)
                if not heads:
                    break
                return mods, int(heads)
    raise ModelError(
        f"cannot find per-layer self-attention query/key/value projections in {type(model).__name__}; "
        f"attention capture supports BERT-family encoders (encoder.layer[i].attention.self.query/key/value "
        f"or DistilBERT's transformer.layer[i].attention.q_lin/k_lin/v_lin)"
    )


class AttentionCapture:
    """Context manager capturing Q, K, V of every (or the selected) encoder layer.

    ``layers`` restricts the capture to some 0-based layer indices (negative indices allowed);
    the accessor methods take the same indices.
    """

    def __init__(self, model: nn.Module, layers: Iterable[int] | None = None):
        self.model_name = type(model).__name__
        self._modules, self.num_heads = _find_projections(model)
        self.num_layers = len(self._modules)
        wanted = range(self.num_layers) if layers is None else layers
        self.layers = tuple(sorted({self._index(i) for i in wanted}))
        self._store: dict[tuple[int, str], torch.Tensor] = {}
        self._handles: list = []

    def _index(self, layer: int) -> int:
        if not -self.num_layers <= layer < self.num_layers:
            raise ModelError(
                f"attention layer {layer} is out of range for {self.model_name} with {self.num_layers} layers; "
                f"use an index in [{-self.num_layers}, {self.num_layers - 1}]"
            )
        return layer % self.num_layers

    def __enter__(self) -> AttentionCapture:
        self._store.clear()
        try:
            for i in self.layers:
                for kind, module in zip(_KINDS, self._modules[i]):
                    self._handles.append(module.register_forward_hook(self._hook(i, kind)))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self._remove()
        return False

    def _remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def _hook(self, layer: int, kind: str):
        def hook(module, inputs, output):
            self._store[(layer, kind)] = output  # a later forward pass overwrites: latest wins

        return hook

    def _captured(self, layer: int, kind: str) -> torch.Tensor:
        index = self._index(layer)
        if index not in self.layers:
            raise ModelError(
                f"attention layer {layer} of {self.model_name} was not captured; add it to AttentionCapture(layers=...)"
            )
        flat = self._store.get((index, kind))
        if flat is None:
            raise ModelError(
                f"no {kind} captured for layer {layer} of {self.model_name}; run the model inside the "
                f"'with AttentionCapture(model)' block first"
            )
        batch, length, width = flat.shape
        return flat.view(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)

    def queries(self, layer: int) -> torch.Tensor:
        """(B, heads, n, d_head) query projections of ``layer``."""
        return self._captured(layer, "query")

    def keys(self, layer: int) -> torch.Tensor:
        """(B, heads, n, d_head) key projections of ``layer``."""
        return self._captured(layer, "key")

    def values(self, layer: int) -> torch.Tensor:
        """(B, heads, n, d_head) value projections of ``layer``."""
        return self._captured(layer, "value")

    def scores(self, layer: int, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pre-softmax attention scores Q K^T / sqrt(d_head), shape (B, heads, n, n).

        Without ``attention_mask`` (the default) no mask is applied: the losses mask padding
        themselves. With a (B, n) mask, padded *key* columns are filled with the dtype's most
        negative finite value, so a softmax over the last dimension equals the model's attention
        probabilities (padded query rows are left as they are, as in the model).
        """
        q, k = self.queries(layer), self.keys(layer)
        scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        if attention_mask is not None:
            padded_keys = ~attention_mask.bool()[:, None, None, :]
            scores = scores.masked_fill(padded_keys, torch.finfo(scores.dtype).min)
        return scores
