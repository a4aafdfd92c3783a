"""`python -m benchmarks` (`make bench`): CKD relation terms against the dense baseline, and whole
training steps of every method, on CPU and (when one is visible) on a CUDA device.

Each section prints medians over repeats, measured in this one run: ratios against the dense baseline
and against the kd step are never taken from numbers measured elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict

import torch

from benchmarks import report
from benchmarks.steps import METHODS, StepSizes, run_steps
from benchmarks.terms import TERMS, TermSizes, run_terms

QUICK_TERMS = TermSizes(batch=4, length=16, teacher_width=24, student_width=16, teacher_layers=4, student_layers=2, window=5)
QUICK_STEPS = StepSizes(batch=4, length=16, student_layers=2)


def quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()
    except ImportError:
        pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    d, s = TermSizes(), StepSizes()
    p.add_argument("--batch", type=int, default=d.batch, help="sentences per batch (terms and steps)")
    p.add_argument("--length", type=int, default=d.length, help="padded length n (terms and steps)")
    p.add_argument("--full-length", action="store_true", help="every sentence n tokens (default: lengths n/2..n)")
    p.add_argument("--teacher-width", type=int, default=d.teacher_width)
    p.add_argument("--student-width", type=int, default=d.student_width)
    p.add_argument("--teacher-layers", type=int, default=d.teacher_layers)
    p.add_argument("--student-layers", type=int, default=d.student_layers)
    p.add_argument("--window", type=int, default=d.window, help="WR triple window")
    p.add_argument("--step-teacher", default=s.teacher, help="teacher of the step benchmark (a model reference)")
    p.add_argument("--step-student-layers", type=int, default=s.student_layers, help="student = the teacher's first k layers")
    p.add_argument("--terms", default=",".join(TERMS), help="comma-separated rows of the term benchmark")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods of the step benchmark")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats of our terms")
    p.add_argument("--dense-repeats", type=int, default=3, help="timed repeats of the dense baseline")
    p.add_argument("--step-repeats", type=int, default=3, help="timed repeats of each training step")
    p.add_argument("--dense-memory-gb", type=float, default=None,
                   help="run a dense term at a smaller batch (scaled up) when its estimated peak exceeds this "
                        "(default: 2 on CPU, half the free memory on CUDA)")
    p.add_argument("--cache-dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="the teacher cache's stored precision in the agreement section")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (probes use the same)")
    p.add_argument("--sections", default="terms,steps,cache,agreement",
                   help="comma-separated: terms, steps, cache (teacher cache sizes, from $GLUE_DIR's lengths), "
                        "agreement (cached vs live teacher losses on real $GLUE_DIR batches)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CPU, then CUDA when visible; cpu or cuda: that one only")
    p.add_argument("--bf16", action="store_true", help="CUDA section under bf16 autocast")
    p.add_argument("--no-memory", action="store_true", help="skip peak-memory measurements")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (keeps the harness working in tests)")
    p.add_argument("--json", help="also write all results to this file")
    return p.parse_args(argv)


def sizes_from(args) -> tuple[TermSizes, StepSizes]:
    if args.quick:
        return QUICK_TERMS, QUICK_STEPS
    terms = TermSizes(
        batch=args.batch, length=args.length, teacher_width=args.teacher_width, student_width=args.student_width,
        teacher_layers=args.teacher_layers, student_layers=args.student_layers, window=args.window,
        full_length=args.full_length,
    )
    steps = StepSizes(batch=args.batch, length=args.length, teacher=args.step_teacher,
                      student_layers=args.step_student_layers, full_length=args.full_length)
    return terms, steps


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def section(device: torch.device, args, term_sizes: TermSizes, step_sizes: StepSizes, out: dict) -> None:
    autocast = torch.bfloat16 if (args.bf16 and device.type == "cuda") else None
    precision = "bfloat16" if autocast else "float32"
    if device.type == "cuda":
        where = f"CUDA {torch.cuda.get_device_name(device)}, {'bf16 autocast' if autocast else 'fp32'}; event-timed medians; " \
                "memory: allocator peak above what was allocated before the call"
    else:
        where = (f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} torch thread(s), fp32; "
                 "process-CPU-time medians; memory: peak RSS growth in a fresh process")
    print(f"\n=== {device.type.upper()} section: {where}")
    print(f"    {load()} at start")
    repeats = 1 if args.quick else args.repeats
    dense_repeats = 1 if args.quick else args.dense_repeats
    step_repeats = 1 if args.quick else args.step_repeats
    memory = not args.no_memory
    sections = set(args.sections.split(","))
    result = out.setdefault(device.type, {})
    if args.dense_memory_gb is not None:
        dense_limit_mb = args.dense_memory_gb * 1024
    else:
        dense_limit_mb = 2048 if device.type == "cpu" else None  # None: half the free device memory
    if "terms" in sections:
        print(f"\nCKD relation terms, forward + backward: {term_sizes.describe()}")
        print(f"  ours: ckd.losses.relations; dense: ckd.losses.relations_dense (the formulas as explicit tensors; the fast engine is tested equal to it in tests/test_relations.py); "
              f"{repeats} / {dense_repeats} repeats; student gradients preallocated")
        started = time.time()
        rows = run_terms(term_sizes, device=device, repeats=repeats, dense_repeats=dense_repeats,
                         dense_limit_mb=dense_limit_mb, threads=args.threads, memory=memory,
                         autocast_dtype=autocast, terms=[t for t in args.terms.split(",") if t],
                         log=lambda m: print(m, file=sys.stderr, flush=True))
        lines, targets = report.term_table(rows, precision)
        print("\n".join(lines))
        print(f"  ({time.time() - started:.0f} s)")
        result["terms"] = {"sizes": asdict(term_sizes), "rows": rows, "targets": targets}
        out.setdefault("targets", []).extend(f"[{device.type}] {t.strip()}" for t in targets)
    if "steps" in sections:
        started = time.time()
        methods = [m for m in args.methods.split(",") if m]
        rows, described = run_steps(step_sizes, device=device, repeats=step_repeats, threads=args.threads, memory=memory,
                                    autocast_dtype=autocast, methods=methods,
                                    log=lambda m: print(m, file=sys.stderr, flush=True))
        print(f"\nTraining steps (median of {step_repeats}): {described}")
        lines, targets = report.step_table(rows)
        print("\n".join(lines))
        print(f"  ({time.time() - started:.0f} s)")
        result["steps"] = {"sizes": asdict(step_sizes), "rows": rows, "targets": targets}
        out.setdefault("targets", []).extend(f"[{device.type}] {t.strip()}" for t in targets)
    print(f"    {load()} at end")


def cache_section(args, out: dict) -> None:
    from benchmarks.cache_size import run_cache_sizes

    print("\n=== Teacher cache size (ckd cache-teacher; benchmarks/cache_size.py for the sizes and sources)")
    lines, targets, results = run_cache_sizes(quick=args.quick)
    print("\n".join(lines))
    out["cache"] = results
    out.setdefault("targets", []).extend(f"[cache] {t.strip()}" for t in targets)


def agreement_section(args, out: dict) -> None:
    from benchmarks.cache_agreement import run_agreement

    print("\n=== Teacher cache agreement (benchmarks/cache_agreement.py)")
    lines, targets, results = run_agreement(quick=args.quick, dtype=args.cache_dtype)
    print("\n".join(lines))
    out["agreement"] = results
    out.setdefault("targets", []).extend(f"[cache] {t.strip()}" for t in targets)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_transformers()
    torch.set_num_threads(args.threads)
    term_sizes, step_sizes = sizes_from(args)
    print(f"ckd benchmark: torch {torch.__version__}, python {platform.python_version()}, {load()}")
    out: dict = {"args": vars(args)}
    if args.device in ("auto", "cpu"):
        section(torch.device("cpu"), args, term_sizes, step_sizes, out)
    if "cache" in set(args.sections.split(",")):
        cache_section(args, out)
    if "agreement" in set(args.sections.split(",")):
        agreement_section(args, out)
    if args.device in ("auto", "cuda"):
        if torch.cuda.is_available():
            section(torch.device("cuda"), args, term_sizes, step_sizes, out)
        else:
            print("\n=== CUDA section: skipped, no CUDA device is visible (run `make bench` on a GPU machine; "
                  "BENCH_ARGS=--bf16 for bf16 autocast)")
    print("\nTargets (issues #7 and #15):")
    for line in out.get("targets", []):
        print(f"  {line}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
