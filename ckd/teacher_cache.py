"""Teacher logits computed once per (teacher, training set) for logit-only methods such as KD."""

from __future__ import annotations

from pathlib import Path

import torch

from ckd.atomic import atomic_write_bytes
from ckd.errors import CkdError

FORMAT = "ckd-teacher-logits-v1"


@torch.no_grad()
def compute_teacher_logits(model: torch.nn.Module, data, batch_size: int) -> torch.Tensor:
    model.eval()
    chunks = []
    for start in range(0, len(data), batch_size):
        batch = data.batch(list(range(start, min(start + batch_size, len(data)))))
        chunks.append(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"]).logits)
    return torch.cat(chunks)


def save_teacher_logits(path: str | Path, logits: torch.Tensor, data_fingerprint: str, teacher: str) -> None:
    import io

    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "logits": logits, "data_fingerprint": data_fingerprint, "teacher": teacher}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_teacher_logits(path: str | Path, data_fingerprint: str, num_examples: int) -> torch.Tensor:
    path = Path(path)
    if not path.is_file():
        raise CkdError(f"teacher_logits file {path} does not exist: create it with `ckd cache-logits` or drop teacher_logits")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CkdError(f"{path} is not a ckd teacher-logits file (format {FORMAT}): recreate it with `ckd cache-logits`")
    if payload["data_fingerprint"] != data_fingerprint or payload["logits"].shape[0] != num_examples:
        raise CkdError(
            f"{path} was computed on other training data (fingerprint or size differs): recreate it with `ckd cache-logits` for this config"
        )
    return payload["logits"]
