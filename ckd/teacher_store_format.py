"""The teacher cache's format, shared by its writer (ckd.teacher_store) and its reader (ckd.teacher_store_read):
which fields a method reads from its teacher, their sizes and order, the store dtypes, file names and
the conversions to and from the stored arrays. The fields and the folder layout are described in
ckd/teacher_store.py."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

KIND = "teacher-terms"
MANIFEST = "manifest.json"
BUILDING = "building.json"
SHARD_EXAMPLES = 2048
STORE_DTYPES = ("float32", "float16", "bfloat16")
# relative rounding error of one stored value (unit roundoff), as the manifest states it
STORE_ERROR = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
_NUMPY = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}  # bfloat16 stored as its bits

LIVE_ONLY_TERMS = {
    "tinybert_embedding": "TinyBERT stage 1 reads the teacher's embedding output (n x d per example)",
    "tinybert_hidden": "TinyBERT stage 1 reads the teacher's hidden states (n x d x K per example, too large to cache)",
    "tinybert_attention": "TinyBERT stage 1 reads every mapped layer's attention scores (H x n x n x K per example)",
    "distilbert_cosine": "DistilBERT's cosine term reads the teacher's last hidden states (n x d per example)",
}


# ----------------------------------------------------------------------------- what a method needs


def term_fields(term: Any, layer_map: Any) -> tuple[set[str], str | None]:
    """(cache fields a loss term reads from the teacher, None) or (empty set, why it cannot be cached)."""
    name = term.name
    if name == "task":
        return set(), None
    if name in ("kd", "kd_released", "tinybert_prediction"):
        return {"logits"}, None
    if name in LIVE_ONLY_TERMS:
        return set(), LIVE_ONLY_TERMS[name]
    if name in ("wr_pair", "wr_triple"):
        if name == "wr_triple" and term.options.get("released_window_quirks"):
            return set(), "the WR triple under released_window_quirks reads padding positions, which depend on the batch"
        return {f"token/{i}" for i in layer_map.teacher_indices}, None
    if name in ("ltr_pair", "ltr_triple"):
        return {"layers/" + ",".join(str(i) for i in layer_map.teacher_indices)}, None
    if name == "pkd":
        return {f"cls/{i}" for i in layer_map.teacher_indices}, None
    if name == "minilm_attention":
        return {"attention/last"}, None
    if name == "minilm_value":
        return {"value/last"}, None
    return set(), f"loss term {name!r} has no cached form"


def objective_fields(objective: Any) -> tuple[set[str], str | None]:
    """The fields an Objective reads from its teacher, or (empty, the reason it must run the teacher live)."""
    fields: set[str] = set()
    for term, kind in objective.terms:
        if not kind.teacher:
            continue
        wanted, reason = term_fields(term, objective.map)
        if reason is not None:
            return set(), f"term {term.name}: {reason}"
        fields |= wanted
    return fields, None


def _sort_key(field: str):
    kind, _, arg = field.partition("/")
    order = ["logits", "cls", "token", "layers", "attention", "value"].index(kind)
    return order, [int(x) for x in arg.split(",")] if arg and arg != "last" else [], field


def sorted_fields(fields: Iterable[str]) -> list[str]:
    return sorted(set(fields), key=_sort_key)


def file_stem(field: str) -> str:
    """The file name stem of a field (`/` written `@`, `,` written `-`)."""
    return field.replace("/", "@").replace(",", "-")


def tri(m: int) -> int:
    """Entries of the upper triangle (diagonal included) of an m x m matrix: m (m + 1) / 2."""
    return m * (m + 1) // 2


def field_size(field: str, n: int, *, labels: int, width: int, heads: int) -> int:
    """Stored values per example of `field` for an example of n tokens."""
    kind, _, arg = field.partition("/")
    if kind == "logits":
        return labels
    if kind == "cls":
        return width
    if kind == "token":
        return 2 * tri(n)
    if kind == "layers":
        return n * 2 * tri(len(arg.split(",")))
    if kind == "attention":
        return heads * n * n
    if kind == "value":
        return heads * tri(n)
    raise ValueError(f"unknown teacher cache field {field!r}")


def describe_field(field: str) -> str:
    kind, _, arg = field.partition("/")
    return {
        "logits": "logits", "cls": f"[CLS] vector of teacher hidden state {arg}",
        "token": f"token Gram matrix of teacher hidden state {arg} (another layer map?)",
        "layers": f"layer Gram matrices of teacher hidden states {arg} (another layer map?)",
        "attention": "last-layer attention scores", "value": "last-layer value relations",
    }.get(kind, field)


def cache_bytes(fields: Iterable[str], lengths: Iterable[int], *, labels: int, width: int, heads: int, dtype: str = "float32") -> int:
    """Bytes of the stored values of `fields` for examples of the given token counts (offsets not counted)."""
    per_value = np.dtype(_NUMPY[dtype]).itemsize
    lengths = list(lengths)
    return per_value * sum(field_size(f, n, labels=labels, width=width, heads=heads) for f in fields for n in lengths)


# ----------------------------------------------------------------------------- stored arrays and files


def triu_index(n: int, device=None) -> torch.Tensor:
    """(tri(n),) int64 flat indices of the upper triangle of a row-major n x n matrix."""
    rows, cols = torch.triu_indices(n, n, device=device)
    return rows * n + cols


def to_store(values: torch.Tensor, dtype: str) -> np.ndarray:
    """Flat float values as the stored array of `dtype` (bfloat16 as its uint16 bits)."""
    if dtype == "bfloat16":
        return values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return values.to(getattr(torch, dtype)).numpy()


def from_store(array: np.ndarray, dtype: str) -> torch.Tensor:
    """A stored array (a memory-map slice) of `dtype` back as a float32 tensor (a copy)."""
    tensor = torch.from_numpy(np.array(array))  # a copy: the memory map is read-only
    if dtype == "bfloat16":
        return tensor.view(torch.int16).view(torch.bfloat16).float()
    return tensor.float()


def sha256(path: Path) -> str:
    """The hex sha256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path) -> Any:
    """The JSON value in `path`, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
