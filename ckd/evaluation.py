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
def predict(model: nn.Module, data: Any, batch_size: int, regression: bool, autocast=contextlib.nullcontext) -> tuple[list, list, float]:
    """Predictions and gold labels in dataset order, and the time taken (seconds)."""
    model.eval()
    device = next(model.parameters()).device
    predictions: list = []
    labels: list = []
    started = time.perf_counter()
    for start in range(0, len(data), batch_size):
        batch = data.batch(list(range(start, min(start + batch_size, len(data)))))
        with autocast():
            logits = model(**model_inputs(batch, device)).logits.float()
        if regression:
            predictions.extend(logits.squeeze(-1).tolist())
        else:
            predictions.extend(logits.argmax(dim=-1).tolist())
        labels.extend(batch["labels"].tolist())
    return predictions, labels, time.perf_counter() - started


def evaluate(model: nn.Module, dev_data: dict[str, Any], task: Any, batch_size: int, autocast=contextlib.nullcontext) -> tuple[dict, dict, float]:
    """Metrics and predictions per dev split, and milliseconds per example."""
    metrics: dict[str, dict[str, float]] = {}
    predictions: dict[str, dict[str, list]] = {}
    seconds, count = 0.0, 0
    for split, data in dev_data.items():
        preds, labels, took = predict(model, data, batch_size, task.is_regression, autocast)
        metrics[split] = compute_metrics(task, preds, labels)
        predictions[split] = {"labels": labels, "predictions": preds}
        seconds += took
        count += len(data)
    return metrics, predictions, 1000.0 * seconds / max(1, count)


def selection_value(task: Any, metrics: dict[str, dict[str, float]]) -> float:
    """The metric that picks the best-on-dev checkpoint, on the first dev split."""
    value = metrics[task.dev_splits[0]][task.selection_metric]
    return float("-inf") if value != value else float(value)
