"""Arguments shared by the commands that take a run config: a YAML file plus key=value overrides."""

from __future__ import annotations

import argparse

OVERRIDE_HELP = "overrides as dotted key=value, values parsed as YAML (e.g. train.lr=3e-5 data.max_train_examples=500)"


def add_run_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help="run config (YAML); keys may also be given as overrides")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDE_HELP)
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
