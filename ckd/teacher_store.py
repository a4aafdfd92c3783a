"""The teacher cache: what each method reads from its (frozen) teacher, computed once per (task, teacher).

`ckd cache-teacher` runs the teacher once over a task's training set and stores, per example and
without padding, exactly what the study's methods read from it; `ckd distill ... teacher_cache=DIR`
then trains without a teacher forward. Fields (``n`` = the example's tokens, ``K`` = mapped layers,
``d`` = teacher width, ``H`` = heads, ``C`` = label columns; ``tri(m)`` = m (m + 1) / 2):

    logits           (C,)                    KD, kd_released, TinyBERT stage 2
    cls/<i>          (d,)                    PKD: the [CLS] vector of teacher hidden state i
    token/<i>        2 tri(n)                WR terms: upper triangles of hidden state i's token Gram
                                             matrix, raw (wr_pair) and centred on the sentence's mean
                                             token (wr_triple), as ckd.losses.relations.token_grams
    layers/<i,j,..>  n * 2 tri(K)            LTR terms: per token, upper triangles of the Gram matrix
                                             of its K layer vectors, raw (ltr_pair) and centred over
                                             the layers (ltr_triple), as relations.layer_grams
    attention/last   H n n                   MiniLM: last-layer attention scores Q K^T / sqrt(d_head)
    value/last       H tri(n)                MiniLM: last-layer value relations V V^T / sqrt(d_head)

Not cached (the run keeps its live teacher and its record says why): TinyBERT stage 1 (hidden states
and attention scores of every mapped layer: n d K + H n n K per example, the size of the teacher's
activations), DistilBERT's cosine term (last hidden states), and the WR triple under
``released_window_quirks`` (its windows read padding positions, which depend on the batch).

The teacher side is computed by the same functions the losses use on a live teacher
(ckd.losses.relations.token_grams / layer_grams, ckd.hooks), one example's rows cut out of its build
batch without padding; `make bench` (benchmarks/cache_agreement.py) compares cached and live losses
on real GLUE batches.

Layout of a cache folder: ``manifest.json`` (written last, atomically: format, key (ckd.cache_key),
fields, store dtype and its stated error, the build plan, shards with each file's size and sha256)
and ``shard-NNNNN/`` folders (each written atomically), holding for each field a flat
``<field>.npy`` (``/`` written ``@``, ``,`` written ``-``) and its ``<field>.offsets.npy`` (int64,
examples + 1) plus ``lengths.npy`` (tokens per example). Arrays are memory-mapped when read; a
reader checks file sizes when it opens the cache and each shard's sha256 the first time it reads
from it. A build writes ``building.json`` first; a killed build resumes from its finished shards when
re-run with the same key, fields, dtype and shard size (shards are computed in fixed batches, so the
result is the same bytes as an uninterrupted build); a complete cache is not rebuilt.

Stored in float32 by default; ``float16`` / ``bfloat16`` halve the size at a relative rounding error
of at most 2^-11 / 2^-8 per stored value (the manifest's ``store_relative_error``; float16 refuses
values beyond its range). The WR triple's angles come from differences of Gram entries, which
amplify that error: use float32 for results (`python -m benchmarks --sections agreement
--cache-dtype bfloat16` measures the loss-level difference).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ckd.atomic import atomic_directory, atomic_write_json, remove_stale_temporaries
from ckd.cache_key import CACHE_FORMAT, CacheError, check_key, teacher_cache_key
from ckd.losses import relations
from ckd.pause import pause_point

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


def _file_stem(field: str) -> str:
    return field.replace("/", "@").replace(",", "-")


def _tri(m: int) -> int:
    return m * (m + 1) // 2


def field_size(field: str, n: int, *, labels: int, width: int, heads: int) -> int:
    """Stored values per example of `field` for an example of n tokens."""
    kind, _, arg = field.partition("/")
    if kind == "logits":
        return labels
    if kind == "cls":
        return width
    if kind == "token":
        return 2 * _tri(n)
    if kind == "layers":
        return n * 2 * _tri(len(arg.split(",")))
    if kind == "attention":
        return heads * n * n
    if kind == "value":
        return heads * _tri(n)
    raise ValueError(f"unknown teacher cache field {field!r}")


# ----------------------------------------------------------------------------- per-example values


def value_relation(values: torch.Tensor) -> torch.Tensor:
    """MiniLM's value relation V V^T / sqrt(d_head) of (..., n, d_head) values (ckd.losses.minilm)."""
    return torch.matmul(values, values.transpose(-1, -2)) * values.shape[-1] ** -0.5


def _triu_index(n: int, device=None) -> torch.Tensor:
    rows, cols = torch.triu_indices(n, n, device=device)
    return rows * n + cols


@torch.no_grad()
def compute_batch(model: torch.nn.Module, batch: Mapping[str, torch.Tensor], fields: list[str], autocast) -> dict[str, list[torch.Tensor]]:
    """Each field's flat float32 values per example of `batch` (a padded EncodedSplit batch), on the CPU."""
    from ckd.hooks import AttentionCapture

    device = next(model.parameters()).device
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids")}
    mask = inputs["attention_mask"]
    lengths = mask.sum(dim=1).tolist()
    hidden = any(f.split("/")[0] in ("cls", "token", "layers") for f in fields)
    capture = any(f.split("/")[0] in ("attention", "value") for f in fields)
    recorder = AttentionCapture(model, layers=(-1,)) if capture else None
    with autocast():
        if recorder is not None:
            with recorder:
                out = model(**inputs, output_hidden_states=hidden)
        else:
            out = model(**inputs, output_hidden_states=hidden)
    states = out.hidden_states
    result: dict[str, list[torch.Tensor]] = {}
    for field in fields:
        kind, _, arg = field.partition("/")
        rows: list[torch.Tensor] = []
        if kind == "logits":
            rows = list(out.logits.float())
        elif kind == "cls":
            rows = list(states[int(arg)][:, 0].float())
        elif kind == "token":
            h = states[int(arg)]
            grams = [relations.token_grams([h], mask, centre=centre, dtype=torch.float32)[0] for centre in (False, True)]
            for b, n in enumerate(lengths):
                index = _triu_index(n, h.device)
                rows.append(torch.cat([g[b, :n, :n].reshape(-1)[index] for g in grams]))
        elif kind == "layers":
            layers = [states[int(i)] for i in arg.split(",")]
            k = len(layers)
            index = _triu_index(k, layers[0].device)
            # (N_valid, K, K) each, raw then centred -> per token [raw triangle | centred triangle]
            grams = [relations.layer_grams(layers, mask, centre=c, dtype=torch.float32).reshape(-1, k * k)[:, index]
                     for c in (False, True)]
            per_token = torch.cat(grams, dim=1)
            rows = list(torch.split(per_token, lengths))
            rows = [r.reshape(-1) for r in rows]
        elif kind == "attention":
            scores = recorder.scores(-1).float()
            rows = [scores[b, :, :n, :n].reshape(-1) for b, n in enumerate(lengths)]
        elif kind == "value":
            rel = value_relation(recorder.values(-1).float())
            for b, n in enumerate(lengths):
                rows.append(rel[b, :, :n, :n].reshape(rel.shape[1], n * n)[:, _triu_index(n, rel.device)].reshape(-1))
        else:
            raise ValueError(f"unknown teacher cache field {field!r}")
        result[field] = [r.detach().float().cpu() for r in rows]
    return result


def _to_store(values: torch.Tensor, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return values.to(getattr(torch, dtype)).numpy()


def _from_store(array: np.ndarray, dtype: str) -> torch.Tensor:
    tensor = torch.from_numpy(np.array(array))  # a copy: the memory map is read-only
    if dtype == "bfloat16":
        return tensor.view(torch.int16).view(torch.bfloat16).float()
    return tensor.float()


# ----------------------------------------------------------------------------- writing


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _describe_files(folder: Path) -> dict[str, dict[str, Any]]:
    return {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(folder.glob("*.npy"))}


def _write_shard(folder: Path, name: str, start: int, stop: int, values: dict[str, list[torch.Tensor]],
                 lengths: list[int], dtype: str) -> dict[str, Any]:
    with atomic_directory(folder / name) as tmp:
        np.save(tmp / "lengths.npy", np.asarray(lengths, dtype=np.int32))
        for field, rows in values.items():
            sizes = np.fromiter((r.numel() for r in rows), dtype=np.int64, count=len(rows))
            np.save(tmp / f"{_file_stem(field)}.offsets.npy", np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
            flat = torch.cat(rows) if rows else torch.zeros(0)
            if dtype == "float16" and bool((flat.abs() > torch.finfo(torch.float16).max).any()):
                raise CacheError(f"teacher cache field {field} has values beyond float16's range "
                                 f"(max |value| {float(flat.abs().max()):.3g}): build it with --dtype float32 or bfloat16")
            np.save(tmp / f"{_file_stem(field)}.npy", _to_store(flat, dtype))
        entry = {"name": name, "start": start, "stop": stop, "files": _describe_files(tmp)}
        (tmp / "shard.json").write_text(json.dumps(entry, sort_keys=True))
    return entry


def build_store(out: str | Path, key: Mapping[str, Any], fields: list[str], encoded: Any, model: torch.nn.Module,
                *, batch_size: int, autocast, dtype: str = "float32", shard_examples: int = SHARD_EXAMPLES,
                info: Mapping[str, Any] | None = None, log=print) -> dict[str, Any]:
    """Compute and write the cache of `fields` for `encoded` (an EncodedSplit, training-set order) into the
    folder `out`, resuming a killed build with the same key, fields, dtype and shard size. Returns the manifest.

    The teacher runs on consecutive examples in batches of `batch_size` inside shards of `shard_examples`
    (a multiple of batch_size), so every example is always computed in the same batch."""
    if dtype not in STORE_DTYPES:
        raise CacheError(f"teacher cache dtype {dtype!r} is not one of {', '.join(STORE_DTYPES)}")
    shard_examples = max(batch_size, shard_examples // batch_size * batch_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    fields = sorted_fields(fields)
    plan = {"format": CACHE_FORMAT, "kind": KIND, "key": dict(key), "fields": fields, "store_dtype": dtype,
            "shard_examples": shard_examples, "batch_size": batch_size}
    building = out / BUILDING
    previous = _read_json(building)
    manifest_path = out / MANIFEST
    done = _read_json(manifest_path)
    if isinstance(done, dict) and done.get("plan") == plan and not building.exists():
        log(f"teacher cache: {out} is complete for this key and these fields: nothing to do")
        return done
    if previous != plan:  # a fresh build (or another plan): nothing earlier can be reused
        if manifest_path.exists():
            manifest_path.unlink()
        for stale in out.glob("shard-*"):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        atomic_write_json(building, plan)
    elif manifest_path.exists():
        manifest_path.unlink()
    model.eval()
    shards = []
    total = len(encoded)
    reused = 0
    for number, start in enumerate(range(0, total, shard_examples)):
        stop = min(start + shard_examples, total)
        name = f"shard-{number:05d}"
        done = _finished_shard(out / name, start, stop)
        if done is not None:
            shards.append(done)
            reused += 1
            continue
        values: dict[str, list[torch.Tensor]] = {f: [] for f in fields}
        for first in range(start, stop, batch_size):
            batch = encoded.batch(list(range(first, min(first + batch_size, stop))))
            for field, rows in compute_batch(model, batch, fields, autocast).items():
                values[field].extend(rows)
        lengths = encoded.lengths()[start:stop]
        shards.append(_write_shard(out, name, start, stop, values, lengths, dtype))
        log(f"teacher cache: shard {number + 1}/{math.ceil(total / shard_examples)} written ({stop}/{total} examples)")
        pause_point("teacher-cache-shard")
    if reused:
        log(f"teacher cache: resumed, {reused} finished shard(s) of a killed build kept")
    for stale in out.glob("shard-*"):
        if stale.name not in {s["name"] for s in shards}:
            shutil.rmtree(stale)
    manifest = {
        **{k: plan[k] for k in ("format", "kind", "key", "store_dtype")},
        "store_relative_error": STORE_ERROR[dtype],
        "fields": fields,
        "examples": total,
        "shards": shards,
        "bytes": sum(f["bytes"] for s in shards for f in s["files"].values()),
        "plan": plan,
        "info": dict(info or {}),
    }
    atomic_write_json(manifest_path, manifest)  # last: its presence means the cache is complete
    building.unlink()
    return manifest


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _finished_shard(folder: Path, start: int, stop: int) -> dict[str, Any] | None:
    entry = _read_json(folder / "shard.json")
    if not isinstance(entry, dict) or entry.get("start") != start or entry.get("stop") != stop:
        return None
    if _describe_files(folder) != entry.get("files"):
        return None
    return entry


# ----------------------------------------------------------------------------- reading


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
            names = ["lengths.npy", *(f"{_file_stem(f)}{suffix}.npy" for f in self.fields for suffix in ("", ".offsets"))]
            for name in names:
                described = entry["files"].get(name)
                if described is None or _sha256(folder / name) != described["sha256"]:
                    raise CacheError(f"{self.path} is damaged ({entry['name']}/{name} differs from the manifest): "
                                     f"rebuild it with `{self.rebuild}`")
            shard = self._open[number] = _Shard(
                entry["start"], entry["stop"], np.load(folder / "lengths.npy"),
                {f: np.load(folder / f"{_file_stem(f)}.npy", mmap_mode="r") for f in self.fields},
                {f: np.load(folder / f"{_file_stem(f)}.offsets.npy") for f in self.fields},
            )
        return shard, i - shard.start

    def _rows(self, field: str, indices: list[int]) -> list[torch.Tensor]:
        rows = []
        for i in indices:
            shard, j = self._shard(i)
            lo, hi = shard.offsets[field][j], shard.offsets[field][j + 1]
            rows.append(_from_store(shard.data[field][lo:hi], self.dtype))
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
            index = self._triu[m] = _triu_index(m)
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
                    both[:, b, :n, :n] = self._symmetric(row.view(2, _tri(n)), n)
                out[field] = (both[0], both[1])
            elif kind == "layers":
                k = len(arg.split(","))
                per_token = torch.cat([row.view(-1, 2, _tri(k)) for row in rows]) if rows else torch.zeros(0, 2, _tri(k))
                both = self._symmetric(per_token, k)
                out[field] = (both[:, 0], both[:, 1])
            elif kind in ("attention", "value"):
                heads = int(self.manifest["info"].get("heads") or 0) or None
                full = None
                for b, (row, n) in enumerate(zip(rows, valid_lengths)):
                    h = heads or (row.numel() // (n * n) if kind == "attention" else row.numel() // max(1, _tri(n)))
                    m = row.view(h, n, n) if kind == "attention" else self._symmetric(row.view(h, _tri(n)), n)
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
    manifest = _read_json(manifest_path)
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


def describe_field(field: str) -> str:
    kind, _, arg = field.partition("/")
    return {
        "logits": "logits", "cls": f"[CLS] vector of teacher hidden state {arg}",
        "token": f"token Gram matrix of teacher hidden state {arg} (another layer map?)",
        "layers": f"layer Gram matrices of teacher hidden states {arg} (another layer map?)",
        "attention": "last-layer attention scores", "value": "last-layer value relations",
    }.get(kind, field)


# ----------------------------------------------------------------------------- the run's side


def store_key(config: Mapping[str, Any], task: Any, teacher: torch.nn.Module, tokenizer: Any, encoded: Any,
              data_fingerprint: str) -> dict[str, Any]:
    """The key a teacher cache must carry for a run config (ckd.cache_key fields; kind teacher-terms)."""
    return teacher_cache_key(
        KIND, task=task, teacher=teacher, tokenizer=tokenizer, encoded=encoded, data_fingerprint=data_fingerprint,
        max_length=int(config["data"]["max_length"]), precision=str(config["train"]["precision"]),
    )


def rebuild_command(config: Mapping[str, Any], out: str | Path, methods: Iterable[str], student_layers: Iterable[int],
                    dtype: str = "float32") -> str:
    """The `ckd cache-teacher` command that writes the cache a run with this config expects."""
    from ckd.teacher_cache import rebuild_command as logits_command

    base = logits_command(config, out).replace("ckd cache-logits", "ckd cache-teacher", 1)
    head, _, tail = base.rpartition(" --out ")
    extra = [f"--methods {','.join(sorted(set(methods)))}", f"--student-layers {','.join(str(x) for x in sorted(set(student_layers)))}"]
    if dtype != "float32":
        extra.append(f"--dtype {dtype}")
    return " ".join([head, *extra, "--out", tail])


def manifest_info(path: str | Path) -> dict[str, Any]:
    """A cache folder's methods, student depths and store dtype (empty if it has no readable manifest)."""
    manifest = _read_json(Path(path) / MANIFEST)
    if not isinstance(manifest, dict):
        return {}
    info = manifest.get("info") if isinstance(manifest.get("info"), dict) else {}
    return {**info, "store_dtype": manifest.get("store_dtype", "float32")}


def cache_bytes(fields: Iterable[str], lengths: Iterable[int], *, labels: int, width: int, heads: int, dtype: str = "float32") -> int:
    """Bytes of the stored values of `fields` for examples of the given token counts (offsets not counted)."""
    per_value = np.dtype(_NUMPY[dtype]).itemsize
    lengths = list(lengths)
    return per_value * sum(field_size(f, n, labels=labels, width=width, heads=heads) for f in fields for n in lengths)


def student_depth(spec: Mapping[str, Any]) -> int:
    """The number of encoder layers a student model spec builds (its `layers`, else its checkpoint's config)."""
    from ckd.errors import ModelError
    from ckd.models import resolve_source

    if not isinstance(spec, Mapping):
        raise ModelError(f"a student spec must be a mapping such as {{name_or_path: ..., layers: 6}}, got {spec!r}")
    if spec.get("layers"):
        return int(spec["layers"])
    from transformers import AutoConfig

    source = resolve_source(spec.get("name_or_path"))
    try:
        return int(AutoConfig.from_pretrained(source).num_hidden_layers)
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelError(f"cannot read the depth of student {spec.get('name_or_path')!r} ({type(exc).__name__}): "
                         "give --student-layers instead, or prefetch the model") from None


def cache_teacher(config: Mapping[str, Any], out: str | Path, methods: list[str], student_layers: list[int],
                  dtype: str = "float32", shard_examples: int = SHARD_EXAMPLES, log=print) -> dict[str, Any]:
    """`ckd cache-teacher`: build (or resume) the teacher cache of `methods` x `student_layers` for a run config."""
    from ckd import __version__
    from ckd.data import encode_split, get_task
    from ckd.data.loading import data_fingerprint, run_splits
    from ckd.distributed import start_runtime, stop_runtime
    from ckd.errors import ConfigError
    from ckd.layer_maps import layer_map
    from ckd.methods import load_methods, resolve_method
    from ckd.models import build_model
    from ckd.objectives import TERMS

    if config["train"]["threads"]:
        torch.set_num_threads(int(config["train"]["threads"]))
    if not methods:
        raise ConfigError("name the methods the cache serves, e.g. --methods kd,pkd,minilm,ckd")
    task = get_task(config["task"])
    runtime = start_runtime(str(config["train"]["device"]), str(config["train"]["precision"]))
    try:
        teacher = build_model(config["teacher"], task=task, role="teacher", head="trained")
        document = load_methods(config["methods_file"])
        fields: set[str] = set()
        skipped = []
        teacher_layers = teacher.model.config.num_hidden_layers
        for name in methods:
            method = resolve_method(document, name, task.name, use_task_settings=bool(config["use_task_settings"]),
                                    options=config["method_options"], known_terms=set(TERMS))
            for depth in student_layers:
                the_map = layer_map(method.layer_map, teacher_layers, depth) if method.layer_map else None
                wanted: set[str] = set()
                reason = None
                for term in method.terms:
                    if term.weight == 0.0:
                        continue
                    got, reason = term_fields(term, the_map)
                    if reason is not None:
                        break
                    wanted |= got
                if reason is not None:
                    skipped.append(f"{name}: {reason} (its runs use the live teacher)")
                    break
                fields |= wanted
        for line in skipped:
            log(f"teacher cache: not cached: {line}")
        if not fields:
            raise ConfigError(f"none of the methods {', '.join(methods)} can read a teacher cache: nothing to build")
        examples, _ = run_splits(task, config["data"], evaluation=False)
        encoded = encode_split(examples, teacher.tokenizer, int(config["data"]["max_length"]), task)
        key = store_key(config, task, teacher.model, teacher.tokenizer, encoded, data_fingerprint(examples))
        teacher.model.to(runtime.device)
        info = {
            "teacher": str(config["teacher"].get("name_or_path")), "methods": sorted(set(methods)),
            "student_layers": sorted(set(student_layers)), "heads": teacher.model.config.num_attention_heads,
            "width": teacher.model.config.hidden_size, "device": str(runtime.device), "ckd_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        return build_store(out, key, sorted_fields(fields), encoded, teacher.model,
                           batch_size=int(config["train"]["eval_batch_size"]), autocast=runtime.autocast, dtype=dtype,
                           shard_examples=shard_examples, info=info, log=log)
    finally:
        stop_runtime(runtime)
