"""Per-term gradient norms behind `ckd-ltr`'s collapse in the smoke study (docs/analysis/ltr-collapse.md).

Trains the smoke teacher and the `kd`, `ckd` and `ckd-ltr` students of docs/analysis/ltr_collapse.py
(syn-sentiment, seed 1, 2-layer random-init students, 3 epochs of 63 steps, 19 warm-up steps) and prints,
at step 1 (the student at init), a few warm-up steps and the last step of each epoch:

* lr: the learning rate of that step; total: the norm of the gradient over all student parameters before
  clipping; clip: the factor train.max_grad_norm (1.0) multiplied it by, as torch's clip_grad_norm_ does;
* per loss term, the norm of its weighted gradient (weight x term, before clipping) over all parameters
  ("all"), the encoder blocks, the embeddings and the head (pooler and classifier), and its norm on the
  blocks over KD's ("x KD");
* adam: the term's clipped gradient divided per coordinate by Adam's denominator after the step (square
  root of the bias-corrected second moment, plus eps), RMS over the blocks' coordinates: the size of the
  step that term alone would make Adam take on the blocks, in units of the learning rate (momentum is
  ignored; about 1 means a full step). Summed over terms this is no total: the terms partly cancel;
* under each table, every step of the run (not only those printed) at which clipping shrank the gradient.

Each term's gradient comes from its own forward and backward pass over the step's batch with only that
term in the objective (`Objective.terms` swapped for the pass) and the same dropout masks (torch's RNG
state restored before each pass and before the real one, so training is the same as without the probe).
The last line per method checks that the terms' gradients add up to the real one. The probe is a subclass
of ckd.train.Trainer, put in place by rebinding `ckd.runs.train` (what `ckd distill` trains with) in this
process only. About 30 seconds on one CPU core.

    python docs/analysis/ltr_gradients.py [WORK_DIR]
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import torch
from ltr_collapse import STUDENTS, distill_args, train_teacher  # docs/analysis/, this script's folder

import ckd.runs
from ckd.cli import main as cli
from ckd.train import Trainer

METHODS = ("kd", "ckd", "ckd-ltr")
STEPS = (1, 2, 5, 10, 19, 63, 126, 189)
GROUPS = ("blocks", "emb", "head")
ROWS: list[dict] = []  # one per probed step, filled by GradientProbe
CLIPPED: list[int] = []  # every step whose gradient clipping shrank


def _group(name: str) -> str:
    return "blocks" if ".encoder." in name else "emb" if ".embeddings." in name else "head"


def _norm(tensors) -> float:
    return math.sqrt(sum(float(t.double().square().sum()) for t in tensors))


def _clip_factor(total: float, limit: float) -> float:
    """What torch.nn.utils.clip_grad_norm_ multiplies a gradient of norm `total` by (limit 0: no clipping)."""
    return min(1.0, limit / (total + 1e-6)) if limit else 1.0


def _ranges(steps: list[int]) -> str:
    """[1, 2, 3, 7, 9, 10] -> "1-3, 7, 9-10"."""
    runs: list[list[int]] = []
    for step in steps:
        if runs and step == runs[-1][1] + 1:
            runs[-1][1] = step
        else:
            runs.append([step, step])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs) or "none"


class GradientProbe(Trainer):
    """The training loop, measuring each loss term's gradient at the optimiser steps in STEPS."""

    def __init__(self, setup):
        super().__init__(setup)
        self.named = [(name, p) for name, p in setup.student.named_parameters() if p.requires_grad]
        self.gradient: list[torch.Tensor] = []
        self.total = 0.0

    def accumulate_gradients(self, indices):
        result = super().accumulate_gradients(indices)
        self.total = _norm(p.grad for _, p in self.named if p.grad is not None)
        if self.progress.step + 1 in STEPS:
            self.gradient = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for _, p in self.named]
        return result

    def train_step(self, indices):
        step, limit = self.progress.step + 1, float(self.cfg["max_grad_norm"] or 0)
        if step not in STEPS:
            result = super().train_step(indices)
            if _clip_factor(self.total, limit) < 1.0:
                CLIPPED.append(step)
            return result
        objective, rng, terms = self.setup.objective, torch.get_rng_state(), self.setup.objective.terms
        per_term = {}
        try:
            for term in terms:
                objective.terms = [term]
                torch.set_rng_state(rng)
                self.accumulate_gradients(indices)
                per_term[term[0].name] = self.gradient
        finally:
            objective.terms = terms
        torch.set_rng_state(rng)
        lr = self.scheduler.get_last_lr()[0]
        result = super().train_step(indices)  # the real step; accumulate_gradients keeps its gradient
        total, clip = self.total, _clip_factor(self.total, limit)
        if clip < 1.0:
            CLIPPED.append(step)
        summed = [sum(grads[i] for grads in per_term.values()) for i in range(len(self.named))]
        mismatch = _norm([s - g for s, g in zip(summed, self.gradient)]) / total
        beta2, eps = self.optimizer.param_groups[0]["betas"][1], self.optimizer.param_groups[0]["eps"]
        blocks = [i for i, (name, _) in enumerate(self.named) if _group(name) == "blocks"]
        denominators = {}
        for i in blocks:
            state = self.optimizer.state[self.named[i][1]]
            denominators[i] = (state["exp_avg_sq"] / (1 - beta2 ** float(state["step"]))).sqrt() + eps
        coordinates = sum(self.named[i][1].numel() for i in blocks)
        terms_out = {}
        for name, grads in per_term.items():
            norms = {group: _norm([g for (n, _), g in zip(self.named, grads) if _group(n) == group]) for group in GROUPS}
            adam = math.sqrt(sum(float((clip * grads[i] / denominators[i]).double().square().sum()) for i in blocks) / coordinates)
            terms_out[name] = {"all": _norm(grads), **norms, "adam": adam}
        ROWS.append({"step": step, "lr": lr, "total": total, "clip": clip, "mismatch": mismatch, "terms": terms_out})
        return result


def main(work: Path) -> None:
    torch.set_num_threads(1)
    teacher = train_teacher(work)
    ckd.runs.train = lambda setup: GradientProbe(setup).run()
    tables = []
    for method in METHODS:
        ROWS.clear()
        CLIPPED.clear()
        out = work / method
        assert cli(["distill", *distill_args(STUDENTS[method], teacher, out)]) in (0, None)
        accuracy = json.loads((out / "record.json").read_text())["metrics"]["final"]["dev"]["accuracy"]
        lines = [f"{method}: dev accuracy {100 * accuracy:.1f} after 3 epochs",
                 f"{'step':>4s} {'lr':>8s} {'total':>7s} {'clip':>5s}  {'term':10s} {'all':>7s} {'blocks':>7s} {'emb':>7s} "
                 f"{'head':>7s} {'x KD':>6s} {'adam':>6s}"]
        for row in ROWS:
            kd_blocks = row["terms"]["kd"]["blocks"]
            for k, (name, t) in enumerate(row["terms"].items()):
                lead = f"{row['step']:4d} {row['lr']:8.2e} {row['total']:7.3f} {row['clip']:5.3f}" if k == 0 else " " * 32
                lines.append(f"{lead}  {name:10s} {t['all']:7.3f} {t['blocks']:7.4f} {t['emb']:7.4f} {t['head']:7.4f} "
                             f"{t['blocks'] / kd_blocks:6.1f} {t['adam']:6.3f}")
        lines.append(f"clipped at steps: {_ranges(CLIPPED)} (of {ROWS[-1]['step']})")
        lines.append(f"(the terms' gradients add up to the real one within {max(r['mismatch'] for r in ROWS):.1g} of its norm)")
        tables.append("\n".join(lines))
    print("\n\n".join(tables))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="ltr-gradients-")))
