"""Teacher logits computed once per (teacher, training set) for logit-only methods such as KD.

`ckd cache-logits` writes them (`cache_teacher_logits`); `ckd distill ... teacher_logits=FILE` reads
them (`load_teacher_logits`) only if the file's key (ckd.cache_key: task, label order, data,
tokenizer, token ids, teacher weights, precision, format) equals the key the run computes from its
own teacher and data, else it stops with one line naming the field and the rebuild command.
Rows are in training-set order, columns in the task's label order (the teacher's columns are mapped
by label name when it is built, ckd.labels), float32.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ckd.cache_key import CacheError, read_cache, teacher_cache_key, write_cache

KIND = "teacher-logits"


@torch.no_grad()
def compute_teacher_logits(model: torch.nn.Module, data, batch_size: int, autocast=contextlib.nullcontext) -> torch.Tensor:
    """(examples, num_labels) float32 logits of `model` on an EncodedSplit, in its row order, on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(data), batch_size):
        batch = data.batch(list(range(start, min(start + batch_size, len(data)))))
        with autocast():
            out = model(**{k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids")})
        chunks.append(out.logits.float().cpu())
    return torch.cat(chunks)


def teacher_logits_key(config: Mapping[str, Any], task: Any, teacher: torch.nn.Module, tokenizer: Any, encoded: Any,
                       data_fingerprint: str) -> dict[str, Any]:
    """The key a logits cache must carry for a run config: teacher = the built (label-aligned) teacher,
    tokenizer/encoded = the tokenizer and encoded training set the run feeds it."""
    return teacher_cache_key(
        KIND, task=task, teacher=teacher, tokenizer=tokenizer, encoded=encoded, data_fingerprint=data_fingerprint,
        max_length=int(config["data"]["max_length"]), precision=str(config["train"]["precision"]),
    )


def _arg(key: str, value: Any) -> str:
    text = json.dumps(value, separators=(",", ":")) if isinstance(value, (dict, list)) else str(value)
    return shlex.quote(f"{key}={text}")


def rebuild_command(config: Mapping[str, Any], out: str | Path) -> str:
    """The `ckd cache-logits` command that writes the file a run with this config expects."""
    from ckd.config import DATA_DEFAULTS, TRAIN_DEFAULTS

    parts = ["ckd cache-logits", _arg("task", config["task"])]
    parts += [_arg(f"teacher.{k}", v) for k, v in (config.get("teacher") or {}).items() if v is not None and k != "name"]
    parts += [_arg(f"data.{k}", v) for k, v in config["data"].items() if v != DATA_DEFAULTS.get(k)]
    parts += [_arg(f"train.{k}", config["train"][k]) for k in ("precision",) if config["train"].get(k) != TRAIN_DEFAULTS.get(k)]
    return " ".join(parts + ["--out", shlex.quote(str(out))])


def save_teacher_logits(path: str | Path, logits: torch.Tensor, key: Mapping[str, Any], info: Mapping[str, Any]) -> None:
    write_cache(path, key, {"logits": logits.float()}, info)


def load_teacher_logits(path: str | Path, key: Mapping[str, Any], rebuild: str) -> torch.Tensor:
    """The cached logits if the file's key equals `key` (CacheError naming the differing field otherwise)."""
    tensors = read_cache(path, key, rebuild=rebuild, what="teacher_logits")
    logits = tensors.get("logits")
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != key["examples"]:
        raise CacheError(f"{path} holds no ({key['examples']}, labels) logits tensor: rebuild it with `{rebuild}`")
    return logits


def cache_teacher_logits(config: Mapping[str, Any], out: str | Path) -> torch.Tensor:
    """`ckd cache-logits`: the teacher's logits on the training examples a `ckd distill` run with this
    config trains on, written to `out` with their key. Returns the logits."""
    from ckd import __version__
    from ckd.cache_key import remove_own_temporaries
    from ckd.data import encode_split, get_task
    from ckd.data.loading import data_fingerprint, run_splits
    from ckd.distributed import start_runtime, stop_runtime
    from ckd.interrupts import defer_interrupts
    from ckd.models import build_model

    removed = remove_own_temporaries(out)  # a killed earlier run's partial file
    if removed:
        print(f"removed {len(removed)} temporary file(s) a killed cache-logits left: {', '.join(p.name for p in removed)}")
    if config["train"]["threads"]:
        torch.set_num_threads(int(config["train"]["threads"]))
    task = get_task(config["task"])
    data = config["data"]
    runtime = start_runtime(str(config["train"]["device"]), str(config["train"]["precision"]))
    try:
        teacher = build_model(config["teacher"], task=task, role="teacher", head="trained")  # refused before data loads
        # the examples `ckd distill` trains on with this data config (minus a carved selection split, if any)
        examples, _ = run_splits(task, data, evaluation=False)
        encoded = encode_split(examples, teacher.tokenizer, int(data["max_length"]), task)
        key = teacher_logits_key(config, task, teacher.model, teacher.tokenizer, encoded, data_fingerprint(examples))
        teacher.model.to(runtime.device)
        logits = compute_teacher_logits(teacher.model, encoded, int(config["train"]["eval_batch_size"]), runtime.autocast)
    finally:
        stop_runtime(runtime)
    info = {
        "teacher": str(config["teacher"].get("name_or_path")), "labels": teacher.head.get("labels"),
        "device": str(runtime.device), "ckd_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with defer_interrupts("writing the teacher logits"):  # SIGTERM/SIGINT wait for the rename; SIGKILL: see above
        save_teacher_logits(out, logits, key, info)
    return logits
