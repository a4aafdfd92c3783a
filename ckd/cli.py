"""The `ckd` command. Each sub-command lives in `ckd/commands/<name>.py` and exposes `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import sys

from ckd import __version__
from ckd.errors import CkdError

COMMAND_MODULES = ("finetune", "distill", "evaluate", "cache_logits", "cache_teacher", "aggregate", "plots", "select", "prefetch", "pack_corpus", "general_distill", "dynabert", "estimate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ckd",
        description="Contextual Knowledge Distillation (CKD) and baselines on GLUE: fine-tune, distil, evaluate, aggregate.",
    )
    parser.add_argument("--version", action="version", version=f"ckd {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"ckd.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"ckd.commands.{name}":
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except CkdError as exc:
        print(f"ckd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ckd {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
