"""A packed corpus as a training split: rows read through numpy memory maps, masked for MLM on the fly.

`open_pack` checks the folder against what the run expects (tokenizer, max_length, and — given the corpus
spec — the key computed from the sources as they are now, so a pack built from since-changed text is
refused). `PackedCorpus` offers what ckd.train.Trainer asks of a training split: `len`, `width(indices)`
and `batch(indices, width)`.

Masking (BERT, Devlin et al. 2019): round(15%) of each row's text tokens (at least one; never [CLS],
[SEP] or padding) are chosen; 80% of them become [MASK], 10% a random vocabulary id, 10% stay. The
choice is a pure function of (seed, row index) (numpy PCG64 seeded with both), i.e. BERT's static
masking: the same row is masked the same way in every epoch, on every resume and in any micro-batch split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ckd.corpus.pack import FORMAT_VERSION, MANIFEST, pack_key, read_manifest, tokenizer_fingerprint
from ckd.corpus.sources import CorpusError, check_spec

MASK_PROB = 0.15
IGNORE = -100


def open_pack(folder: str | Path, tokenizer, max_length: int, spec: Any = None) -> PackedCorpus:
    """The packed corpus in `folder`, after checking it was packed for `tokenizer` and `max_length` and,
    given the corpus `spec`, that its key still matches the sources (else CorpusError with the rebuild hint)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    rebuild = "rebuild it with `ckd pack-corpus` (or let the workflow's pack_corpus rule redo it)"
    if manifest is None:
        raise CorpusError(f"{folder / MANIFEST} is missing or unreadable: {folder} is not a packed corpus; {rebuild}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CorpusError(f"packed corpus {folder} has format {manifest.get('format_version')}, this ckd reads {FORMAT_VERSION}: {rebuild}")
    tok_fp = tokenizer_fingerprint(tokenizer)
    packed_fp = {k: v for k, v in manifest["tokenizer"].items() if k != "reference"}
    if packed_fp != tok_fp:
        raise CorpusError(
            f"packed corpus {folder} was tokenised with another tokenizer ({manifest['tokenizer'].get('reference')}, "
            f"vocab {packed_fp.get('vocab_sha256')}) than this run's (vocab {tok_fp['vocab_sha256']}): pack it with the teacher's tokenizer"
        )
    if manifest["max_length"] != max_length:
        raise CorpusError(f"packed corpus {folder} has max_length {manifest['max_length']}, the run asks for {max_length}: "
                          f"set data.max_length={manifest['max_length']} or {rebuild}")
    if spec is not None:
        key = pack_key(check_spec(spec), tok_fp, max_length)
        if key != manifest["key"]:
            raise CorpusError(
                f"packed corpus {folder} is stale: its sources or spec changed since it was packed (key {manifest['key'][:12]}, "
                f"now {key[:12]}); {rebuild}"
            )
    return PackedCorpus(folder, manifest)


class PackedCorpus:
    """Rows of a packed corpus (memory-mapped), batched with MLM masking. `seed` fixes the masks."""

    def __init__(self, folder: Path, manifest: Mapping[str, Any], seed: int = 0):
        self.folder, self.manifest, self.seed = Path(folder), manifest, int(seed)
        self.shards = []
        lengths = []
        for shard in manifest["shards"]:
            try:
                tokens = np.load(self.folder / shard["tokens"], mmap_mode="r")
                shard_lengths = np.load(self.folder / shard["lengths"])
            except (OSError, ValueError) as exc:
                raise CorpusError(f"packed corpus {folder}: shard {shard['tokens']} is unreadable ({exc}); rebuild it with `ckd pack-corpus`") from None
            if tokens.shape != (shard["sequences"], manifest["max_length"]) or shard_lengths.shape != (shard["sequences"],):
                raise CorpusError(f"packed corpus {folder}: shard {shard['tokens']} has shape {tokens.shape}, the manifest says "
                                  f"({shard['sequences']}, {manifest['max_length']}); rebuild it with `ckd pack-corpus`")
            self.shards.append(tokens)
            lengths.append(shard_lengths)
        self.lengths = np.concatenate(lengths).astype(np.int64)
        self.starts = np.cumsum([0] + [s["sequences"] for s in manifest["shards"]])
        tok = manifest["tokenizer"]
        self.pad_id, self.mask_id, self.vocab_size = int(tok["pad_id"]), tok["mask_id"], int(tok["vocab_size"])
        self.special = {int(tok["cls_id"]), int(tok["sep_id"]), self.pad_id}

    def with_seed(self, seed: int) -> PackedCorpus:
        other = object.__new__(PackedCorpus)
        other.__dict__.update(self.__dict__)
        other.seed = int(seed)
        return other

    def __len__(self) -> int:
        return int(self.starts[-1])

    def row(self, index: int) -> np.ndarray:
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        return np.asarray(self.shards[shard][index - self.starts[shard]], dtype=np.int64)

    def width(self, indices: Sequence[int]) -> int:
        return int(self.lengths[list(indices)].max())

    def mask_row(self, ids: np.ndarray, length: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(masked input ids, MLM labels with -100 where nothing is predicted) of one row."""
        if self.mask_id is None:
            raise CorpusError("the tokenizer of this packed corpus has no [MASK] token: masked-LM terms need one")
        rng = np.random.default_rng([self.seed, int(index)])
        candidates = np.arange(1, length - 1)
        count = max(1, int(round(MASK_PROB * len(candidates))))
        chosen = np.sort(rng.choice(candidates, size=min(count, len(candidates)), replace=False))
        labels = np.full(ids.shape, IGNORE, dtype=np.int64)
        labels[chosen] = ids[chosen]
        draw = rng.random(len(chosen))
        masked = ids.copy()
        masked[chosen[draw < 0.8]] = self.mask_id
        random_positions = chosen[(draw >= 0.8) & (draw < 0.9)]
        masked[random_positions] = rng.integers(0, self.vocab_size, size=len(random_positions))
        return masked, labels

    def batch(self, indices: Sequence[int], width: int | None = None, mlm: bool = True) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask, token_type_ids (zeros), labels (MLM targets, -100 elsewhere; all -100
        without `mlm`) and index, each (B, width) or (B,)."""
        width = width or self.width(indices)
        ids = np.full((len(indices), width), self.pad_id, dtype=np.int64)
        labels = np.full((len(indices), width), IGNORE, dtype=np.int64)
        mask = np.zeros((len(indices), width), dtype=np.int64)
        for b, index in enumerate(indices):
            length = int(self.lengths[index])
            row = self.row(int(index))[:width]
            if mlm:
                row, labels[b] = self.mask_row(row, length, int(index))
            ids[b] = row
            mask[b, :length] = 1
        return {
            "input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
            "token_type_ids": torch.zeros_like(torch.from_numpy(ids)), "labels": torch.from_numpy(labels),
            "index": torch.as_tensor(list(indices), dtype=torch.long),
        }
