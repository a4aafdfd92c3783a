"""`ckd aggregate`: paper-style tables (CSV, Markdown, LaTeX) from a study's run records."""

from __future__ import annotations

import argparse

EXAMPLE = """example:
  ckd aggregate --study-dir results/smoke
  ckd aggregate --study-dir results/paper --score best --baseline kd --bootstrap 10000 --expected expected.json
Writes main, paper_delta, ablation, significance and selected_settings (grid search) as .csv/.md/.tex, plus missing.md,
one_class.md (runs predicting one class on a dev split), runs.csv and aggregate.json (the settings below, which the
notebooks read).
--expected: JSON list of {"task", "student", "method", "seed"[, "config_fingerprint"]} (teacher runs: method
"teacher"); config_fingerprint is what ckd.config.run_fingerprint gives for the run's command.
A record with another fingerprint is stale, one of a run the list does not name is no longer planned:
both are left out of the tables and listed in missing.md."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "aggregate", help="tables from a study's run records", description=__doc__.split("`: ")[1],
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--study-dir", required=True, help="results/<study>, holding teachers/ and runs/")
    parser.add_argument("--out", help="output folder (default: <study-dir>/tables)")
    from ckd.aggregate_settings import DEFAULTS

    parser.add_argument("--score", choices=("final", "best"), default=DEFAULTS["score"],
                        help="final checkpoint or best-on-dev checkpoint (default: %(default)s)")
    parser.add_argument("--reference", help="published numbers (default: the packaged ckd/resources/paper_dev.csv)")
    parser.add_argument("--baseline", default=DEFAULTS["baseline"],
                        help="method the significance table compares against (default: %(default)s)")
    parser.add_argument("--bootstrap", type=int, default=DEFAULTS["bootstrap"], metavar="B",
                        help="bootstrap draws (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="random seed of the bootstrap (default: %(default)s)")
    parser.add_argument("--alternative", choices=("greater", "two-sided"), default=DEFAULTS["alternative"],
                        help="one-sided (method beats the baseline) or two-sided test (default: %(default)s)")
    parser.add_argument("--expected", help="JSON list of the study's expected runs, for missing.md: records of runs it "
                        "does not list are left out; entries with a config_fingerprint also mark records made with "
                        "another config as stale")
    parser.add_argument("--include-stale", action="store_true",
                        help="tabulate records whose config_fingerprint differs from the --expected one (default: leave them out)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from ckd.aggregate import aggregate_study

    written = aggregate_study(
        args.study_dir, args.out, score=args.score, reference=args.reference, baseline=args.baseline,
        n_boot=args.bootstrap, seed=args.seed, alternative=args.alternative, expected=args.expected,
        include_stale=args.include_stale,
    )
    for path in written:
        print(path)
    return 0
