"""`ckd plots`: figures (PNG and PDF) from a study's run records."""

from __future__ import annotations

import argparse
import sys

EXAMPLE = """example:
  ckd plots --study-dir results/smoke
Ablation bars, score vs student size, loss-weight sweeps, training curves, score vs cost.
A figure with nothing to show is skipped with a message on stderr."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plots", help="figures from a study's run records", description=__doc__.split("`: ")[1],
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--study-dir", required=True, help="results/<study>, holding teachers/ and runs/")
    parser.add_argument("--out", help="output folder (default: <study-dir>/plots)")
    parser.add_argument("--score", choices=("final", "best"), default="final",
                        help="final checkpoint or best-on-dev checkpoint (default: final)")
    parser.add_argument("--expected", help="the study's expected runs (as for ckd aggregate): records whose "
                        "config_fingerprint differs are stale and left out")
    parser.add_argument("--include-stale", action="store_true", help="draw stale records too")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from ckd.plots import plot_study

    written = plot_study(args.study_dir, args.out, score=args.score, log=lambda m: print(m, file=sys.stderr),
                         expected=args.expected, include_stale=args.include_stale)
    for path in written:
        print(path)
    return 0
