from collections import Counter

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression, Ridge

from ckd.data.loading import data_fingerprint, load_split
from ckd.data.synthetic import SPECIAL_TOKENS, generate_split, synthetic_tokenizer, synthetic_vocab, synthetic_word_list, synthetic_words
from ckd.data.tasks import get_task
from ckd.errors import DataError

CLASSIFICATION = ["syn-sentiment", "syn-pair"]


@pytest.mark.parametrize("task", ["syn-sentiment", "syn-pair", "syn-similarity"])
def test_same_seed_same_bytes_other_seed_other_data(task):
    a = load_split(task, "train", source="synthetic", synthetic_sizes={"train": 300})
    b = load_split(task, "train", source="synthetic", synthetic_sizes={"train": 300})
    c = load_split(task, "train", source="synthetic", synthetic_sizes={"train": 300}, synthetic_seed=1)
    assert a == b and data_fingerprint(a) == data_fingerprint(b)
    assert data_fingerprint(a) != data_fingerprint(c)
    assert len(a) == 300 and a[0].guid == "train-0"


def test_generation_ignores_global_rng_and_other_split_sizes():
    import random

    random.seed(123)
    np.random.seed(123)
    first = generate_split("syn-pair", "dev", size=50)
    random.seed(999)
    assert generate_split("syn-pair", "dev", size=50) == first
    # a smaller split is a prefix of a larger one; dev does not depend on train's size
    assert generate_split("syn-pair", "dev", size=80)[:50] == first
    assert generate_split("syn-pair", "train", size=10) == generate_split("syn-pair", "train", size=40)[:10]


@pytest.mark.parametrize("task, words_a, words_b", [
    ("syn-sentiment", (6, 24), None), ("syn-pair", (4, 24), (4, 8)), ("syn-similarity", (5, 24), (5, 24)),
])
def test_default_sizes_and_label_shapes(task, words_a, words_b):
    spec = get_task(task)
    train = load_split(task, "train", source="synthetic")
    dev = load_split(task, "dev", source="synthetic")
    assert (len(train), len(dev)) == (2000, 500)
    for ex in dev:
        assert words_a[0] <= len(ex.text_a.split()) <= words_a[1]
        if words_b is None:
            assert ex.text_b is None
        else:
            assert words_b[0] <= len(ex.text_b.split()) <= words_b[1]
        if spec.is_regression:
            assert isinstance(ex.label, float) and 0.0 <= ex.label <= 5.0
        else:
            assert ex.label in range(spec.num_labels)
    counts = Counter(ex.label for ex in dev)
    # roughly balanced classes; similarity uses all five grades 0, 1.25, .., 5
    assert len(counts) == (5 if spec.is_regression else spec.num_labels)
    assert min(counts.values()) > 0.7 * len(dev) / len(counts)


def test_label_noise_only_on_train():
    clean = generate_split("syn-pair", "train", size=2000, label_noise=0.0)
    noisy = generate_split("syn-pair", "train", size=2000, label_noise=0.1)
    assert [(ex.text_a, ex.text_b) for ex in clean] == [(ex.text_a, ex.text_b) for ex in noisy]
    flipped = sum(a.label != b.label for a, b in zip(clean, noisy))
    assert 0.08 * 2000 < flipped < 0.12 * 2000
    default = load_split("syn-pair", "train", source="synthetic")
    assert [ex.label for ex in default] == [ex.label for ex in noisy]  # default noise is 0.1
    dev_clean = generate_split("syn-pair", "dev", size=200, label_noise=0.0)
    assert generate_split("syn-pair", "dev", size=200, label_noise=0.5) == dev_clean  # dev is always clean
    with pytest.raises(DataError, match="label noise"):
        generate_split("syn-pair", "train", size=10, label_noise=1.5)


def _words(text):
    return text.replace(",", " ").rstrip(".").split()


def test_sentiment_labels_follow_the_documented_rule():
    w = synthetic_words()
    value = {word: sign * strength for sign, kind in ((1, "positive"), (-1, "negative"))
             for strength, grade in ((2, "strong"), (1, "mild")) for word in w[f"{kind}_{grade}"]}
    for ex in generate_split("syn-sentiment", "dev", size=300):
        total, flip, boost = 0, 1, 0
        for word in _words(ex.text_a):
            if word in w["negators"]:
                flip = -1
            elif word in w["intensifiers"]:
                boost = 1
            elif word in value:  # an intensifier adds 1 to the magnitude, a negator flips the sign
                total += flip * (value[word] + boost * (1 if value[word] > 0 else -1))
                flip, boost = 1, 0
            elif word in w["neutral_adjectives"]:
                flip, boost = 1, 0
        assert ex.label == int(total > 0) and total != 0


def test_pair_and_similarity_labels_follow_the_documented_rules():
    w = synthetic_words()
    topic_of = {item: topic for topic, items in w["topics"].items() for item in items}
    for ex in generate_split("syn-pair", "dev", size=300):
        premise, hypothesis = _words(ex.text_a), _words(ex.text_b)
        same_polarity = ("never" in premise) == ("never" in hypothesis)
        if hypothesis[-1] not in {topic_of[t] for t in premise if t in topic_of}:
            assert ex.label == 1  # neutral
        else:
            assert ex.label == (0 if same_polarity else 2)
    level_of = {word: k for k, level in enumerate(w["size_levels"]) for word in level}
    for ex in generate_split("syn-similarity", "dev", size=300):
        level_a, level_b = (next(level_of[t] for t in _words(text) if t in level_of) for text in (ex.text_a, ex.text_b))
        assert ex.label == 5.0 * (1 - abs(level_a - level_b) / 4)


def _bag_of_words(examples, binary=False):
    # the pair is one bag; binary presence lets a linear model see how much the two texts overlap
    return [f"{ex.text_a} {ex.text_b or ''}" for ex in examples], CountVectorizer(binary=binary)


@pytest.mark.parametrize("task, min_accuracy", [("syn-sentiment", 0.62), ("syn-pair", 0.48)])
def test_bag_of_words_beats_chance(task, min_accuracy):
    train = load_split(task, "train", source="synthetic")
    dev = load_split(task, "dev", source="synthetic")
    texts, vectorizer = _bag_of_words(train, binary=True)
    model = LogisticRegression(max_iter=1000).fit(vectorizer.fit_transform(texts), [ex.label for ex in train])
    dev_texts, _ = _bag_of_words(dev)
    accuracy = np.mean(model.predict(vectorizer.transform(dev_texts)) == [ex.label for ex in dev])
    chance = 1 / get_task(task).num_labels
    assert accuracy >= min_accuracy > chance + 0.08


def test_bag_of_words_predicts_similarity():
    train = load_split("syn-similarity", "train", source="synthetic")
    dev = load_split("syn-similarity", "dev", source="synthetic")
    texts, vectorizer = _bag_of_words(train, binary=True)
    model = Ridge(alpha=1.0).fit(vectorizer.fit_transform(texts), [ex.label for ex in train])
    dev_texts, _ = _bag_of_words(dev)
    r = pearsonr(model.predict(vectorizer.transform(dev_texts)), [ex.label for ex in dev])[0]
    assert r > 0.45


def test_vocab_resource_matches_word_classes():
    words = synthetic_word_list()
    assert len(words) == len(set(words)), "word classes must be disjoint"
    assert set(synthetic_words()["topics"]["food"]) >= {"bread", "cheese"}
    vocab = synthetic_vocab()
    assert tuple(vocab[:5]) == SPECIAL_TOKENS
    assert vocab[5:] == sorted(words)


def test_tokenizer_covers_generated_text_and_round_trips(tmp_path):
    from transformers import AutoTokenizer, BertTokenizerFast

    tokenizer = synthetic_tokenizer()
    assert isinstance(tokenizer, BertTokenizerFast)
    assert tokenizer.pad_token_id == 0 and tokenizer.convert_ids_to_tokens([1, 2, 3, 4]) == list(SPECIAL_TOKENS[1:])
    assert len(tokenizer) == len(synthetic_vocab())
    texts = [t for task in ("syn-sentiment", "syn-pair", "syn-similarity")
             for ex in generate_split(task, "dev", size=100) for t in (ex.text_a, ex.text_b) if t]
    ids = tokenizer(texts)["input_ids"]
    assert all(tokenizer.unk_token_id not in row for row in ids)
    assert tokenizer("The PLOT was Good.")["input_ids"] == tokenizer("the plot was good .")["input_ids"]

    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert reloaded(texts[:20], texts[20:40])["input_ids"] == tokenizer(texts[:20], texts[20:40])["input_ids"]


def test_bad_synthetic_requests():
    with pytest.raises(DataError, match="no split 'dev_matched'"):
        load_split("syn-pair", "dev_matched", source="synthetic")
    with pytest.raises(DataError, match="positive integer"):
        load_split("syn-pair", "dev", source="synthetic", synthetic_sizes={"dev": 0})
    with pytest.raises(DataError, match="synthetic_sizes has unknown split.*validation"):
        load_split("syn-pair", "dev", source="synthetic", synthetic_sizes={"validation": 10})
    with pytest.raises(DataError, match="GLUE task"):
        load_split("rte", "dev", source="synthetic")
