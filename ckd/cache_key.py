"""Keys for ckd's derived caches: teacher logits (ckd.teacher_cache) and the teacher cache (ckd.teacher_store).

A cache is only valid for the exact inputs that produced it, so every cache file carries a KEY: an
ordered mapping of every field that determines its contents. A reader builds the key its run needs
and `read_cache` refuses a file whose key differs, in one line naming the first differing field
(file's value vs the run's) and the command that rebuilds the file. Fields of a teacher cache
(`teacher_cache_key`), in the order they are compared:

    format      the cache file format (CACHE_FORMAT), bumped whenever what ckd writes changes
    kind        what the cache holds, e.g. "teacher-logits"
    task        the task's canonical name
    labels      the task's label names in column order (the teacher's columns are mapped to them by name)
    data        fingerprint of the examples (ckd.data.loading.data_fingerprint: texts and labels, in order)
    examples    how many examples (rows)
    max_length  the tokenizer's truncation length
    tokenizer   content fingerprint of the tokenizer (`fingerprint_tokenizer`)
    inputs      fingerprint of the token ids the teacher read (`fingerprint_inputs`)
    teacher     content fingerprint of the teacher's weights and config (`fingerprint_model`), not its path
    precision   the precision the teacher ran at (fp32 | bf16 | fp16)

A later kind of cache adds its own fields through `teacher_cache_key(..., extra={...})` and uses the
same `write_cache`/`read_cache`; the teacher cache (kind "teacher-terms", a folder of memory-mapped
shards) keeps this key in its manifest and compares it with `check_key`. Fingerprints are sha256 hex digests; messages show their first 12 characters. What does not change
the contents (the teacher's path, the device, the time) goes into the file's `info`, not its key.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ckd.atomic import TMP_SUFFIX, atomic_write_bytes
from ckd.errors import CkdError

CACHE_FORMAT = "ckd-cache-v2"

# config entries that do not change what a model computes in eval mode (paths, versions, output switches, dropout)
_MODEL_CONFIG_NEUTRAL = {
    "_name_or_path", "transformers_version", "output_hidden_states", "output_attentions", "return_dict", "torch_dtype",
    "dtype", "_attn_implementation", "_attn_implementation_autoset", "_attn_implementation_internal", "_commit_hash",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "use_cache", "architectures",
}


class CacheError(CkdError):
    """A cache file cannot be used for this run (missing, unreadable, or made for other inputs)."""


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def fingerprint_model(model: torch.nn.Module) -> str:
    """sha256 over a model's config (minus _MODEL_CONFIG_NEUTRAL) and every state-dict tensor (name, dtype,
    shape, bytes). Two copies of the same weights in different folders agree; any changed weight differs."""
    digest = hashlib.sha256()
    config = {k: v for k, v in model.config.to_dict().items() if k not in _MODEL_CONFIG_NEUTRAL}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode("utf-8"))
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"\n{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def fingerprint_tokenizer(tokenizer: Any) -> str:
    """sha256 over what decides a tokenizer's ids: a fast tokenizer's full pipeline (normaliser,
    pre-tokeniser, vocabulary, post-processor, added tokens; not its transient truncation/padding
    state), else its vocabulary and lower-casing; plus the pad token id."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
    else:
        state = {"vocab": tokenizer.get_vocab(), "do_lower_case": getattr(tokenizer, "do_lower_case", None)}
    state["pad_token_id"] = tokenizer.pad_token_id
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def fingerprint_inputs(encoded: Any) -> str:
    """sha256 over an EncodedSplit's token ids and token types, row by row (the exact inputs a teacher reads)."""
    digest = hashlib.sha256()
    for rows in (encoded.input_ids, encoded.token_type_ids):
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        digest.update(lengths.tobytes())
        digest.update(np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum())).tobytes())
    digest.update(str(encoded.pad_token_id).encode("utf-8"))
    return digest.hexdigest()


def teacher_cache_key(
    kind: str, *, task: Any, teacher: torch.nn.Module, tokenizer: Any, encoded: Any, data_fingerprint: str,
    max_length: int, precision: str, extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The key of a cache of a teacher's outputs on `encoded` (see the module docstring for the fields).

    `extra`: further fields a kind of cache depends on (e.g. which layers a hidden-state cache holds),
    appended after the common ones and compared like them; values must be JSON-like.
    """
    common = {
        "format": CACHE_FORMAT,
        "kind": kind,
        "task": task.name,
        "labels": "regression" if task.is_regression else ",".join(task.labels),
        "data": data_fingerprint,
        "examples": len(encoded),
        "max_length": int(max_length),
        "tokenizer": fingerprint_tokenizer(tokenizer),
        "inputs": fingerprint_inputs(encoded),
        "teacher": fingerprint_model(teacher),
        "precision": str(precision),
    }
    clash = set(common).intersection(extra or {})
    if clash:
        raise ValueError(f"extra key field {sorted(clash)[0]!r} would replace a common one")
    return {**common, **dict(extra or {})}


def _shown(value: Any) -> str:
    text = str(value)
    if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
        return text[:12]
    return repr(value) if not isinstance(value, str) else text


# what a differing field means, for the message ("... was computed on other training data: ...")
_FIELD_MEANING = {
    "format": "by another ckd cache format", "kind": "for another kind of cache", "task": "for another task",
    "labels": "for another label order", "data": "on other training data", "examples": "on another number of examples",
    "max_length": "with another max_length", "tokenizer": "with another tokenizer", "inputs": "on other token ids",
    "teacher": "with another teacher (weights or config)", "precision": "at another precision",
}
_RESERVED = {"format", "key", "info", "tensor_names"}


def check_key(found: Mapping[str, Any], expected: Mapping[str, Any], *, path: str | Path, rebuild: str) -> None:
    """Raise CacheError naming the first field (in `expected`'s order) whose value differs."""
    for field, wanted in expected.items():
        have = found.get(field, "<missing>")
        if have != wanted:
            meaning = _FIELD_MEANING.get(field, "for other inputs")
            raise CacheError(
                f"{path} was computed {meaning}: key field {field!r} is {_shown(have)} in the file but "
                f"{_shown(wanted)} for this run; rebuild it with `{rebuild}`"
            )


def write_cache(path: str | Path, key: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], info: Mapping[str, Any]) -> None:
    """Write a cache atomically (ckd.atomic): a torch file {format, key, info, tensor_names, <name>: tensor, ...}."""
    clash = _RESERVED.intersection(tensors)
    if clash:
        raise ValueError(f"tensor name {sorted(clash)[0]!r} is reserved in cache files")
    payload = {"format": CACHE_FORMAT, "key": dict(key), "info": dict(info), "tensor_names": sorted(tensors)}
    payload.update({name: tensor.detach().cpu() for name, tensor in tensors.items()})
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_cache(path: str | Path, expected: Mapping[str, Any], *, rebuild: str, what: str = "cache") -> dict[str, torch.Tensor]:
    """The tensors of the cache at `path` if its key equals `expected`; CacheError (one line) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CacheError(f"{what} file {path} does not exist: create it with `{rebuild}`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a torch archive
        raise CacheError(f"{path} is not a readable ckd {what} file ({type(exc).__name__}): rebuild it with `{rebuild}`") from None
    if not isinstance(payload, dict):
        raise CacheError(f"{path} is not a ckd {what} file: rebuild it with `{rebuild}`")
    found = payload.get("key") if isinstance(payload.get("key"), dict) else {"format": payload.get("format", "<missing>")}
    check_key(found, expected, path=path, rebuild=rebuild)
    names = payload.get("tensor_names") or []
    tensors = {name: payload.get(name) for name in names}
    if not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise CacheError(f"{path} is damaged (a listed tensor is missing): rebuild it with `{rebuild}`")
    return tensors


def read_info(path: str | Path) -> dict[str, Any]:
    """A cache file's key and info (for people and tests; no checks)."""
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    return {"key": payload.get("key"), "info": payload.get("info")}


def remove_own_temporaries(path: str | Path) -> list[Path]:
    """Delete temporaries that killed writers of `path` left beside it (`.<name>.*.tmp`, ckd.atomic's naming);
    other files' temporaries in the same folder are left alone. Returns what was removed."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    prefix = f".{path.name}."
    for entry in path.parent.iterdir():
        if not (entry.name.startswith(prefix) and entry.name.endswith(TMP_SUFFIX)):
            continue
        if entry.is_file() or entry.is_symlink():
            try:
                os.unlink(entry)
            except FileNotFoundError:
                continue
            removed.append(entry)
    return removed
