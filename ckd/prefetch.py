"""Everything a study loads from the Hugging Face hub, fetched once and pinned.

Cluster compute nodes often have no internet. `ckd prefetch --configfile <study>.yaml` runs where
the hub is reachable (a login node, or the Snakemake `prefetch` rule, which runs there): it lists
every hub model, tokenizer and dataset the study's configs name, downloads each at its current
revision into the (shared) Hugging Face cache with `huggingface_hub.snapshot_download`, checks that
it loads, and writes a manifest:

    {"schema_version": 1, "study": "paper", "endpoint": "...", "items": [
        {"repo_id": "bert-base-uncased", "repo_type": "model", "revision": "<40-hex commit>",
         "roles": ["teacher bert-base"], "files": 7, "bytes": 1340000000, "allow_patterns": null}, ...]}

Jobs then run with HF_HUB_OFFLINE=1 and `$CKD_HUB_MANIFEST` naming that file: every hub id they
load resolves to the pinned snapshot in the local cache (`pinned_snapshot`), so all jobs of a study
read the same files, and an id the manifest lacks fails at once, naming the id and the command.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckd.errors import ConfigError, DataError, ModelError
from ckd.model_refs import is_hub_id

MANIFEST_ENV = "CKD_HUB_MANIFEST"
MANIFEST_FILE = "hub-manifest.json"
SCHEMA_VERSION = 1
# What a model needs to load (config, tokenizer, weights); other formats of the weights are not fetched.
MODEL_PATTERNS = ("*.json", "*.txt", "*.model", "*.safetensors")
GLUE_DATASET = "nyu-mll/glue"


@dataclass
class HubItem:
    """One hub repository a study reads; `roles` says who needs it (for messages and the manifest)."""

    repo_id: str
    repo_type: str = "model"                      # "model" or "dataset"
    roles: list[str] = field(default_factory=list)
    allow_patterns: list[str] | None = None       # None: MODEL_PATTERNS for models, everything for datasets

    @property
    def key(self) -> tuple[str, str]:
        return self.repo_type, self.repo_id


def prefetch_command(study_file: str | None = None) -> str:
    return f"ckd prefetch --configfile {study_file or '<study>.yaml'}"


def study_items(study: Mapping[str, Any], *, glue_dir: str | None = None) -> list[HubItem]:
    """The hub repositories a study's runs load: teacher and student models and tokenizers, and the
    GLUE dataset (only the configs of the study's tasks) when the data comes from the hub
    (`data.source: hub`, or `auto` with no GLUE folder given)."""
    items: dict[tuple[str, str], HubItem] = {}

    def add(repo_id: str, role: str, repo_type: str = "model", patterns: Iterable[str] | None = None) -> None:
        item = items.setdefault((repo_type, repo_id), HubItem(repo_id, repo_type))
        if role not in item.roles:
            item.roles.append(role)
        if patterns is not None:
            item.allow_patterns = sorted(set(item.allow_patterns or []) | set(patterns))

    for group, role in (("teachers", "teacher"), ("students", "student")):
        entries = study.get(group) or {}
        if not isinstance(entries, Mapping):
            raise ConfigError(f"study key {group!r} must be a mapping of name -> {{model: ...}}, got {entries!r}")
        for name, entry in entries.items():
            spec = (entry or {}).get("model") or {}
            for key in ("name_or_path", "tokenizer"):
                if is_hub_id(spec.get(key)):
                    add(spec[key], f"{role} {name} ({key})")
    source = (study.get("data") or {}).get("source", "auto")
    if source == "hub" or (source == "auto" and not (glue_dir or os.environ.get("GLUE_DIR"))):
        from ckd.data.tasks import get_task

        configs = sorted({get_task(t).hub_config for t in study.get("tasks") or [] if get_task(t).hub_config})
        if configs:
            add(GLUE_DATASET, f"data.source={source}: tasks {', '.join(configs)}", "dataset",
                ["README.md", *(f"{config}/*" for config in configs)])
    return sorted(items.values(), key=lambda item: item.key)


def _snapshot(item: HubItem, **kwargs) -> str:
    from huggingface_hub import snapshot_download

    patterns = item.allow_patterns if item.allow_patterns is not None else (
        list(MODEL_PATTERNS) if item.repo_type == "model" else None)
    return snapshot_download(item.repo_id, repo_type=item.repo_type, allow_patterns=patterns, **kwargs)


def verify(item: HubItem, path: str) -> None:
    """Load what was fetched the way a job will: config, tokenizer (when present) and weights of a
    model; every configuration of a dataset."""
    try:
        if item.repo_type == "model":
            from transformers import AutoConfig, AutoModel, AutoTokenizer

            AutoConfig.from_pretrained(path)
            if any(Path(path).glob("tokenizer*")) or any(Path(path).glob("vocab.*")):
                AutoTokenizer.from_pretrained(path)
            if any(Path(path).glob("*.safetensors")):
                AutoModel.from_pretrained(path)
        else:
            import datasets

            for pattern in item.allow_patterns or []:
                if pattern.endswith("/*"):
                    datasets.load_dataset(path, pattern[:-2])
    except Exception as exc:  # whatever the loader raises, the message names the item
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ModelError(f"prefetched {item.repo_type} {item.repo_id} does not load from {path}: {reason}") from None


def prefetch(items: list[HubItem], *, study: str, log=print) -> dict[str, Any]:
    """Download, verify and describe every item; returns the manifest (not yet written)."""
    from huggingface_hub import constants

    entries = []
    for number, item in enumerate(items, 1):
        log(f"[{number}/{len(items)}] {item.repo_type} {item.repo_id}  ({'; '.join(item.roles)})")
        try:
            path = _snapshot(item)
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ModelError(f"cannot download {item.repo_type} {item.repo_id} (needed by {'; '.join(item.roles)}): {reason}") from None
        verify(item, path)
        files = [p for p in Path(path).rglob("*") if p.is_file()]
        entries.append({
            "repo_id": item.repo_id, "repo_type": item.repo_type, "revision": Path(path).name, "roles": item.roles,
            "allow_patterns": item.allow_patterns, "files": len(files), "bytes": sum(p.stat().st_size for p in files),
        })
    return {"schema_version": SCHEMA_VERSION, "study": study, "endpoint": constants.ENDPOINT, "items": entries}


# ------------------------------------------------------------------ the job side


def load_manifest(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{MANIFEST_ENV}={path}: no such file; run `{prefetch_command()}` first") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"hub manifest {path} cannot be read ({exc}); run `{prefetch_command()}` again") from None
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION or not isinstance(manifest.get("items"), list):
        raise ModelError(f"hub manifest {path} is not a ckd prefetch manifest (schema {SCHEMA_VERSION}); run `{prefetch_command()}` again")
    return manifest


def _manifest_entry(repo_id: str, repo_type: str) -> tuple[str, dict, dict | None] | None:
    """(path, manifest, the entry of repo_id or None) under $CKD_HUB_MANIFEST; None without a manifest."""
    manifest_path = os.environ.get(MANIFEST_ENV)
    if not manifest_path:
        return None
    manifest = load_manifest(manifest_path)
    entry = next((e for e in manifest["items"] if e.get("repo_id") == repo_id and e.get("repo_type") == repo_type), None)
    return manifest_path, manifest, entry


def pinned_revision(repo_id: Any, repo_type: str = "model") -> str | None:
    """The commit `$CKD_HUB_MANIFEST` pins `repo_id` to (None without a manifest or for a non-hub reference)."""
    found = _manifest_entry(repo_id, repo_type) if is_hub_id(repo_id) else None
    return found[2]["revision"] if found and found[2] else None


def pinned_snapshot(repo_id: str, repo_type: str = "model") -> str | None:
    """The local snapshot folder of `repo_id` at the revision `$CKD_HUB_MANIFEST` pins, or None when no
    manifest is in use. An id the manifest lacks, or whose files are not in this machine's cache, is
    refused with the command that fetches it."""
    found = _manifest_entry(repo_id, repo_type)
    if found is None:
        return None
    manifest_path, manifest, entry = found
    study = manifest.get("study")
    fix = f"run `{prefetch_command(f'config/{study}.yaml' if study else None)}` where the hub is reachable"
    error = ModelError if repo_type == "model" else DataError
    if entry is None:
        raise error(f"{repo_type} {repo_id} is not in the prefetch manifest {manifest_path}: {fix}")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, repo_type=repo_type, revision=entry["revision"], local_files_only=True,
                                 allow_patterns=entry.get("allow_patterns") or (list(MODEL_PATTERNS) if repo_type == "model" else None))
    except Exception:
        raise error(
            f"{repo_type} {repo_id} at revision {entry['revision'][:12]} (pinned in {manifest_path}) is not in this machine's "
            f"Hugging Face cache (HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}): {fix} with the same HF_HOME"
        ) from None
