"""`ckd cache-logits`: compute a teacher's logits on a task's training set once, for logit-only methods."""

from __future__ import annotations

import argparse
import contextlib
import signal
from typing import Iterator

from ckd.commands._run_args import add_parser, resolved_config

EXAMPLE = """example:
  ckd cache-logits -c distill.yaml --out results/try/rte-teacher/train_logits.pt
  ckd distill -c distill.yaml method=kd teacher_logits=results/try/rte-teacher/train_logits.pt
The file is keyed on everything that decides its contents (task, labels, training data, tokenizer,
max_length, teacher weights, precision); distill refuses a file made for anything else and prints
the command that rebuilds it. A temporary a killed earlier run left beside --out is removed."""


def register(subparsers) -> None:
    parser = add_parser(subparsers, "cache-logits", __doc__, "cache a teacher's training-set logits", EXAMPLE)
    parser.add_argument("--out", required=True, help="where to write the logits file (.pt)")
    parser.set_defaults(handler=handle)


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM raises SystemExit(143), so the atomic writer removes its temporary before the process ends."""

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def handle(args: argparse.Namespace) -> int:
    config = resolved_config("cache_logits", args)
    if config is None:
        return 0
    from ckd.teacher_cache import cache_teacher_logits

    with _sigterm_exits():
        logits = cache_teacher_logits(config, args.out)
    print(f"wrote {tuple(logits.shape)} teacher logits to {args.out}")
    return 0
