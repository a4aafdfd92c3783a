"""Teacher and student of a general distillation: BERT-family encoders with a masked-LM head when they have one.

The same model specs as task runs (ckd.models: pretrained | random | truncate, shape keys, tokenizer), built
as `AutoModelForMaskedLM` instead of a sequence classifier. A pre-trained checkpoint without MLM head weights
(e.g. sentence-transformers/all-MiniLM-L6-v2, saved as a bare BertModel) loads with `mlm_head` False: its
encoder is used, its (freshly initialised) head never is. A random init has its own (random) head.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ckd.errors import ModelError
from ckd.models import _from_pretrained, _quiet_transformers, _truncate_in_place, load_tokenizer, resolve_source, validate_spec


@dataclass
class GeneralModel:
    model: nn.Module      # a *ForMaskedLM
    tokenizer: Any
    spec: dict[str, Any]
    mlm_head: bool         # the head's weights came with the model (pre-trained), or the model is random


def mlm_head_module(model: nn.Module) -> nn.Module:
    """The MLM prediction head of a *ForMaskedLM (BERT's `cls`, else its output-embedding path)."""
    head = getattr(model, "cls", None)
    if head is None:
        raise ModelError(f"{type(model).__name__} has no BERT-style MLM head (`cls`): general distillation supports BERT-family encoders")
    return head


def build_general_model(spec: Mapping[str, Any], *, role: str, seed: int = 0) -> GeneralModel:
    """A teacher or student for general distillation from a model spec (ckd.models). ModelError (one line)
    for a checkpoint whose encoder weights are incomplete or a spec that does not fit."""
    from transformers import AutoModelForMaskedLM, BertConfig

    spec = validate_spec(spec, role)
    tokenizer = load_tokenizer(spec)
    torch.manual_seed(seed)
    dropout = {}
    if spec.get("dropout") is not None:
        dropout = {"hidden_dropout_prob": float(spec["dropout"]), "attention_probs_dropout_prob": float(spec["dropout"])}
    if spec["init"] == "random":
        config = BertConfig(
            vocab_size=len(tokenizer), hidden_size=spec["hidden"], num_hidden_layers=spec["layers"],
            num_attention_heads=spec["heads"], intermediate_size=spec["ffn"], pad_token_id=tokenizer.pad_token_id or 0,
            **dropout,
        )
        model = AutoModelForMaskedLM.from_config(config, attn_implementation="eager")
        mlm_head = True
    else:
        source = resolve_source(spec["name_or_path"])
        with _quiet_transformers():
            model, info = _from_pretrained(
                AutoModelForMaskedLM, source, output_loading_info=True, attn_implementation="eager", **dropout,
            )
        prefix = model.base_model_prefix
        missing = [str(k) for k in info.get("missing_keys") or ()]
        encoder = [k for k in missing if k.startswith(prefix + ".") and ".pooler." not in k]
        if encoder or info.get("mismatched_keys"):
            raise ModelError(f"{role} {spec['name_or_path']} lacks encoder weights or has them in another shape "
                             f"({', '.join((encoder or [str(m) for m in info['mismatched_keys']])[:3])}): re-save or re-download it")
        mlm_head = not any(not k.startswith(prefix + ".") for k in missing)
        if spec["init"] == "truncate":
            _truncate_in_place(model, spec["layers"], spec["truncate"], role)
    model.config.output_hidden_states = False
    if not spec.get("name"):
        spec["name"] = f"{model.config.num_hidden_layers}L-{model.config.hidden_size}"
    return GeneralModel(model=model, tokenizer=tokenizer, spec=spec, mlm_head=mlm_head)
