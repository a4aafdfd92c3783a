"""One training loop for fine-tuning and distillation, with exact resume from the latest checkpoint."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ckd import checkpoint as ckpt
from ckd.atomic import remove_stale_temporaries
from ckd.distributed import Runtime, any_process, barrier, gather_objects, no_gradient_sync, share_of, sum_across, wrap_for_training
from ckd.errors import CkdError
from ckd.evaluation import evaluate, selection_value
from ckd.interrupts import InterruptFlag
from ckd.objectives import Batch
from ckd.pause import pause_point


class Preempted(CkdError):
    """SIGTERM (cluster pre-emption) or SIGINT (Ctrl-C): the run checkpointed and stopped; the same command resumes it."""


class NonFiniteLoss(CkdError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


class _TerminationFlag(InterruptFlag):
    """SIGTERM (pre-emption) and SIGINT (Ctrl-C) as a flag the loop checks between steps, so it can
    checkpoint first; `name` says which arrived. A second Ctrl-C stops at once (ckd.interrupts)."""


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
    runtime: Runtime
    evaluate_dev: bool = True


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    final: dict[str, Any] | None
    best: dict[str, Any] | None
    final_predictions: dict[str, dict] | None
    best_predictions: dict[str, dict] | None
    train_seconds: float
    examples_seen: int
    steps: int


@dataclass
class _Progress:
    """Everything about the run's position that a checkpoint must carry besides the tensors."""

    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    best_predictions: dict[str, dict] | None = None
    train_seconds: float = 0.0
    examples_seen: int = 0
    window_loss: float = 0.0
    window_terms: dict[str, float] = field(default_factory=dict)
    window_steps: int = 0

    def add_step(self, loss: float, terms: dict[str, float]) -> None:
        self.window_loss += loss
        self.window_steps += 1
        for name, value in terms.items():
            self.window_terms[name] = self.window_terms.get(name, 0.0) + value

    def close_window(self, steps_per_epoch: int) -> dict[str, Any]:
        steps = max(1, self.window_steps)
        entry = {
            "step": self.step,
            "epoch": round(self.step / steps_per_epoch, 4),
            "train_loss": self.window_loss / steps,
            "loss_terms": {k: v / steps for k, v in self.window_terms.items()},
        }
        self.window_loss, self.window_terms, self.window_steps = 0.0, {}, 0
        return entry


def epoch_order(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator)


def linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _progress_bar(total: int, initial: int, enabled: bool, description: str):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, disable=not enabled, desc=description, unit="step", dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 10.0, file=sys.stderr,
    )


def _tensorboard(run_dir: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run_dir / "tb"))


def _chunks(items: list[int], parts: int) -> list[list[int]]:
    size = math.ceil(len(items) / parts) if items else 0
    return [items[i:i + size] for i in range(0, len(items), size)] if size else []


class TrainingStep(nn.Module):
    """The trained modules (student, and the objective's learnable parts such as TinyBERT's
    projections) with the step loss as forward, the unit that DistributedDataParallel wraps. The
    teacher is not a submodule: it is frozen and never synchronised."""

    def __init__(self, student: nn.Module, objective: nn.Module, step_loss: Callable):
        super().__init__()
        self.student, self.objective = student, objective
        self.step_loss = step_loss

    def forward(self, batch: dict[str, torch.Tensor], shares: dict[str, float] | None = None):
        return self.step_loss(batch, shares)


def _loss_batch(batch: dict[str, torch.Tensor]) -> Batch:
    return Batch(labels=batch["labels"], attention_mask=batch["attention_mask"])


class Trainer:
    def __init__(self, setup: TrainSetup):
        self.setup = setup
        self.runtime = setup.runtime
        cfg = setup.config["train"]
        self.cfg = cfg
        self.seed = int(setup.config["seed"])
        self.batch_size = int(cfg["batch_size"])
        self.num_examples = len(setup.train_data)
        if self.num_examples == 0:
            raise CkdError("the training split is empty")
        self.steps_per_epoch = math.ceil(self.num_examples / self.batch_size)
        self.total_steps = int(cfg["max_steps"]) if cfg["max_steps"] else self.steps_per_epoch * setup.epochs
        self.eval_every = int(cfg["eval_every"] or self.steps_per_epoch)
        self.checkpoint_every = int(cfg["checkpoint_every"] or self.eval_every)
        torch.manual_seed(self.seed + self.runtime.rank)
        self.model = wrap_for_training(TrainingStep(setup.student, setup.objective, setup.step_loss), self.runtime)
        self.params = [p for p in setup.student.parameters() if p.requires_grad]
        self.params += [p for p in setup.objective.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=setup.lr, eps=float(cfg["adam_eps"]), weight_decay=float(cfg["weight_decay"])
        )
        self.scheduler = linear_schedule(self.optimizer, self.total_steps, int(round(cfg["warmup_ratio"] * self.total_steps)))
        self.scaler = torch.amp.GradScaler("cuda") if self.runtime.precision == "fp16" else None
        self.progress = _Progress()
        self.checkpointed_step: int | None = None

    # -- checkpoints -------------------------------------------------------------------------
    def resume(self) -> None:
        if self.runtime.is_main:
            remove_stale_temporaries(self.setup.run_dir)  # left by a run killed mid-write
        state = ckpt.load_checkpoint(self.setup.run_dir, self.setup.config_fingerprint)
        if state is None:
            return
        if len(state["rng"]) != self.runtime.world_size:
            raise CkdError(
                f"checkpoint in {ckpt.latest_path(self.setup.run_dir)} was written by {len(state['rng'])} process(es), "
                f"this run has {self.runtime.world_size}: resume with the same process count"
            )
        self.setup.student.load_state_dict(state["student"])
        self.setup.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        ckpt.restore_rng_state(state["rng"][self.runtime.rank])
        self.progress = _Progress(**state["progress"])
        self.checkpointed_step = self.progress.step
        if self.runtime.is_main:
            print(f"resuming {self.setup.run_dir} from step {self.progress.step}/{self.total_steps}", file=sys.stderr)

    def save(self) -> None:
        rng = gather_objects(ckpt.rng_state(), self.runtime)
        if self.runtime.is_main:
            step = self.progress.step
            ckpt.save_checkpoint(self.setup.run_dir, {
                "config_fingerprint": self.setup.config_fingerprint,
                "step": step,
                "data_order": epoch_order(self.num_examples, self.seed, step // self.steps_per_epoch),
                "student": self.setup.student.state_dict(),
                "objective": self.setup.objective.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng,
                "progress": vars(self.progress),
            })
        self.checkpointed_step = self.progress.step
        barrier(self.runtime)

    # -- one optimiser step ------------------------------------------------------------------
    def accumulate_gradients(self, indices: list[int]) -> tuple[float, dict[str, float]]:
        """Forward and backward over one optimiser step's examples: this process's share, in
        `train.grad_accum` micro-batches, gradients summed across processes (by DistributedDataParallel
        on the last micro-batch). Returns the step's loss and term values.

        Exact whatever the split: every micro-batch is padded to the step's longest row, and each
        term of each micro-batch is weighted by that micro-batch's share of the term's normaliser over
        the whole step (all micro-batches of all processes: `Objective.counts`), so loss and gradients
        equal those of the whole batch at once for per-example, per-token and per-pair means alike.
        Every process runs the same number of micro-batches (a process with fewer examples adds
        micro-batches of weight 0), so every process joins every collective.
        """
        self.optimizer.zero_grad(set_to_none=True)
        data, objective, runtime = self.setup.train_data, self.setup.objective, self.runtime
        width = data.width(indices)
        accum = int(self.cfg["grad_accum"])
        chunks = _chunks(share_of(indices, runtime), accum)
        rounds = max(len(_chunks(share_of(indices, replace(runtime, rank=r)), accum)) for r in range(runtime.world_size))
        batches = [data.batch(chunk, width=width) for chunk in chunks]
        counts = [objective.counts(_loss_batch(batch)) for batch in batches]
        names = objective.term_names
        step_counts = sum_across({name: sum(c[name] for c in counts) for name in names}, runtime)
        idle = dict.fromkeys(names, 0.0)
        while len(batches) < rounds:  # weight 0: a forward and backward only so that the collectives match
            batches.append(data.batch(indices[:1], width=width))
            counts.append(idle)
        local = dict.fromkeys(["loss", *(f"term/{name}" for name in names)], 0.0)
        for round_, (batch, count) in enumerate(zip(batches, counts)):
            shares = {name: count[name] / step_counts[name] if step_counts[name] else 0.0 for name in names}
            batch = {k: v.to(runtime.device) for k, v in batch.items()}
            # Gradients are all-reduced on the last micro-batch only. DistributedDataParallel averages
            # over processes; the terms are already normalised over the whole step, so the sum is wanted.
            with nullcontext() if round_ == rounds - 1 else no_gradient_sync(self.model):
                with runtime.autocast():
                    loss, terms = self.model(batch, shares)
                if loss.dtype in (torch.float16, torch.bfloat16):
                    loss = loss.float()
                scaled = loss * runtime.world_size
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            local["loss"] += loss.item()
            for name, value in terms.items():
                local[f"term/{name}"] += value
        totals = sum_across(local, runtime)
        terms = {k.split("/", 1)[1]: v for k, v in totals.items() if k.startswith("term/")}
        return totals["loss"], terms

    def train_step(self, indices: list[int]) -> tuple[float, dict[str, float]]:
        loss, terms = self.accumulate_gradients(indices)
        if not math.isfinite(loss):
            kept = (
                f"the last good checkpoint (step {self.checkpointed_step}) is kept in {ckpt.latest_path(self.setup.run_dir)}"
                if self.checkpointed_step is not None else "no checkpoint had been written yet"
            )
            raise NonFiniteLoss(
                f"non-finite loss ({loss}) at step {self.progress.step + 1}, not applied; {kept}. "
                "Lower train.lr or the loss weights (method_options.<setting>) and re-run in a new output_dir"
            )
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.cfg["max_grad_norm"]:
            torch.nn.utils.clip_grad_norm_(self.params, float(self.cfg["max_grad_norm"]))
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        return loss, terms

    def evaluate(self) -> tuple[dict, dict]:
        pause_point("eval")
        metrics, predictions, _ = evaluate(
            self.setup.student, self.setup.dev_data, self.setup.task, int(self.cfg["eval_batch_size"]), self.runtime.autocast,
            runtime=self.runtime,
        )
        self.setup.student.train()
        return metrics, predictions

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        self.resume()
        progress = self.progress
        main = self.runtime.is_main
        writer = _tensorboard(self.setup.run_dir, bool(self.cfg["tensorboard"]) and main)
        label = f"{self.setup.config['task']} {self.setup.config.get('method') or 'finetune'}"
        bar = _progress_bar(self.total_steps, progress.step, bool(self.cfg["progress"]) and main, label)
        final_eval = None
        with _TerminationFlag() as termination:
            try:
                self.setup.student.train()
                while progress.step < self.total_steps:
                    started = time.perf_counter()
                    epoch, position = divmod(progress.step, self.steps_per_epoch)
                    order = epoch_order(self.num_examples, self.seed, epoch)
                    indices = order[position * self.batch_size:(position + 1) * self.batch_size].tolist()
                    loss, terms = self.train_step(indices)
                    progress.step += 1
                    progress.examples_seen += len(indices)
                    progress.train_seconds += time.perf_counter() - started
                    progress.add_step(loss, terms)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                    pause_point("train-step")
                    if writer is not None:
                        writer.add_scalar("train/loss", loss, progress.step)
                        writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], progress.step)
                    last = progress.step == self.total_steps
                    if progress.step % self.eval_every == 0 or last:
                        entry = progress.close_window(self.steps_per_epoch)
                        if self.setup.evaluate_dev:
                            metrics, predictions = self.evaluate()
                            entry["dev"] = metrics
                            self._log_metrics(writer, metrics, progress.step)
                            task = self.setup.task
                            if progress.best is None or selection_value(task, metrics) > selection_value(task, progress.best["metrics"]):
                                progress.best = {"step": progress.step, "metrics": metrics}
                                progress.best_predictions = predictions
                            if last:
                                final_eval = (metrics, predictions)
                        progress.history.append(entry)
                    # Every process must stop after the same step (a signal may reach them a step apart).
                    stop = any_process(termination.raised, self.runtime)
                    if not last and (progress.step % self.checkpoint_every == 0 or stop):
                        self.save()
                    if stop and not last:
                        raise Preempted(
                            f"stopped by {termination.name or 'a signal to another process'} after step {progress.step}/{self.total_steps}; checkpoint saved in "
                            f"{ckpt.latest_path(self.setup.run_dir)}: run the same command again to resume"
                        )
            finally:
                bar.close()
                if writer is not None:
                    writer.close()
        return TrainResult(
            history=progress.history,
            final={"step": progress.step, "metrics": final_eval[0]} if final_eval else None,
            best=progress.best,
            final_predictions=final_eval[1] if final_eval else None,
            best_predictions=progress.best_predictions,
            train_seconds=progress.train_seconds,
            examples_seen=progress.examples_seen,
            steps=progress.step,
        )

    @staticmethod
    def _log_metrics(writer, metrics: dict[str, dict[str, float]], step: int) -> None:
        if writer is None:
            return
        for split, values in metrics.items():
            for metric, value in values.items():
                writer.add_scalar(f"{split}/{metric}", value, step)


def train(setup: TrainSetup) -> TrainResult:
    return Trainer(setup).run()
