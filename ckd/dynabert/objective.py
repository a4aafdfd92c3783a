"""A DynaBERT stage's loss: one ckd Objective per kept depth, summed over every (width, depth) sub-network.

Each sub-network's terms are reported under ``<tag>/<term>`` (e.g. ``w0.5-d1/kd_released``), so the
training loop's exact micro-batch shares (ckd.train, `Objective.counts`) hold per sub-network too.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ckd.dynabert.subnet import SubNet, depth_layer_map, kept_layers
from ckd.errors import ConfigError
from ckd.layer_maps import LayerMap
from ckd.losses.tinybert import TinyBertProjections
from ckd.methods import ResolvedMethod
from ckd.objectives import Batch, Objective, Outputs

KEPT_MAP = "dynabert-kept"


def _shape(layers: int, config: Any) -> SimpleNamespace:
    return SimpleNamespace(num_hidden_layers=layers, hidden_size=config.hidden_size, num_attention_heads=config.num_attention_heads)


def depth_objective(method: ResolvedMethod, config: Any, depth: float, *, regression: bool) -> Objective:
    """The method's Objective between a depth-`depth` sub-network (D kept layers) and a full-depth teacher of
    the same architecture `config`. Layer map `dynabert-kept`: the authors' kept-layer pairs
    (`ckd.dynabert.subnet.depth_layer_map`); any ckd map (uniform+emb) is built for L -> D as usual."""
    full = int(config.num_hidden_layers)
    depth_layers = len(kept_layers(full, depth))
    kept = method.layer_map == KEPT_MAP
    built = replace(method, layer_map="uniform+emb") if kept else method
    objective = Objective(built, regression=regression, teacher_config=_shape(full, config), student_config=_shape(depth_layers, config))
    if objective.needs_capture:
        raise ConfigError(f"method {method.name!r} reads attention internals, which DynaBERT sub-networks do not capture; use a logit, hidden or relation objective")
    if kept and objective.map is not None:
        objective.map = LayerMap(name=KEPT_MAP, pairs=depth_layer_map(full, depth), teacher_layers=full, student_layers=depth_layers)
        if objective.hidden_projection is not None:  # one slot per mapped hidden state of the new map (identity: equal widths)
            width = int(config.hidden_size)
            objective.hidden_projection = TinyBertProjections(width, width, len(objective.map.pairs) - 1, sharing="released")
    return objective


class StageObjective(nn.Module):
    """Every sub-network's objective; `term_names` / `counts` are what ckd.train.Trainer reads."""

    def __init__(self, method: ResolvedMethod, config: Any, subnets: list[SubNet], *, regression: bool):
        super().__init__()
        self.subnets = subnets
        depths = sorted({s.depth for s in subnets}, reverse=True)
        self.by_depth = nn.ModuleDict({f"{d:g}".replace(".", "_"): depth_objective(method, config, d, regression=regression) for d in depths})
        first = next(iter(self.by_depth.values()))
        self.needs_hidden = first.needs_hidden

    def objective(self, subnet: SubNet) -> Objective:
        return self.by_depth[f"{subnet.depth:g}".replace(".", "_")]

    @property
    def term_names(self) -> list[str]:
        return [f"{s.tag}/{name}" for s in self.subnets for name in self.objective(s).term_names]

    def counts(self, batch: Batch) -> dict[str, float]:
        return {f"{s.tag}/{name}": value for s in self.subnets for name, value in self.objective(s).counts(batch).items()}

    def layer_maps(self) -> dict[str, Any]:
        return {s.tag: (self.objective(s).map.to_record() if self.objective(s).map else None) for s in self.subnets}

    def subnet_loss(self, subnet: SubNet, batch: Batch, student: Outputs, teacher: Outputs,
                    shares: dict[str, float] | None) -> tuple[torch.Tensor, dict[str, float]]:
        objective = self.objective(subnet)
        mine = None if shares is None else {name: shares[f"{subnet.tag}/{name}"] for name in objective.term_names}
        loss, values = objective(batch, student, teacher, mine)
        return loss, {f"{subnet.tag}/{name}": value for name, value in values.items()}
