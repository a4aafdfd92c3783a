"""Run any (width, depth) sub-network of a Hugging Face BertForSequenceClassification, and export one.

No modeling code is copied: a sub-network forward is the stock model's forward under
``torch.func.functional_call`` with each layer's Q, K, V, attention-output, FFN-in and FFN-out weights
replaced by *views* (slices) of the full parameters (the first kept heads / neurons, `ckd.dynabert.subnet`),
and with the encoder's layer list temporarily narrowed to the kept layers. Gradients of a sub-network
loss flow into the full parameters through the views, so one set of weights trains every sub-network
(DynaBERT's weight sharing). Hidden states come back as Hugging Face returns them: D + 1 states for D kept
layers (0 = embedding output).
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ckd.dynabert.subnet import SubNet
from ckd.errors import ModelError

FULL = SubNet(1.0, 1.0)


def encoder_of(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", None)
    encoder = getattr(base, "encoder", None)
    if encoder is None or not isinstance(getattr(encoder, "layer", None), nn.ModuleList):
        raise ModelError(f"{type(model).__name__} is not a BERT encoder model (no base_model.encoder.layer): DynaBERT needs a BERT classifier")
    return encoder


def _layer_prefixes(model: nn.Module) -> list[str]:
    names = {id(module): name for name, module in model.named_modules()}
    return [names[id(layer)] + "." for layer in encoder_of(model).layer]


def sliced_parameters(model: nn.Module, subnet: SubNet) -> dict[str, torch.Tensor]:
    """{parameter name: view} for every parameter a width-`subnet.width` sub-network narrows; {} at width 1."""
    shape = subnet.shape(model.config)
    units, ffn = shape["heads"] * shape["head_size"], shape["ffn"]
    if units == model.config.hidden_size and ffn == model.config.intermediate_size:
        return {}
    views: dict[str, torch.Tensor] = {}
    for prefix, layer in zip(_layer_prefixes(model), encoder_of(model).layer):
        attn = layer.attention
        for name in ("query", "key", "value"):
            linear = getattr(attn.self, name)
            views[f"{prefix}attention.self.{name}.weight"] = linear.weight[:units]
            views[f"{prefix}attention.self.{name}.bias"] = linear.bias[:units]
        views[f"{prefix}attention.output.dense.weight"] = attn.output.dense.weight[:, :units]
        views[f"{prefix}intermediate.dense.weight"] = layer.intermediate.dense.weight[:ffn]
        views[f"{prefix}intermediate.dense.bias"] = layer.intermediate.dense.bias[:ffn]
        views[f"{prefix}output.dense.weight"] = layer.output.dense.weight[:, :ffn]
    return views


@contextmanager
def kept_layers_only(model: nn.Module, layers: tuple[int, ...]) -> Iterator[None]:
    """Inside: the encoder runs only `layers` (0-based, in order); restored on exit, whatever happens."""
    encoder = encoder_of(model)
    full = encoder.layer
    if tuple(layers) == tuple(range(len(full))):
        yield
        return
    encoder._modules["layer"] = nn.ModuleList([full[i] for i in layers])
    try:
        yield
    finally:
        encoder._modules["layer"] = full


def forward(model: nn.Module, subnet: SubNet, inputs: dict[str, torch.Tensor], *, hidden: bool = False) -> Any:
    """The Hugging Face output (logits, and hidden_states when `hidden`) of `subnet` of `model` on `inputs`
    (input_ids, attention_mask, token_type_ids, each (B, n))."""
    with kept_layers_only(model, subnet.shape(model.config)["layers"]):
        views = sliced_parameters(model, subnet)  # names of the narrowed layer list
        if not views:
            return model(**inputs, output_hidden_states=hidden)
        return torch.func.functional_call(model, views, args=(), kwargs={**inputs, "output_hidden_states": hidden}, strict=False)


class SubNetworkView(nn.Module):
    """`model` seen as one fixed sub-network: ``view(**inputs)`` returns that sub-network's output. For code
    that calls a model (ckd.evaluation.evaluate); it shares the weights, it copies nothing."""

    def __init__(self, model: nn.Module, subnet: SubNet):
        super().__init__()
        self.model, self.subnet = model, subnet

    def forward(self, **inputs):
        hidden = bool(inputs.pop("output_hidden_states", False))
        return forward(self.model, self.subnet, inputs, hidden=hidden)


# --------------------------------------------------------------------------- export

HF_MODULE = "dynabert_bert"


def export(model: nn.Module, subnet: SubNet) -> nn.Module:
    """A standalone, physically smaller DynaBertForSequenceClassification equal to `subnet` of `model`:
    `shape["heads"]` heads of the original head size, `shape["ffn"]` FFN neurons, the kept layers only
    (renumbered 0..D-1). Its config says so (num_attention_heads, attention_head_size, intermediate_size,
    num_hidden_layers, and `dynabert` = {width, depth, kept_layers})."""
    from ckd.dynabert.hf_model import DynaBertConfig, DynaBertForSequenceClassification

    shape = subnet.shape(model.config)
    values = model.config.to_dict()
    for key in ("model_type", "architectures", "auto_map", "transformers_version", "attention_head_size", "dynabert"):
        values.pop(key, None)
    config = DynaBertConfig(
        **{**values, "num_attention_heads": shape["heads"], "attention_head_size": shape["head_size"],
           "intermediate_size": shape["ffn"], "num_hidden_layers": len(shape["layers"])},
    )
    config.dynabert = {"width": subnet.width, "depth": subnet.depth, "kept_layers": list(shape["layers"])}
    config.auto_map = {
        "AutoConfig": f"{HF_MODULE}.DynaBertConfig",
        "AutoModelForSequenceClassification": f"{HF_MODULE}.DynaBertForSequenceClassification",
    }
    small = DynaBertForSequenceClassification(copy.deepcopy(config))
    views = sliced_parameters(model, subnet)
    full_state = model.state_dict()
    prefixes = _layer_prefixes(model)
    state = {}
    for name, tensor in full_state.items():
        state[name] = views.get(name, tensor)
    renamed = {}
    for new_index, old_index in enumerate(shape["layers"]):
        old, new = prefixes[old_index], prefixes[new_index]
        renamed.update({new + name[len(old):]: value for name, value in state.items() if name.startswith(old)})
    state = {name: value for name, value in state.items() if not any(name.startswith(p) for p in prefixes)}
    state.update(renamed)
    missing, unexpected = small.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise ModelError(f"export of {subnet.tag}: state mismatch (missing {missing[:3]}, unexpected {unexpected[:3]})")
    small.config._attn_implementation = model.config._attn_implementation
    return small.eval()


def save_export(small: nn.Module, tokenizer: Any, folder: Path) -> None:
    """save_pretrained the exported model and its tokenizer into `folder`, with its model code beside it
    (config.json's auto_map names it) so it loads with trust_remote_code=True without ckd installed."""
    folder = Path(folder)
    small.save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    shutil.copyfile(Path(__file__).with_name("hf_model.py"), folder / f"{HF_MODULE}.py")


def numel(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))
