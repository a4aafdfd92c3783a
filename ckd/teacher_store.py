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

This module computes and writes the cache (`cache_teacher`, `build_store`) and gives a run its key and
rebuild command; ckd.teacher_store_format holds the field names, sizes and file format, and
ckd.teacher_store_read opens and reads a cache (`open_store`, `TeacherStore`, `manifest_info`, all
importable from here too).

Stored in float32 by default; ``float16`` / ``bfloat16`` halve the size at a relative rounding error
of at most 2^-11 / 2^-8 per stored value (the manifest's ``store_relative_error``; float16 refuses
values beyond its range). The WR triple's angles come from differences of Gram entries, which
amplify that error: use float32 for results (`python -m benchmarks --sections agreement
--cache-dtype bfloat16` measures the loss-level difference).
"""


from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ckd.atomic import atomic_directory, atomic_write_json, remove_stale_temporaries
from ckd.cache_key import CACHE_FORMAT, CacheError, teacher_cache_key
from ckd.losses import relations
from ckd.pause import pause_point
from ckd.teacher_store_format import (  # noqa: F401  (re-exported: the teacher cache's names, importable from here)
    BUILDING,
    KIND,
    LIVE_ONLY_TERMS,
    MANIFEST,
    SHARD_EXAMPLES,
    STORE_DTYPES,
    STORE_ERROR,
    cache_bytes,
    describe_field,
    field_size,
    file_stem,
    objective_fields,
    read_json,
    sha256,
    sorted_fields,
    term_fields,
    to_store,
    triu_index,
)
from ckd.teacher_store_read import TeacherStore, manifest_info, open_store  # noqa: F401  (re-exported)

# ----------------------------------------------------------------------------- per-example values


def value_relation(values: torch.Tensor) -> torch.Tensor:
    """MiniLM's value relation V V^T / sqrt(d_head) of (..., n, d_head) values (ckd.losses.minilm)."""
    return torch.matmul(values, values.transpose(-1, -2)) * values.shape[-1] ** -0.5


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
                index = triu_index(n, h.device)
                rows.append(torch.cat([g[b, :n, :n].reshape(-1)[index] for g in grams]))
        elif kind == "layers":
            layers = [states[int(i)] for i in arg.split(",")]
            k = len(layers)
            index = triu_index(k, layers[0].device)
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
                rows.append(rel[b, :, :n, :n].reshape(rel.shape[1], n * n)[:, triu_index(n, rel.device)].reshape(-1))
        else:
            raise ValueError(f"unknown teacher cache field {field!r}")
        result[field] = [r.detach().float().cpu() for r in rows]
    return result


# ----------------------------------------------------------------------------- writing


def _describe_files(folder: Path) -> dict[str, dict[str, Any]]:
    return {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in sorted(folder.glob("*.npy"))}


def _write_shard(folder: Path, name: str, start: int, stop: int, values: dict[str, list[torch.Tensor]],
                 lengths: list[int], dtype: str) -> dict[str, Any]:
    with atomic_directory(folder / name) as tmp:
        np.save(tmp / "lengths.npy", np.asarray(lengths, dtype=np.int32))
        for field, rows in values.items():
            sizes = np.fromiter((r.numel() for r in rows), dtype=np.int64, count=len(rows))
            np.save(tmp / f"{file_stem(field)}.offsets.npy", np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
            flat = torch.cat(rows) if rows else torch.zeros(0)
            if dtype == "float16" and bool((flat.abs() > torch.finfo(torch.float16).max).any()):
                raise CacheError(f"teacher cache field {field} has values beyond float16's range "
                                 f"(max |value| {float(flat.abs().max()):.3g}): build it with --dtype float32 or bfloat16")
            np.save(tmp / f"{file_stem(field)}.npy", to_store(flat, dtype))
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
    previous = read_json(building)
    manifest_path = out / MANIFEST
    done = read_json(manifest_path)
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


def _finished_shard(folder: Path, start: int, stop: int) -> dict[str, Any] | None:
    entry = read_json(folder / "shard.json")
    if not isinstance(entry, dict) or entry.get("start") != start or entry.get("stop") != stop:
        return None
    if _describe_files(folder) != entry.get("files"):
        return None
    return entry


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
