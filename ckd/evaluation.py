"""Dev-set evaluation: predictions, metrics per split, and the model-selection value."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch
from torch import nn

from ckd.metrics import compute_metrics


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids")}


@torch.no_grad()
def predict(
    model: nn.Module, data: Any, batch_size: int, regression: bool, autocast=contextlib.nullcontext,
    positions: list[int] | None = None,
) -> tuple[list, list, float]:
    """Predictions and gold labels of `positions` (default: every example, in dataset order), and the
    time taken (seconds)."""
    model.eval()
    device = next(model.parameters()).device
    positions = list(range(len(data))) if positions is None else positions
    predictions: list = []
    labels: list = []
    started = time.perf_counter()
    for start in range(0, len(positions), batch_size):
        batch = data.batch(positions[start:start + batch_size])
        with autocast():
            logits = model(**model_inputs(batch, device)).logits.float()
        if regression:
            predictions.extend(logits.squeeze(-1).tolist())
        else:
            predictions.extend(logits.argmax(dim=-1).tolist())
        labels.extend(batch["labels"].tolist())
    return predictions, labels, time.perf_counter() - started


def evaluate(
    model: nn.Module, dev_data: dict[str, Any], task: Any, batch_size: int, autocast=contextlib.nullcontext,
    runtime: Any = None,
) -> tuple[dict, dict, float]:
    """Metrics and predictions (dataset order) per dev split, and milliseconds per example.

    runtime: with several processes (ckd.distributed.Runtime), each process predicts every
    world_size-th example and the predictions are gathered, so every process returns the whole
    split's predictions and metrics for 1/world_size of the work.
    """
    from ckd.distributed import gather_objects

    rank, world = (runtime.rank, runtime.world_size) if runtime is not None else (0, 1)
    metrics: dict[str, dict[str, float]] = {}
    predictions: dict[str, dict[str, list]] = {}
    seconds, count = 0.0, 0
    for split, data in dev_data.items():
        mine = list(range(rank, len(data), world))
        preds, labels, took = predict(model, data, batch_size, task.is_regression, autocast, mine)
        if world > 1:
            shards = gather_objects((preds, labels), runtime)
            preds, labels = [None] * len(data), [None] * len(data)
            for r, (shard_preds, shard_labels) in enumerate(shards):
                preds[r::world], labels[r::world] = shard_preds, shard_labels
        metrics[split] = compute_metrics(task, preds, labels)
        predictions[split] = {"labels": labels, "predictions": preds}
        seconds += took
        count += len(mine)
    return metrics, predictions, 1000.0 * seconds / max(1, count)


def selection_value(task: Any, metrics: dict[str, dict[str, float]]) -> float:
    """The metric that picks the best-on-dev checkpoint, on the first dev split."""
    value = metrics[task.dev_splits[0]][task.selection_metric]
    return float("-inf") if value != value else float(value)
