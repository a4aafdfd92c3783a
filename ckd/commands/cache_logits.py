"""`ckd cache-logits`: compute a teacher's logits on a task's training set once, for logit-only methods."""

from __future__ import annotations

import argparse

from ckd.commands._run_args import add_parser, resolved_config

EXAMPLE = """example:
  ckd cache-logits -c distill.yaml --out results/try/rte-teacher/train_logits.pt
  ckd distill -c distill.yaml method=kd teacher_logits=results/try/rte-teacher/train_logits.pt
The file is keyed on everything that decides its contents (task, labels, training data, tokenizer,
max_length, teacher weights, precision); distill refuses a file made for anything else and prints
the command that rebuilds it. SIGTERM/Ctrl-C during the write wait for it to finish; a temporary
that a killed (SIGKILL) earlier run left beside --out is removed by the next run."""


def register(subparsers) -> None:
    parser = add_parser(subparsers, "cache-logits", __doc__, "cache a teacher's training-set logits", EXAMPLE)
    parser.add_argument("--out", required=True, help="where to write the logits file (.pt)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    config = resolved_config("cache_logits", args)
    if config is None:
        return 0
    from ckd.teacher_cache import cache_teacher_logits

    logits = cache_teacher_logits(config, args.out)
    print(f"wrote {tuple(logits.shape)} teacher logits to {args.out}")
    return 0
