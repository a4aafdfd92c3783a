"""`ckd prefetch`: download and pin every hub model, tokenizer and dataset a study needs (see ckd.prefetch)."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLE = """example (on a login node with internet, before submitting the study):
  ckd prefetch --dry-run --configfile config/paper.yaml     list what the study needs
  ckd prefetch --configfile config/paper.yaml               fetch it into $HF_HOME and write the manifest
Jobs then run with HF_HUB_OFFLINE=1 and CKD_HUB_MANIFEST=<manifest> (the workflow sets both)."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prefetch", help="fetch and pin every hub model, tokenizer and dataset of a study",
        description=__doc__.split("`: ")[1], epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--configfile", required=True, help="the study file (config/<study>.yaml)")
    parser.add_argument("--manifest", help="where to write the manifest (default: <results_dir>/<study>/hub-manifest.json)")
    parser.add_argument("--dry-run", action="store_true", help="list the hub ids and what needs them; fetch nothing")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from ckd.atomic import atomic_write_json
    from ckd.config import load_yaml
    from ckd.errors import ConfigError
    from ckd.prefetch import MANIFEST_FILE, prefetch, study_items

    study = load_yaml(args.configfile)
    if not isinstance(study, dict) or not study.get("study"):
        raise ConfigError(f"{args.configfile}: not a study file (it needs a 'study' name, like config/paper.yaml)")
    items = study_items(study)
    if args.dry_run:
        for item in items:
            print(f"{item.repo_type:8s} {item.repo_id:45s} {'; '.join(item.roles)}")
        print(f"{len(items)} hub repositories for study {study['study']!r} (nothing fetched: --dry-run)")
        return 0
    manifest_path = Path(args.manifest or Path(study.get("results_dir", "results")) / study["study"] / MANIFEST_FILE)
    manifest = prefetch(items, study=study["study"])
    atomic_write_json(manifest_path, manifest)
    total = sum(entry["bytes"] for entry in manifest["items"])
    print(f"prefetched {len(items)} hub repositories ({total / 2**20:.1f} MiB), pinned in {manifest_path}")
    return 0
