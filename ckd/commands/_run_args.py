"""What the commands that take a run config share: a YAML file plus key=value overrides."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from ckd.config import resolve_config

OVERRIDE_HELP = "overrides as dotted key=value, values parsed as YAML (e.g. train.lr=3e-5 data.max_train_examples=500)"


def add_parser(subparsers, name: str, doc: str, help_text: str, example: str) -> argparse.ArgumentParser:
    """A sub-command parser taking -c CONFIG, overrides and --print-config."""
    parser = subparsers.add_parser(
        name, help=help_text, description=doc.split("`: ", 1)[1], epilog=example,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """-c CONFIG, KEY=VALUE overrides and --print-config on `parser`."""
    parser.add_argument("-c", "--config", help="run config (YAML); keys may also be given as overrides")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDE_HELP)
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def add_list_methods(parser: argparse.ArgumentParser, what: str = "methods in the methods file") -> None:
    parser.add_argument("--list-methods", action="store_true", help=f"list the {what} and exit")


def print_methods(methods_file) -> int:
    """--list-methods: each method of `methods_file` (None: the task methods file) with its description."""
    from ckd.methods import load_methods

    methods = load_methods(methods_file)["methods"]
    width = max(map(len, methods), default=0) + 2
    for name, entry in methods.items():
        print(f"{name:{width}s}{entry.get('description', '')}")
    return 0


def print_config(config: dict[str, Any]) -> int:
    """--print-config: the resolved config as YAML on stdout."""
    yaml.safe_dump(config, sys.stdout, sort_keys=False)
    return 0


def resolved_config(kind: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """The resolved run config, or None after printing it for --print-config."""
    config = resolve_config(kind, args.config, args.overrides)
    if args.print_config:
        print_config(config)
        return None
    return config


def execute_run(kind: str, args: argparse.Namespace) -> int:
    config = resolved_config(kind, args)
    if config is None:
        return 0
    from ckd.runs import execute

    execute(kind, config, force=args.force)
    return 0
