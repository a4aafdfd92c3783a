"""`ckd select`: pick a grid search's winning setting from its search runs' records (ckd.search)."""

from __future__ import annotations

import argparse

EXAMPLE = """example:
  ckd select --plan results/tuned/search/plan/rte/3L-384/kd.json \\
      --out-config results/tuned/search/selected/rte/3L-384/kd.yaml --out results/tuned/search/selected/rte/3L-384/kd.json
The plan (written by the workflow) lists each grid point's runs; the point with the best mean over the
search seeds of the task's selection metric on the selection split wins (ties: the point declared first).
--out-config holds the winner's method_options for `ckd distill -c`; --out holds every point's scores."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "select", help="pick the best grid point of a search", description=__doc__.split("`: ")[1],
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--plan", required=True, help="the search plan of one task, student and method (JSON)")
    parser.add_argument("--score", choices=("final", "best"), default="final",
                        help="score each search run by its final checkpoint or its best one on the selection split (default: final)")
    parser.add_argument("--out-config", required=True, help="where to write the selected settings as a run config (YAML)")
    parser.add_argument("--out", required=True, help="where to write every point's scores and the choice (JSON)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from ckd.search import read_plan, select, write_selection

    summary = select(read_plan(args.plan), args.score)
    write_selection(summary, args.out_config, args.out)
    print(f"{summary['task']}/{summary['student']}/{summary['method']}: selected {summary['selected']} "
          f"(mean {summary['split']} {summary['metric']} {summary['selected_mean']:.4f} over {len(summary['points'][0]['seeds'])} seeds)")
    return 0
