"""`ckd estimate`: jobs, hours and disk of a study before it is submitted, from Snakemake's job plan and the measured cost of an earlier study."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

from ckd.atomic import atomic_write_text

EXAMPLE = """example:
  ckd estimate --configfile config/smoke.yaml --measured results/smoke
  ckd estimate --configfile config/paper.yaml --measured results/glue-small/tables/cost_jobs.csv --all
The plan is `snakemake --summary` of the study (the jobs still to run; --all: every job). Each training job
gets the mean wall time and disk of the measured jobs of the same rule, task, model and method (else same
rule and method, else same rule): the measured study's benchmark files (tables/cost_jobs.csv, ckd.cost), or
the wall times in its records when it has none. GPU- and CPU-hours use the study's resources (gpu, threads)."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "estimate", help="jobs, hours and disk of a study before submission",
        description=__doc__.split("`: ")[1], epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--configfile", required=True, help="the study file (as for snakemake --configfile)")
    parser.add_argument("--measured", required=True,
                        help="a study folder that ran (results/<study>) or its tables/cost_jobs.csv")
    parser.add_argument("--all", action="store_true", help="every job of the study, also those already done")
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="passed to snakemake --config (e.g. results_dir=/scratch/results)")
    parser.add_argument("--snakefile", default="Snakefile", help="the workflow (default: ./Snakefile)")
    parser.add_argument("--json", help="also write the estimate (totals and per job) to this file")
    parser.set_defaults(handler=handle)


def _summary(args) -> str:
    from ckd.cost import CostError

    snakefile = Path(args.snakefile)
    if not snakefile.is_file():
        raise CostError(f"--snakefile {snakefile}: no such file; run ckd estimate from the repository root or "
                        "give --snakefile")
    if not Path(args.configfile).is_file():
        raise CostError(f"--configfile {args.configfile}: no such file")
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--configfile", args.configfile,
               "--summary", "--quiet", "all"]
    if args.config:
        command += ["--config", *args.config]
    done = subprocess.run(command, cwd=snakefile.resolve().parent, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise CostError(f"snakemake --summary --configfile {args.configfile} failed: {last}")
    return done.stdout


def _mb(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f} MB"


def handle(args: argparse.Namespace) -> int:
    import yaml

    from ckd.cost import estimate, estimate_summary, planned_jobs, reference_costs

    reference = reference_costs(args.measured)  # bad input is refused before snakemake runs
    study = yaml.safe_load(Path(args.configfile).read_text()) or {}
    planned, others = planned_jobs(_summary(args), all_jobs=args.all)
    jobs = estimate(planned, reference, study.get("resources") or {}, source=f"--measured {args.measured}")
    totals = estimate_summary(jobs) if len(jobs) else None
    what = "every job" if args.all else "jobs still to run"
    print(f"study {study.get('study', '?')} ({args.configfile}), {what}, timed from {args.measured}:")
    if totals is None:
        print("  no training job to run")
    else:
        for rule, group in jobs.groupby("rule", sort=False):
            matches = ", ".join(f"{n} {m}" for m, n in group["match"].value_counts().items())
            print(f"  {rule:<22} {len(group):>5} jobs  {group['wall_s'].sum() / 3600:9.3f} h  (matched: {matches})")
        print(f"  total: {totals['jobs']} training jobs, {totals['wall_h']:.3f} wall hours (sum over jobs), "
              f"{totals['gpu_h']:.3f} GPU-hours, {totals['cpu_h_alloc']:.3f} CPU-hours allocated")
        print(f"  disk: checkpoints and models {_mb(totals['checkpoint_disk_mb'])}, "
              f"teacher caches {_mb(totals['cache_disk_mb'])}")
    if others:
        print("  not timed (rules without a benchmark file in ckd.paths.BENCHMARK): " + ", ".join(others))
    if args.json:
        atomic_write_text(args.json, json.dumps({"totals": totals, "not_timed": others,
                                                 "jobs": jobs.to_dict("records")}, indent=1))
    return 0
