"""`ckd cache-logits`: compute a teacher's logits on a task's training set once, for logit-only methods."""

from __future__ import annotations

import argparse

from ckd.commands._run_args import add_parser, resolved_config

EXAMPLE = """example:
  ckd cache-logits -c distill.yaml --out results/try/rte-teacher/train_logits.pt
  ckd distill -c distill.yaml method=kd teacher_logits=results/try/rte-teacher/train_logits.pt
The file records the training data's fingerprint; distill refuses a file made for other data."""


def register(subparsers) -> None:
    parser = add_parser(subparsers, "cache-logits", __doc__, "cache a teacher's training-set logits", EXAMPLE)
    parser.add_argument("--out", required=True, help="where to write the logits file (.pt)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    config = resolved_config("cache_logits", args)
    if config is None:
        return 0
    from ckd.data import encode_split, get_task, load_split
    from ckd.data.loading import data_fingerprint
    from ckd.models import build_model
    from ckd.teacher_cache import compute_teacher_logits, save_teacher_logits

    if config["train"]["threads"]:
        import torch

        torch.set_num_threads(int(config["train"]["threads"]))
    task = get_task(config["task"])
    data = config["data"]
    options = {"synthetic_sizes": {"train": data["synthetic_train_size"]}} if data["synthetic_train_size"] else {}
    examples = load_split(
        task, "train", source=data["source"], glue_dir=data["glue_dir"], max_examples=data["max_train_examples"],
        subsample_seed=data["subsample_seed"], **options,
    )
    teacher = build_model(config["teacher"], num_labels=task.num_labels, regression=task.is_regression, role="teacher")
    encoded = encode_split(examples, teacher.tokenizer, int(data["max_length"]), task)
    logits = compute_teacher_logits(teacher.model, encoded, int(config["train"]["eval_batch_size"]))
    save_teacher_logits(args.out, logits, data_fingerprint(examples), str(config["teacher"]["name_or_path"]))
    print(f"wrote {tuple(logits.shape)} teacher logits to {args.out}")
    return 0
