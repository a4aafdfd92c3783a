"""How long `ckd-ltr`'s one-class plateau lasts in the smoke study (docs/analysis/ltr-collapse.md).

Trains the smoke teacher of docs/analysis/ltr_collapse.py (syn-sentiment, seed 1), then 2-layer random-init
students, each for 3 and for 6 epochs (the learning-rate schedule spans the run, so a 6-epoch run's first
3 epochs are not the 3-epoch run): `ckd-ltr` at the recipe's weights, `ckd-ltr` with both LTR weights x0.01,
`ckd-ltr` with only the LTR pair term, and `kd`. Prints, per run, the weighted terms it trained with (read
back from its record), and after each epoch its dev accuracy and how many of the dev sentences it put in
each class.

An evaluation is on the plateau when one class gets more than PLATEAU_SHARE of the dev predictions (the
student then predicts (almost) one class for every input: 45.7 is all class 1, 54.3 all class 0). A run
"leaves the plateau in epoch N" when its evaluations after epochs N, N+1, ... up to the last are all off it;
"never" when its last one is on it. About a minute on one CPU core.

    python docs/analysis/ltr_plateau.py [WORK_DIR]
"""

from __future__ import annotations

import collections
import json
import sys
import tempfile
from pathlib import Path

import torch
from ltr_collapse import STUDENTS, distill_args, train_teacher  # docs/analysis/, this script's folder

import ckd.runs
from ckd.cli import main as cli
from ckd.methods import load_methods, resolve_method
from ckd.train import Trainer

PLATEAU_SHARE = 0.9
EPOCHS = (3, 6)
COUNTS: list[collections.Counter] = []  # per evaluation of the current run, filled by CountingTrainer


def _scaled_ltr(factor: float) -> list[str]:
    """method_options setting both LTR weights of `ckd-ltr` (smoke setting: no task row) to `factor` x the recipe's."""
    settings = resolve_method(load_methods(), "ckd-ltr", "syn-sentiment", use_task_settings=False).settings
    return [f"method_options.{key}={factor * settings[key]:g}" for key in ("ltr_pair", "ltr_triple")]


RUNS = {
    "ckd-ltr": STUDENTS["ckd-ltr"],
    "ckd-ltr, LTR weights x0.01": [*STUDENTS["ckd-ltr"], *_scaled_ltr(0.01)],
    "ckd-ltr, LTR pair only": STUDENTS["ckd-ltr, LTR pair only"],
    "kd": STUDENTS["kd"],
}


class CountingTrainer(Trainer):
    """The training loop, counting the dev predictions per class at each evaluation."""

    def evaluate(self):
        metrics, predictions = super().evaluate()
        COUNTS.append(collections.Counter(predictions["dev"]["predictions"]))
        return metrics, predictions


def on_plateau(counts: collections.Counter) -> bool:
    return max(counts.values()) > PLATEAU_SHARE * sum(counts.values())


def leaves_plateau(plateau: list[bool]) -> str:
    """The epoch (1-based) from which on every evaluation is off the plateau, "never" if the last one is on it."""
    if plateau[-1]:
        return "never"
    return str(max((epoch for epoch, on in enumerate(plateau, 1) if on), default=0) + 1)


def _leaves(epoch: str) -> str:
    return "still on the plateau after the last epoch" if epoch == "never" else f"leaves the plateau in epoch {epoch}"


def main(work: Path) -> None:
    torch.set_num_threads(1)
    teacher = train_teacher(work)
    ckd.runs.train = lambda setup: CountingTrainer(setup).run()
    blocks, summary = [], []
    for name, args in RUNS.items():
        row = {}
        for epochs in EPOCHS:
            COUNTS.clear()
            out = work / f"{name.replace(' ', '_').replace(',', '')}_{epochs}ep"
            assert cli(["distill", *distill_args(args, teacher, out, epochs=epochs)]) in (0, None)
            record = json.loads((out / "record.json").read_text())
            accuracy = [100 * entry["dev"]["dev"]["accuracy"] for entry in record["history"]]
            epoch = [entry["epoch"] for entry in record["history"]]
            assert epoch == list(range(1, epochs + 1)) and len(COUNTS) == epochs, (epoch, len(COUNTS))
            classes = sorted(set().union(*COUNTS))
            plateau = [on_plateau(c) for c in COUNTS]
            terms = ", ".join(f"{t['name']} {t['weight']:g}" for t in record["method_resolved"]["terms"])
            row[epochs] = (accuracy[-1], leaves_plateau(plateau))
            lines = [f"{name}, {epochs} epochs ({terms}): {_leaves(row[epochs][1])}",
                     f"  {'epoch':12s}" + "".join(f"{e:>9g}" for e in epoch),
                     f"  {'dev acc':12s}" + "".join(f"{a:9.1f}" for a in accuracy)]
            lines += [f"  {f'class {k}':12s}" + "".join(f"{c[k]:9d}" for c in COUNTS) for k in classes]
            lines.append(f"  {'plateau':12s}" + "".join(f"{'yes' if on else 'no':>9s}" for on in plateau))
            blocks.append("\n".join(lines))
        summary.append(f"{name:28s}" + "".join(f"{row[e][0]:11.1f}{row[e][1]:>8s}" for e in EPOCHS))
    print("\n\n".join(blocks))
    print("\nfinal dev accuracy and the epoch the run leaves the plateau in, per run length:")
    print(f"{'run (syn-sentiment, seed 1)':28s}" + "".join(f"{f'acc {e} ep':>11s}{'leaves':>8s}" for e in EPOCHS))
    print("\n".join(summary))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="ltr-plateau-")))
