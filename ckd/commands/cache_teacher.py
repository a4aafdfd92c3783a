"""`ckd cache-teacher`: run a teacher once over a task's training set and store what the methods read from it."""

from __future__ import annotations

import argparse

from ckd.commands._run_args import add_parser, resolved_config

EXAMPLE = """example:
  ckd cache-teacher -c distill.yaml --methods kd,pkd,minilm,ckd,ckd-full-triple --student-layers 6,4 \\
      --out results/try/rte-teacher/teacher_cache
  ckd distill -c distill.yaml method=ckd teacher_cache=results/try/rte-teacher/teacher_cache
One cache per (task, teacher) serves every listed method and student depth (the layer maps decide
which teacher layers it holds); see ckd/teacher_store.py for its contents and layout. TinyBERT
stage 1, DistilBERT's cosine term and the released WR-triple windows are not cached: their runs keep
the live teacher. distill refuses a cache made for another teacher, tokenizer, data, max_length,
precision or layer map in one line, with the command that rebuilds it. A killed build resumes from
its finished shards when re-run."""


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer counts, e.g. 6,4; got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive layer counts, e.g. 6,4; got {text!r}")
    return values


def _specs(text: str) -> list:
    import json

    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a JSON list of student model specs, got {text!r}") from None
    if not isinstance(value, list) or not value:
        raise argparse.ArgumentTypeError(f"expected a non-empty JSON list of student model specs, got {text!r}")
    return value


def register(subparsers) -> None:
    parser = add_parser(subparsers, "cache-teacher", __doc__, "cache what methods read from a teacher", EXAMPLE)
    parser.add_argument("--methods", required=True, help="comma-separated methods the cache serves (methods file names)")
    depths = parser.add_mutually_exclusive_group(required=True)
    depths.add_argument("--student-layers", type=_ints, help="comma-separated student depths (for the layer maps)")
    depths.add_argument("--students", type=_specs,
                        help='the students as a JSON list of model specs, e.g. \'[{"name_or_path": "...", "layers": 6}]\' (their depths decide the layer maps)')
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                        help="stored precision (float16/bfloat16: relative error <= 2^-11 / 2^-8 per value)")
    parser.add_argument("--shard-examples", type=int, default=2048, help="examples per shard (rounded to eval batches)")
    parser.add_argument("--out", required=True, help="the cache folder")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    config = resolved_config("cache_logits", args)
    if config is None:
        return 0
    from ckd.teacher_store import cache_teacher, student_depth

    methods = [m for m in args.methods.split(",") if m.strip()]
    depths = args.student_layers or sorted({student_depth(spec) for spec in args.students})
    manifest = cache_teacher(config, args.out, methods, depths, dtype=args.dtype, shard_examples=args.shard_examples)
    print(f"wrote the teacher cache of {manifest['examples']} examples ({manifest['bytes'] / 2**20:.1f} MiB, "
          f"{manifest['store_dtype']}; {', '.join(manifest['fields'])}) to {args.out}")
    return 0
