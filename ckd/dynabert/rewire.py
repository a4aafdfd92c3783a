"""Network rewiring (DynaBERT step 1): score every attention head and FFN neuron, then reorder them so the
most important come first in every layer. The reordered network computes the same function.

Importance, as in the authors' ``compute_neuron_head_importance`` (DynaBERT/run_glue.py; Michel et al.
2019 for heads, a first-order Taylor term for neurons), with the model in eval mode and the task loss
(cross-entropy, MSE for regression) on gold labels:

- head h of layer l: sum over batches of |dL/dm_lh|, m_lh a multiplier (1.0) on the head's attention
  output. The authors put the mask on the attention probabilities; context = probs @ V is linear in
  them, so the gradient is the same. Here it is a forward hook on each self-attention module (no
  modeling code, and transformers 5 has no head_mask argument).
- FFN neuron i of layer l: sum over batches of |sum_j W1[i, j] dL/dW1[i, j] + b1[i] dL/db1[i]| +
  |sum_k W2[k, i] dL/dW2[k, i]| (W1, b1: intermediate.dense; W2: output.dense).

Differences from the released code, on purpose: scores come from the *training* data (the issue and
the paper; the released script reads the dev set, which leaks dev labels into the model), at most
`max_examples` of them; gradients are zeroed after each batch (the released loop never zeroes them, so
its batch b adds |cumulative gradient of batches 1..b|); ties keep their original order (stable sort).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ckd.dynabert.dynamic import encoder_of
from ckd.losses import logits as logit_losses


def _task_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    return logit_losses.mse(logits, labels) if regression else logit_losses.cross_entropy(logits, labels)


def importance(model: nn.Module, data: Any, *, regression: bool, batch_size: int = 32, max_examples: int | None = None
               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(head importance (L, H), [FFN neuron importance (I,) per layer]) of `model` on `data` (an EncodedSplit:
    ``len`` and ``batch(indices)``), in dataset order over the first `max_examples` examples."""
    layers = encoder_of(model).layer
    config = model.config
    num_heads, head_size = int(config.num_attention_heads), int(config.hidden_size) // int(config.num_attention_heads)
    device = next(model.parameters()).device
    masks = torch.ones(len(layers), num_heads, device=device, requires_grad=True)
    heads = torch.zeros(len(layers), num_heads, dtype=torch.float64)
    neurons = [torch.zeros(layer.intermediate.dense.out_features, dtype=torch.float64) for layer in layers]

    def hook_for(index: int):
        def hook(module, args, output):
            context, *rest = output
            shaped = context.view(*context.shape[:-1], num_heads, head_size) * masks[index].view(num_heads, 1)
            return (shaped.view(context.shape), *rest)
        return hook

    handles = [layer.attention.self.register_forward_hook(hook_for(i)) for i, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        count = len(data) if max_examples is None else min(len(data), int(max_examples))
        for start in range(0, count, batch_size):
            batch = data.batch(list(range(start, min(count, start + batch_size))))
            inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids")}
            model.zero_grad(set_to_none=True)
            masks.grad = None
            loss = _task_loss(model(**inputs).logits, batch["labels"].to(device), regression)
            loss.backward()
            heads += masks.grad.detach().abs().double().cpu()
            for layer, score in zip(layers, neurons):
                w1, w2 = layer.intermediate.dense, layer.output.dense
                into = (w1.weight * w1.weight.grad).sum(dim=1) + w1.bias * w1.bias.grad
                out = (w2.weight * w2.weight.grad).sum(dim=0)
                score += into.detach().abs().double().cpu() + out.detach().abs().double().cpu()
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return heads, neurons


def _order(scores: torch.Tensor) -> torch.Tensor:
    return torch.sort(scores, descending=True, stable=True).indices


@torch.no_grad()
def reorder(model: nn.Module, head_scores: torch.Tensor, neuron_scores: list[torch.Tensor]) -> dict[str, list]:
    """Permute, in place, every layer's heads (Q, K, V rows in blocks of the head size, attention-output
    columns) and FFN neurons (intermediate rows and bias, output columns) into descending importance.
    Returns the orders applied ({"heads": [[...] per layer], "ffn": [[...] per layer]})."""
    config = model.config
    num_heads = int(config.num_attention_heads)
    head_size = int(config.hidden_size) // num_heads
    applied: dict[str, list] = {"heads": [], "ffn": []}
    for layer, h_scores, n_scores in zip(encoder_of(model).layer, head_scores, neuron_scores):
        heads = _order(h_scores)
        units = (heads.view(-1, 1) * head_size + torch.arange(head_size)).reshape(-1)
        attn = layer.attention
        for linear in (attn.self.query, attn.self.key, attn.self.value):
            linear.weight.copy_(linear.weight[units.to(linear.weight.device)])
            linear.bias.copy_(linear.bias[units.to(linear.bias.device)])
        dense = attn.output.dense
        dense.weight.copy_(dense.weight[:, units.to(dense.weight.device)])
        neurons = _order(n_scores)
        w1, w2 = layer.intermediate.dense, layer.output.dense
        w1.weight.copy_(w1.weight[neurons.to(w1.weight.device)])
        w1.bias.copy_(w1.bias[neurons.to(w1.bias.device)])
        w2.weight.copy_(w2.weight[:, neurons.to(w2.weight.device)])
        applied["heads"].append(heads.tolist())
        applied["ffn"].append(neurons.tolist())
    return applied
