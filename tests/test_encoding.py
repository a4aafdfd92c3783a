import pytest
import torch

from ckd.data.encoding import encode_split
from ckd.data.examples import Example
from ckd.data.synthetic import synthetic_tokenizer
from ckd.errors import DataError


@pytest.fixture(scope="module")
def tokenizer():
    return synthetic_tokenizer()


def _ids(tokenizer, text):
    return tokenizer.convert_tokens_to_ids(text.split())


def test_pair_layout_token_types_and_padding(tokenizer):
    examples = [Example("alice bought the bread .", "alice bought some food .", 0, "dev-0"),
                Example("bob sold the cat .", "maybe bob never sold any animals .", 2, "dev-1")]
    encoded = encode_split(examples, tokenizer, 64, "syn-pair")
    assert len(encoded) == 2
    batch = encoded.batch([1, 0])
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels", "index"}
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    long_row = [cls] + _ids(tokenizer, "bob sold the cat .") + [sep] + \
        _ids(tokenizer, "maybe bob never sold any animals .") + [sep]
    short_row = [cls] + _ids(tokenizer, "alice bought the bread .") + [sep] + \
        _ids(tokenizer, "alice bought some food .") + [sep]
    assert batch["input_ids"].shape == (2, len(long_row)) and batch["input_ids"].dtype == torch.long
    assert batch["input_ids"][0].tolist() == long_row
    padding = len(long_row) - len(short_row)
    assert batch["input_ids"][1].tolist() == short_row + [pad] * padding
    assert batch["attention_mask"][1].tolist() == [1] * len(short_row) + [0] * padding
    assert batch["token_type_ids"][0].tolist() == [0] * 7 + [1] * 8
    assert batch["token_type_ids"][1].tolist() == [0] * 7 + [1] * 6 + [0] * padding
    assert batch["labels"].tolist() == [2, 0] and batch["labels"].dtype == torch.long
    assert batch["index"].tolist() == [1, 0]


def test_longest_first_truncation(tokenizer):
    long_a = " ".join(["the"] * 20)
    examples = [Example(long_a, "some food .", 1, "dev-0")]
    batch = encode_split(examples, tokenizer, 12, "syn-pair").batch([0])
    row = batch["input_ids"][0].tolist()
    assert len(row) == 12
    # the longer text loses tokens first: b (3 tokens) is kept whole, a keeps 12 - 3 special - 3
    assert row == [tokenizer.cls_token_id] + _ids(tokenizer, "the " * 6) + [tokenizer.sep_token_id] + \
        _ids(tokenizer, "some food .") + [tokenizer.sep_token_id]


def test_single_sentence_and_regression_labels(tokenizer):
    single = encode_split([Example("the plot was good .", None, 1, "d-0")], tokenizer, 32, "syn-sentiment")
    batch = single.batch(torch.tensor([0]))
    assert batch["token_type_ids"].tolist() == [[0] * 7]
    regression = encode_split([Example("a", "b", 2.5, "d-0"), Example("a", "a", 5.0, "d-1")], tokenizer, 32,
                              "syn-similarity")
    labels = regression.batch(range(2))["labels"]
    assert labels.dtype == torch.float32 and labels.tolist() == [2.5, 5.0]


def test_pair_task_needs_second_text(tokenizer):
    with pytest.raises(DataError, match="dev-3 of pair task syn-pair has no second text"):
        encode_split([Example("a", None, 0, "dev-3")], tokenizer, 32, "syn-pair")


def test_real_sst2_train_encodes_quickly(glue_dir, tokenizer):
    import time

    from ckd.data.loading import load_split

    examples = load_split("sst2", "train", glue_dir=glue_dir)
    start = time.perf_counter()
    encoded = encode_split(examples, tokenizer, 64, "sst2")
    assert len(encoded) == 67349 and max(encoded.lengths()) <= 64
    assert time.perf_counter() - start < 30
    assert encoded.labels.sum().item() == 37569
