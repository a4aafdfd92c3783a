"""One training loop for fine-tuning and distillation, with exact resume from the latest checkpoint."""

from __future__ import annotations

import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ckd import checkpoint as ckpt
from ckd.errors import CkdError


class Preempted(CkdError):
    """SIGTERM (cluster pre-emption): the run checkpointed and stopped; the same command resumes it."""


class _TerminationFlag:
    """Turns SIGTERM into a flag the loop checks between steps, so it can checkpoint first."""

    def __init__(self) -> None:
        self.raised = False
        self._previous = None

    def __enter__(self) -> "_TerminationFlag":
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        self.raised = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
from ckd.evaluation import evaluate, selection_value


@dataclass
class TrainSetup:
    """What the loop needs; built by ckd.runs from a run config."""

    run_dir: Path
    config: dict[str, Any]
    config_fingerprint: str
    student: nn.Module
    objective: nn.Module
    step_loss: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]
    train_data: Any               # EncodedSplit
    dev_data: dict[str, Any]      # split name -> EncodedSplit
    task: Any                     # TaskSpec
    lr: float
    epochs: int
    evaluate_dev: bool = True


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    final: dict[str, Any] | None
    best: dict[str, Any] | None
    final_predictions: dict[str, list] | None
    best_predictions: dict[str, list] | None
    train_seconds: float
    examples_seen: int
    steps: int


def epoch_order(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator)


def linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _trainable_parameters(setup: TrainSetup) -> list[nn.Parameter]:
    params = [p for p in setup.student.parameters() if p.requires_grad]
    params += [p for p in setup.objective.parameters() if p.requires_grad]
    return params


def _progress(total: int, initial: int, enabled: bool, description: str):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        desc=description,
        unit="step",
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 10.0,
        file=sys.stderr,
    )


def _tensorboard(run_dir: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run_dir / "tb"))


def train(setup: TrainSetup) -> TrainResult:
    cfg = setup.config["train"]
    seed = int(setup.config["seed"])
    batch_size, accum = int(cfg["batch_size"]), int(cfg["grad_accum"])
    micro = batch_size // accum
    num_examples = len(setup.train_data)
    if num_examples == 0:
        raise CkdError("the training split is empty")
    steps_per_epoch = math.ceil(num_examples / batch_size)
    total_steps = int(cfg["max_steps"]) if cfg["max_steps"] else steps_per_epoch * setup.epochs
    eval_every = int(cfg["eval_every"] or steps_per_epoch)
    checkpoint_every = int(cfg["checkpoint_every"] or eval_every)

    torch.manual_seed(seed)
    params = _trainable_parameters(setup)
    optimizer = torch.optim.AdamW(params, lr=setup.lr, eps=float(cfg["adam_eps"]), weight_decay=float(cfg["weight_decay"]))
    scheduler = linear_schedule(optimizer, total_steps, int(round(cfg["warmup_ratio"] * total_steps)))

    step, history, best, best_predictions, train_seconds, examples_seen = 0, [], None, None, 0.0, 0
    window_loss, window_terms, window_batches = 0.0, {}, 0
    state = ckpt.load_checkpoint(setup.run_dir, setup.config_fingerprint)
    if state is not None:
        setup.student.load_state_dict(state["student"])
        setup.objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ckpt.restore_rng_state(state["rng"])
        step, history, best, best_predictions = state["step"], state["history"], state["best"], state["best_predictions"]
        train_seconds, examples_seen = state["train_seconds"], state["examples_seen"]
        window_loss, window_terms, window_batches = state["window"]
        print(f"resuming {setup.run_dir} from step {step}/{total_steps}", file=sys.stderr)

    def save(step_now: int) -> None:
        ckpt.save_checkpoint(
            setup.run_dir,
            {
                "config_fingerprint": setup.config_fingerprint,
                "step": step_now,
                "epoch": step_now // steps_per_epoch,
                "data_order": epoch_order(num_examples, seed, step_now // steps_per_epoch),
                "student": setup.student.state_dict(),
                "objective": setup.objective.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": ckpt.rng_state(),
                "history": history,
                "best": best,
                "best_predictions": best_predictions,
                "train_seconds": train_seconds,
                "examples_seen": examples_seen,
                "window": (window_loss, window_terms, window_batches),
            },
        )

    writer = _tensorboard(setup.run_dir, bool(cfg["tensorboard"]))
    bar = _progress(total_steps, step, bool(cfg["progress"]), f"{setup.config['task']} {setup.config.get('method') or 'finetune'}")
    final_eval = None
    with _TerminationFlag() as termination:
        try:
            setup.student.train()
            order = epoch_order(num_examples, seed, step // steps_per_epoch)
            while step < total_steps:
                started = time.perf_counter()
                epoch, position = divmod(step, steps_per_epoch)
                if position == 0:
                    order = epoch_order(num_examples, seed, epoch)
                indices = order[position * batch_size:(position + 1) * batch_size].tolist()
                optimizer.zero_grad(set_to_none=True)
                step_loss, step_terms = 0.0, {}
                for start in range(0, len(indices), micro):
                    chunk = indices[start:start + micro]
                    if not chunk:
                        continue
                    batch = setup.train_data.batch(chunk)
                    loss, terms = setup.step_loss(batch)
                    if not torch.isfinite(loss):
                        raise CkdError(
                            f"non-finite loss ({loss.item()}) at step {step + 1} (terms: {terms}); stopped. "
                            f"The last good checkpoint is in {ckpt.latest_path(setup.run_dir)}: lower the learning rate or the loss weights"
                        )
                    (loss * (len(chunk) / len(indices))).backward()
                    step_loss += loss.item() * len(chunk) / len(indices)
                    for name, value in terms.items():
                        step_terms[name] = step_terms.get(name, 0.0) + value * len(chunk) / len(indices)
                if cfg["max_grad_norm"]:
                    torch.nn.utils.clip_grad_norm_(params, float(cfg["max_grad_norm"]))
                optimizer.step()
                scheduler.step()
                step += 1
                examples_seen += len(indices)
                train_seconds += time.perf_counter() - started
                window_loss += step_loss
                window_batches += 1
                for name, value in step_terms.items():
                    window_terms[name] = window_terms.get(name, 0.0) + value
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}", refresh=False)
                if writer is not None:
                    writer.add_scalar("train/loss", step_loss, step)
                    writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)

                if step % eval_every == 0 or step == total_steps:
                    entry = {
                        "step": step,
                        "epoch": round(step / steps_per_epoch, 4),
                        "train_loss": window_loss / max(1, window_batches),
                        "loss_terms": {k: v / max(1, window_batches) for k, v in window_terms.items()},
                    }
                    window_loss, window_terms, window_batches = 0.0, {}, 0
                    if setup.evaluate_dev:
                        metrics, predictions, _ = evaluate(setup.student, setup.dev_data, setup.task, int(cfg["eval_batch_size"]))
                        setup.student.train()
                        entry["dev"] = metrics
                        if writer is not None:
                            for split, values in metrics.items():
                                for metric, value in values.items():
                                    writer.add_scalar(f"{split}/{metric}", value, step)
                        if best is None or selection_value(setup.task, metrics) > selection_value(setup.task, best["metrics"]):
                            best = {"step": step, "metrics": metrics}
                            best_predictions = predictions
                        if step == total_steps:
                            final_eval = (metrics, predictions)
                    history.append(entry)
                if step < total_steps and (step % checkpoint_every == 0 or termination.raised):
                    save(step)
                if termination.raised and step < total_steps:
                    raise Preempted(
                        f"stopped by SIGTERM after step {step}/{total_steps}; checkpoint saved in "
                        f"{ckpt.latest_path(setup.run_dir)}: run the same command again to resume"
                    )
        finally:
            bar.close()
            if writer is not None:
                writer.close()

    final, final_predictions = None, None
    if final_eval is not None:  # the last step is always evaluated when the run evaluates at all
        final = {"step": step, "metrics": final_eval[0]}
        final_predictions = final_eval[1]
    return TrainResult(
        history=history,
        final=final,
        best=best,
        final_predictions=final_predictions,
        best_predictions=best_predictions,
        train_seconds=train_seconds,
        examples_seen=examples_seen,
        steps=step,
    )
