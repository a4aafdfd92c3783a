"""A physically smaller BERT classifier for an exported DynaBERT sub-network, as Hugging Face model code.

Self-contained (imports only torch and transformers): `ckd dynabert export` copies this file into the
exported folder as ``dynabert_bert.py`` and names it in config.json's ``auto_map``, so the folder loads
anywhere with ``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)``.
Importing this module also registers the classes with the Auto factories (no trust_remote_code needed).

Why a subclass: a Hugging Face BertConfig ties the head size to hidden_size / num_attention_heads, and
transformers 5 has no head pruning, so a sub-network with fewer heads of the same size (hidden size
unchanged) is not expressible as a plain BertConfig. DynaBertConfig adds one key, ``attention_head_size``;
DynaBertForSequenceClassification is BertForSequenceClassification with each layer's Q, K, V and
attention-output projections narrowed to num_attention_heads * attention_head_size units. Everything
else (embeddings, FFN of `intermediate_size`, LayerNorms, pooler, classifier) is the stock module.
"""

from __future__ import annotations

from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification


class DynaBertConfig(BertConfig):
    """BertConfig plus ``attention_head_size`` (units per head; default hidden_size // num_attention_heads)."""

    model_type = "dynabert"

    def __init__(self, attention_head_size: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if attention_head_size is None:
            attention_head_size = self.hidden_size // self.num_attention_heads
        self.attention_head_size = int(attention_head_size)


def _narrow_attention(attention: nn.Module, heads: int, head_size: int, hidden: int) -> None:
    units = heads * head_size
    attn = attention.self
    attn.num_attention_heads, attn.attention_head_size, attn.all_head_size = heads, head_size, units
    attn.scaling = head_size ** -0.5
    attn.query, attn.key, attn.value = (nn.Linear(hidden, units) for _ in range(3))
    attention.output.dense = nn.Linear(units, hidden)


class DynaBertForSequenceClassification(BertForSequenceClassification):
    """BertForSequenceClassification whose layers have `num_attention_heads` heads of `attention_head_size`."""

    config_class = DynaBertConfig

    def __init__(self, config: DynaBertConfig):
        heads = int(config.num_attention_heads)
        if config.hidden_size % config.attention_head_size:
            raise ValueError(f"hidden_size {config.hidden_size} is not a multiple of attention_head_size {config.attention_head_size}")
        # Build the stock model with the full head count (its constructor checks hidden % heads), then narrow.
        config.num_attention_heads = config.hidden_size // config.attention_head_size
        try:
            super().__init__(config)
        finally:
            config.num_attention_heads = heads
        for layer in self.bert.encoder.layer:
            _narrow_attention(layer.attention, heads, int(config.attention_head_size), int(config.hidden_size))
        self.post_init()


AutoConfig.register("dynabert", DynaBertConfig, exist_ok=True)
AutoModelForSequenceClassification.register(DynaBertConfig, DynaBertForSequenceClassification, exist_ok=True)
