"""`ckd evaluate`: score a saved model on a task's dev split(s) and print (or write) the metrics."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="evaluate a saved model on dev data", description=__doc__.split("`: ")[1])
    parser.add_argument("--model", required=True, help="saved model folder (a run's model/), hub id or package:<module>")
    parser.add_argument("--task", required=True, help="task name, e.g. rte, sst2, syn-sentiment")
    parser.add_argument("--split", action="append", help="dev split (repeatable); default: all of the task's dev splits")
    parser.add_argument("--source", default="auto", choices=("auto", "glue_dir", "hub", "synthetic"), help="data source")
    parser.add_argument("--glue-dir", help="glue_data folder (default $GLUE_DIR)")
    parser.add_argument("--max-examples", type=int, help="evaluate on a seeded subset of this size")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", help="also write the metrics to this JSON file")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from ckd.atomic import atomic_write_json
    from ckd.data import encode_split, get_task, load_split
    from ckd.evaluation import evaluate
    from ckd.models import build_model

    task = get_task(args.task)
    splits = args.split or list(task.dev_splits)
    # refused unless the checkpoint carries a trained head for the task; its columns are mapped to the
    # task's labels by name (ckd.labels), so argmax index k is task label k
    built = build_model({"name_or_path": args.model}, task=task, role="model", head="trained")
    data = {
        split: encode_split(
            load_split(task, split, source=args.source, glue_dir=args.glue_dir, max_examples=args.max_examples),
            built.tokenizer, args.max_length, task,
        )
        for split in splits
    }
    metrics, _, ms = evaluate(built.model, data, task, args.batch_size)
    result = {"model": args.model, "task": task.name, "labels": built.head.get("labels"), "metrics": metrics, "eval_ms_per_example": ms}
    print(json.dumps(result, indent=2))
    if args.out:
        atomic_write_json(args.out, result)
    return 0
