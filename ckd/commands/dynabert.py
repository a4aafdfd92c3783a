"""`ckd dynabert`: DynaBERT (width- and depth-adaptive students) with its own or CKD's distillation objective."""

from __future__ import annotations

import argparse

from ckd.commands._run_args import add_config_arguments, add_list_methods, print_config, print_methods

EXAMPLE = """stages (each takes -c CONFIG and key=value overrides; docs/dynabert.md):
  ckd dynabert rewire task=rte teacher.name_or_path=T/model output_dir=D/rewired
  ckd dynabert train-width task=rte method=dynabert-ckd teacher.name_or_path=T/model \\
      student.name_or_path=D/rewired/model output_dir=D/width
  ckd dynabert train-depth task=rte method=dynabert-ckd teacher.name_or_path=D/width/model \\
      student.name_or_path=D/width/model output_dir=D/depth
  ckd dynabert evaluate task=rte model.name_or_path=D/depth/model --output D/eval.json
  ckd dynabert export task=rte model.name_or_path=D/depth/model --output D/export
  ckd dynabert report --study-dir results/dynabert-small
Objectives live in ckd/resources/dynabert_methods.yaml (`ckd dynabert train-width --list-methods`)."""

STAGES = {
    "rewire": "score heads and FFN neurons of a fine-tuned teacher on training data and reorder them",
    "train-width": "train DynaBERT_W: every width distilled from the fixed teacher",
    "train-depth": "train DynaBERT: every (width, depth) distilled from DynaBERT_W",
    "evaluate": "dev metrics of every (width, depth) sub-network",
    "export": "save every (width, depth) as a standalone smaller model, with parameters and CPU latency",
}


def register(subparsers) -> None:
    parser = subparsers.add_parser("dynabert", help="DynaBERT stages (rewire, train, evaluate, export, report)",
                                   description=__doc__.split("`: ", 1)[1], epilog=EXAMPLE,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    stages = parser.add_subparsers(dest="stage", metavar="STAGE")
    stages.required = True
    for name, text in STAGES.items():
        sub = stages.add_parser(name, help=text, description=text)
        add_config_arguments(sub)
        if name in ("evaluate", "export"):
            sub.add_argument("--output", required=True, help="evaluate: a JSON file; export: a folder")
        else:
            sub.add_argument("--force", action="store_true", help="redo a finished stage in output_dir")
        if name.startswith("train"):
            add_list_methods(sub, "DynaBERT objectives")
    report = stages.add_parser("report", help="width x depth tables and score-vs-size plots of a study",
                               description="width x depth tables and score-vs-size plots of a study's DynaBERT runs")
    report.add_argument("--study-dir", required=True, help="results/<study>")
    report.add_argument("--output", help="folder for the tables and plots (default: <study-dir>/dynabert/report)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    if args.stage == "report":
        from ckd.dynabert.report import write_report

        write_report(args.study_dir, args.output)
        return 0
    if getattr(args, "list_methods", False):
        from ckd.dynabert.config import default_methods_file

        return print_methods(default_methods_file())
    from ckd.dynabert.config import resolve

    config = resolve(args.config, args.overrides)
    if args.print_config:
        return print_config(config)
    from ckd.dynabert import stages

    if args.stage == "rewire":
        stages.rewire(config, force=args.force)
    elif args.stage.startswith("train-"):
        stages.train_stage(args.stage.split("-", 1)[1], config, force=args.force)
    elif args.stage == "evaluate":
        stages.evaluate_subnets(config, args.output)
    else:
        stages.export_subnets(config, args.output)
    return 0
