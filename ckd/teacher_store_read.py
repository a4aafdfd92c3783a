"""Reading a teacher cache (ckd.teacher_store): `open_store` checks a cache folder against the run's key and
fields, `TeacherStore` reads it per batch into the objectives' teacher outputs, `manifest_info` says what a
cache was built for."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ckd.cache_key import CacheError, check_key
from ckd.losses import relations
from ckd.teacher_store_format import (
    BUILDING,
    MANIFEST,
    describe_field,
    file_stem,
    from_store,
    read_json,
    sha256,
    sorted_fields,
    tri,
    triu_index,
)


@dataclass
class _Shard:
    start: int
    stop: int
    lengths: np.ndarray
    data: dict[str, np.ndarray]
    offsets: dict[str, np.ndarray]


class TeacherStore:
    """A teacher cache opened by `open_store`, read per batch (`batch`, `outputs`) into padded tensors.

    Each shard is checked against the manifest's sha256 the first time this process reads it (the
    files it reads: lengths, and data and offsets of this store's fields), so a damaged file stops the
    run at its first batch from that shard, and a cache is read once more per run at most."""

    def __init__(self, path: Path, manifest: Mapping[str, Any], fields: list[str], rebuild: str = "ckd cache-teacher ..."):
        self.path, self.manifest, self.fields, self.rebuild = path, manifest, fields, rebuild
        self.dtype = manifest["store_dtype"]
        self.examples = int(manifest["examples"])
        self.entries = list(manifest["shards"])
        self.starts = np.asarray([e["start"] for e in self.entries], dtype=np.int64)
        self._open: dict[int, _Shard] = {}
        self._triu: dict[int, torch.Tensor] = {}

    def _shard(self, i: int) -> tuple[_Shard, int]:
        """The shard holding example i (opened and verified on first use) and i's row in it."""
        number = int(np.searchsorted(self.starts, i, side="right")) - 1
        shard = self._open.get(number)
        if shard is None:
            entry = self.entries[number]
            folder = self.path / entry["name"]
            names = ["lengths.npy", *(f"{file_stem(f)}{suffix}.npy" for f in self.fields for suffix in ("", ".offsets"))]
            for name in names:
                described = entry["files"].get(name)
                if described is None or sha256(folder / name) != described["sha256"]:
                    raise CacheError(f"{self.path} is damaged ({entry['name']}/{name} differs from the manifest): "
                                     f"rebuild it with `{self.rebuild}`")
            shard = self._open[number] = _Shard(
                entry["start"], entry["stop"], np.load(folder / "lengths.npy"),
                {f: np.load(folder / f"{file_stem(f)}.npy", mmap_mode="r") for f in self.fields},
                {f: np.load(folder / f"{file_stem(f)}.offsets.npy") for f in self.fields},
            )
        return shard, i - shard.start

    def _rows(self, field: str, indices: list[int]) -> list[torch.Tensor]:
        rows = []
        for i in indices:
            shard, j = self._shard(i)
            lo, hi = shard.offsets[field][j], shard.offsets[field][j + 1]
            rows.append(from_store(shard.data[field][lo:hi], self.dtype))
        return rows

    def lengths(self, indices: list[int]) -> list[int]:
        out = []
        for i in indices:
            shard, j = self._shard(i)
            out.append(int(shard.lengths[j]))
        return out

    def _symmetric(self, tri: torch.Tensor, m: int) -> torch.Tensor:
        """(..., tri(m)) upper triangles -> (..., m, m) symmetric matrices."""
        index = self._triu.get(m)
        if index is None:
            index = self._triu[m] = triu_index(m)
        full = tri.new_zeros(*tri.shape[:-1], m * m)
        full[..., index] = tri
        full = full.view(*tri.shape[:-1], m, m)
        return full + full.transpose(-1, -2).tril(-1)

    def batch(self, index: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
        """The cached fields of the examples `index` (B,) for a right-padded (B, W) `attention_mask`:
        logits (B, C); cls/<i> (B, 1, d); token/<i> (raw (B, W, W), centred (B, W, W)); layers/<set>
        (raw (N_valid, K, K), centred (N_valid, K, K)); attention/last and value/last (B, H, W, W).
        Padded entries are 0. CacheError if an example's token count differs from the cache's."""
        indices = [int(i) for i in index.tolist()]
        if indices and (min(indices) < 0 or max(indices) >= self.examples):
            raise CacheError(f"{self.path} holds {self.examples} examples; this batch asks for example {max(indices)}")
        valid_lengths = (attention_mask != 0).sum(dim=1).tolist()
        cached_lengths = self.lengths(indices)
        if cached_lengths != valid_lengths:
            raise CacheError(f"{self.path} does not match this run's tokens (example {indices[0]}: {cached_lengths[0]} "
                             f"cached, {valid_lengths[0]} in the batch); rebuild the teacher cache")
        width = attention_mask.shape[1]
        out: dict[str, Any] = {}
        for field in self.fields:
            kind, _, arg = field.partition("/")
            rows = self._rows(field, indices)
            if kind == "logits":
                out[field] = torch.stack(rows)
            elif kind == "cls":
                out[field] = torch.stack(rows).unsqueeze(1)
            elif kind == "token":
                both = torch.zeros(2, len(rows), width, width)
                for b, (row, n) in enumerate(zip(rows, valid_lengths)):
                    both[:, b, :n, :n] = self._symmetric(row.view(2, tri(n)), n)
                out[field] = (both[0], both[1])
            elif kind == "layers":
                k = len(arg.split(","))
                per_token = torch.cat([row.view(-1, 2, tri(k)) for row in rows]) if rows else torch.zeros(0, 2, tri(k))
                both = self._symmetric(per_token, k)
                out[field] = (both[:, 0], both[:, 1])
            elif kind in ("attention", "value"):
                heads = int(self.manifest["info"].get("heads") or 0) or None
                full = None
                for b, (row, n) in enumerate(zip(rows, valid_lengths)):
                    h = heads or (row.numel() // (n * n) if kind == "attention" else row.numel() // max(1, tri(n)))
                    m = row.view(h, n, n) if kind == "attention" else self._symmetric(row.view(h, tri(n)), n)
                    if full is None:
                        full = torch.zeros(len(rows), h, width, width)
                    full[b, :, :n, :n] = m
                out[field] = full
        return out

    def outputs(self, batch: Mapping[str, torch.Tensor], objective: Any):
        """The teacher's Outputs for `objective` on `batch` (a training batch with "index"), from the cache."""
        from ckd.objectives import Outputs

        mask = batch["attention_mask"]
        device = mask.device
        got = self.batch(batch["index"].cpu(), mask.cpu())
        logits = got["logits"].to(device) if "logits" in got else None
        hidden = grams = capture = value = None
        mapped = objective.map.teacher_indices if objective.map is not None else ()
        if any(f.startswith("cls/") for f in got):
            hidden = [None] * (objective.map.teacher_layers + 1)
            for i in mapped:
                hidden[i] = got[f"cls/{i}"].to(device)
            hidden = tuple(hidden)
        token = [got[f"token/{i}"] for i in mapped if f"token/{i}" in got]
        layer_key = "layers/" + ",".join(str(i) for i in mapped)
        if token or layer_key in got:
            layer = got.get(layer_key, (None, None))
            grams = relations.TeacherGrams(
                token=[t[0].to(device) for t in token] or None, token_centred=[t[1].to(device) for t in token] or None,
                layer=None if layer[0] is None else layer[0].to(device),
                layer_centred=None if layer[1] is None else layer[1].to(device),
            )
        if "attention/last" in got:
            capture = _CachedCapture(got["attention/last"].to(device))
        if "value/last" in got:
            value = got["value/last"].to(device)
        return Outputs(logits=logits, hidden_states=hidden, capture=capture, relations=grams, value_relation=value)


class _CachedCapture:
    """The part of ckd.hooks.AttentionCapture that cached MiniLM terms read: the last layer's scores."""

    def __init__(self, scores: torch.Tensor):
        self._scores = scores

    def scores(self, layer: int) -> torch.Tensor:
        if layer != -1:
            raise CacheError(f"the teacher cache holds the last layer's attention scores only, not layer {layer}")
        return self._scores


def open_store(path: str | Path, key: Mapping[str, Any], fields: Iterable[str], *, rebuild: str) -> TeacherStore:
    """The teacher cache at `path` if it is complete, its key equals `key` and it holds `fields`; one-line
    CacheError otherwise, naming what differs (first differing key field, a missing field, a file whose
    size differs from the manifest) and `rebuild`. Checksums are checked per shard on first read (TeacherStore)."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        state = "an unfinished build (re-run it to resume)" if (path / BUILDING).exists() else "no teacher cache"
        raise CacheError(f"{path} holds {state}: build it with `{rebuild}`")
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("key"), dict):
        raise CacheError(f"{manifest_path} is not a readable teacher cache manifest: rebuild it with `{rebuild}`")
    check_key(manifest["key"], key, path=path, rebuild=rebuild)
    missing = [f for f in sorted_fields(fields) if f not in manifest.get("fields", [])]
    if missing:
        raise CacheError(f"{path} holds no {describe_field(missing[0])} (it holds {', '.join(manifest.get('fields', []))}); "
                         f"rebuild it with `{rebuild}`")
    for entry in manifest["shards"]:
        folder = path / entry["name"]
        for name, described in entry["files"].items():
            file = folder / name
            if not file.is_file() or file.stat().st_size != described["bytes"]:
                raise CacheError(f"{path} is damaged ({entry['name']}/{name} differs from the manifest): rebuild it with `{rebuild}`")
    return TeacherStore(path, manifest, sorted_fields(fields), rebuild)


def manifest_info(path: str | Path) -> dict[str, Any]:
    """A cache folder's methods, student depths and store dtype (empty if it has no readable manifest)."""
    manifest = read_json(Path(path) / MANIFEST)
    if not isinstance(manifest, dict):
        return {}
    info = manifest.get("info") if isinstance(manifest.get("info"), dict) else {}
    return {**info, "store_dtype": manifest.get("store_dtype", "float32")}
