"""Tokenise a corpus once into packed fixed-length sequences, sharded .npy token arrays plus a manifest.

Packing follows BERT pre-training's data builder (google-research/bert create_pretraining_data.py) without
its next-sentence pairs: the sentences of ONE document are appended to the current sequence while they
fit in max_length - 2 tokens; a sentence that does not fit starts the next sequence; a document's end
ends the sequence (sequences never span two documents, RoBERTa's DOC-SENTENCES); a sentence longer than
max_length - 2 on its own is cut into max_length - 2 pieces (counted as `cut_sentences`). Each row is
[CLS] tokens [SEP] then padding. BERT's 10% of deliberately shorter sequences (short_seq_prob) is not
reproduced: every row is as full as whole sentences allow.

Memory is bounded whatever the corpus size: documents stream from the sources, sentences are tokenised
in batches of `batch_sentences`, and one shard buffer of `shard_sequences` rows is held and flushed to
disk when full. The folder is written whole in a temporary sibling and renamed into place (ckd.atomic),
manifest.json last; a kill mid-way leaves no folder that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ckd.atomic import atomic_directory, atomic_write_json, remove_stale_temporaries
from ckd.config import fingerprint
from ckd.corpus.sources import CorpusError, check_spec, documents, source_stamps

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_SHARD_SEQUENCES = 65536
DEFAULT_BATCH_SENTENCES = 2048


def tokenizer_fingerprint(tokenizer) -> dict[str, Any]:
    """What makes two tokenizers tokenise alike: class, vocabulary (hashed), lower-casing, special ids."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]
    return {
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "vocab_sha256": digest,
        "do_lower_case": getattr(tokenizer, "do_lower_case", None),
        "cls_id": tokenizer.cls_token_id, "sep_id": tokenizer.sep_token_id,
        "pad_id": tokenizer.pad_token_id, "mask_id": tokenizer.mask_token_id,
    }


def pack_key(spec: Mapping[str, Any], tokenizer_fp: Mapping[str, Any], max_length: int) -> str:
    """The pack's identity: format, spec, the sources' stamps as they are now, tokenizer and length."""
    return fingerprint({"format": FORMAT_VERSION, "spec": spec, "stamps": source_stamps(spec),
                        "tokenizer": tokenizer_fp, "max_length": int(max_length)})


def check_max_length(max_length: Any) -> int:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 3:
        raise CorpusError(f"max_length must be an integer >= 3 ([CLS], one token, [SEP]), got {max_length!r}")
    return max_length


def _token_batches(spec, tokenizer, batch_sentences: int) -> Iterator[tuple[list[int], list[list[int]]]]:
    """(sentences per document, token ids per sentence) for batches of whole documents."""
    counts: list[int] = []
    sentences: list[str] = []
    for document in documents(spec):
        counts.append(len(document))
        sentences.extend(document)
        if len(sentences) >= batch_sentences:
            yield counts, _encode(tokenizer, sentences)
            counts, sentences = [], []
    if counts:
        yield counts, _encode(tokenizer, sentences) if sentences else []


def _encode(tokenizer, sentences: list[str]) -> list[list[int]]:
    """Token ids without special tokens; a fast tokenizer's Rust backend directly (half the time of __call__)."""
    backend = _plain_backend(tokenizer)
    if backend is not None:  # encode_batch_fast (tokenizers >= 0.21) skips the character offsets
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [encoding.ids for encoding in encode(sentences, add_special_tokens=False)]
    return tokenizer(sentences, add_special_tokens=False)["input_ids"]


_BACKENDS: dict[int, Any] = {}


def _plain_backend(tokenizer):
    """A copy of a fast tokenizer's backend without the padding or truncation its tokenizer.json may carry
    (sentence-transformers' do), or None for a slow tokenizer."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch"):
        return None
    if id(tokenizer) not in _BACKENDS:
        from tokenizers import Tokenizer

        plain = Tokenizer.from_str(backend.to_str())
        plain.no_padding()
        plain.no_truncation()
        _BACKENDS.clear()
        _BACKENDS[id(tokenizer)] = plain
    return _BACKENDS[id(tokenizer)]


class _ShardWriter:
    """Fills one (shard_sequences, max_length) buffer and saves it as tokens-NNNNN.npy / lengths-NNNNN.npy."""

    def __init__(self, folder: Path, max_length: int, shard_sequences: int, dtype, pad_id: int, cls_id: int, sep_id: int):
        self.folder, self.max_length, self.shard_sequences = folder, max_length, shard_sequences
        self.tokens = np.full((shard_sequences, max_length), pad_id, dtype=dtype)
        self.lengths = np.zeros(shard_sequences, dtype=np.uint16)
        self.pad_id, self.cls_id, self.sep_id = pad_id, cls_id, sep_id
        self.row = 0
        self.shards: list[dict[str, Any]] = []

    def add(self, ids: list[int]) -> None:
        n = len(ids) + 2
        row = self.tokens[self.row]
        row[0] = self.cls_id
        row[1:n - 1] = ids
        row[n - 1] = self.sep_id
        self.lengths[self.row] = n
        self.row += 1
        if self.row == self.shard_sequences:
            self.flush()

    def flush(self) -> None:
        if self.row == 0:
            return
        index = len(self.shards)
        names = (f"tokens-{index:05d}.npy", f"lengths-{index:05d}.npy")
        np.save(self.folder / names[0], self.tokens[:self.row])
        np.save(self.folder / names[1], self.lengths[:self.row])
        self.shards.append({"tokens": names[0], "lengths": names[1], "sequences": int(self.row),
                            "tokens_valid": int(self.lengths[:self.row].sum(dtype=np.int64))})
        self.tokens[:] = self.pad_id
        self.row = 0


def pack_corpus(spec: Any, tokenizer, max_length: int, out: str | Path, *, name: str | None = None,
                tokenizer_ref: str | None = None, shard_sequences: int = DEFAULT_SHARD_SEQUENCES,
                batch_sentences: int = DEFAULT_BATCH_SENTENCES, force: bool = False) -> dict[str, Any]:
    """Pack `spec` (a corpus spec, ckd.corpus.sources) with `tokenizer` into folder `out`; returns the manifest.

    A folder whose manifest has this very key is kept as it is (nothing is read); otherwise (or with
    `force`) the pack is rebuilt and replaces it atomically. Raises CorpusError (one line) for a bad spec,
    an unreadable source or an empty corpus.
    """
    spec = check_spec(spec)
    max_length = check_max_length(max_length)
    if not isinstance(shard_sequences, int) or shard_sequences < 1:
        raise CorpusError(f"shard_sequences must be a positive integer, got {shard_sequences!r}")
    out = Path(out)
    tok_fp = tokenizer_fingerprint(tokenizer)
    key = pack_key(spec, tok_fp, max_length)
    present = read_manifest(out)
    if present is not None and present.get("key") == key and not force:
        print(f"{out / MANIFEST} is up to date (key {key[:12]}): not repacked", file=sys.stderr)
        return present
    dtype = np.uint16 if tok_fp["vocab_size"] <= np.iinfo(np.uint16).max + 1 else np.int32
    budget = max_length - 2
    started = time.time()
    remove_stale_temporaries(out.parent) if out.parent.is_dir() else None
    with atomic_directory(out) as tmp:
        writer = _ShardWriter(tmp, max_length, shard_sequences, dtype, tok_fp["pad_id"], tok_fp["cls_id"], tok_fp["sep_id"])
        documents_n = sentences_n = cut_n = sequences_n = text_tokens = 0
        for doc_counts, sentence_ids in _token_batches(spec, tokenizer, batch_sentences):
            position = 0
            for n_sentences in doc_counts:
                current: list[int] = []
                for ids in sentence_ids[position:position + n_sentences]:
                    size = len(ids)
                    text_tokens += size
                    if size > budget:  # a sentence longer than a sequence: cut into budget-sized pieces
                        cut_n += 1
                        pieces = [ids[i:i + budget] for i in range(0, size, budget)]
                    else:
                        pieces = [ids]
                    for piece in pieces:
                        if current and len(current) + len(piece) > budget:
                            writer.add(current)
                            sequences_n += 1
                            current = []
                        current.extend(piece)
                if current:
                    writer.add(current)
                    sequences_n += 1
                sentences_n += n_sentences
                position += n_sentences
            documents_n += len(doc_counts)
        counts = {"documents": documents_n, "sentences": sentences_n, "cut_sentences": cut_n, "sequences": sequences_n,
                  "text_tokens": text_tokens}
        writer.flush()
        if counts["sequences"] == 0:
            raise CorpusError(f"corpus {name or out} has no text (0 sequences): check its sources")
        manifest = {
            "format_version": FORMAT_VERSION,
            "key": key,
            "name": name,
            "spec": spec,
            "stamps": source_stamps(spec),
            "tokenizer": {**tok_fp, "reference": tokenizer_ref},
            "max_length": max_length,
            "dtype": np.dtype(dtype).name,
            "counts": {**counts, "tokens_valid": sum(s["tokens_valid"] for s in writer.shards)},
            "shards": writer.shards,
            "pack_seconds": round(time.time() - started, 2),
            "packing": "BERT-style: whole sentences of one document per sequence, [CLS] ... [SEP], no NSP pairs",
        }
        atomic_write_json(tmp / MANIFEST, manifest)
    return manifest


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / MANIFEST
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
