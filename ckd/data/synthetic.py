"""Deterministic GLUE-shaped synthetic tasks and their small WordPiece tokenizer.

They let the whole pipeline run offline on CPU in minutes. A tiny BERT trained from random
initialisation must learn them from 2000 noisy examples in a few hundred steps, so labels depend
on word classes pooled per sentence and on local word order, which such a model learns quickly,
rather than on matching particular tokens across the two texts, which it does not (earlier
versions built on cross-text token matching stayed at chance). Shallow bag-of-words cues get part
of the way; the full rule needs a non-linear combination that a bigger model learns sooner:

* `syn-sentiment` (single sentence, negative/positive): 1-2 review clauses such as
  "the plot was not very good", plus distractor clauses with neutral adjectives. Strong words count
  2, mild words 1, an intensifier adds 1, and a negator ("not", "never", "hardly") flips the sign
  of the sentiment word it precedes. The label is the sign of the sum.
* `syn-pair` (sentence pair, MNLI-shaped: entailment/neutral/contradiction): the premise says that
  someone [never] <verb> 1-3 items of one topic ("alice bought the bread and the green cheese");
  the hypothesis says they <verb> some <topic> or never <verb> any <topic> ("alice bought some
  food"). Neutral when the hypothesis topic is not the premise's; otherwise entailment when both
  sentences have the same polarity and contradiction when they differ (an XOR of the two
  negations; the premise is negated a quarter of the time, so "never" in the hypothesis alone is
  a strong but imperfect cue). As in real NLI data, neutral hypotheses often start with a hedge
  ("maybe": half of the neutral ones, a tenth of the others).
* `syn-similarity` (pair regression, 0..5): each sentence describes an item with a size word from
  five ordered levels, two synonyms each ("tiny"/"miniature" .. "huge"/"giant"); the score is
  5 * (1 - |level_a - level_b| / 4), so 0, 1.25, .., 5. Names, verbs, items (shared half of the
  time), colours and places are distractors that do not change the score.

Label noise: on the TRAIN split only, a fraction `label_noise` (default 0.1) of the rows gets a
wrong label (another class drawn uniformly; for similarity a score drawn uniformly in 0..5). Dev
is clean. A teacher that has learned the rule therefore gives better targets than the noisy hard
labels, which is the situation distillation is meant to exploit.

Every split is generated from its own `random.Random`, seeded from (task, split, seed) through
sha256, so results do not depend on the global RNG or on the other split's size, and the same
seed gives byte-identical examples. Train rows of a smaller size are a prefix of a larger one.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import random
from functools import lru_cache
from importlib import resources

from ckd.data.examples import Example
from ckd.data.tasks import TaskSpec, get_task
from ckd.errors import DataError

DEFAULT_SIZES = {"train": 2000, "dev": 500}
DEFAULT_LABEL_NOISE = 0.1
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MIN_WORDS, MAX_WORDS = 8, 24  # tokens (punctuation included) of a syn-sentiment sentence


@lru_cache(maxsize=1)
def synthetic_words() -> dict:
    """The word classes in `ckd/data/resources/synthetic_words.json`: class -> words,
    "topics" -> {topic name: item words}, "size_levels" -> one tuple of synonyms per level."""
    text = resources.files("ckd.data").joinpath("resources/synthetic_words.json").read_text("utf-8")
    raw = {k: v for k, v in json.loads(text).items() if not k.startswith("_")}
    words = {k: tuple(v) for k, v in raw.items() if k not in ("topics", "size_levels")}
    words["topics"] = {k: tuple(v) for k, v in raw["topics"].items()}
    words["size_levels"] = tuple(tuple(level) for level in raw["size_levels"])
    return words


def synthetic_word_list() -> list[str]:
    """Every word of every class, topic names included."""
    words = synthetic_words()
    flat = [word for key, group in words.items() if key not in ("topics", "size_levels") for word in group]
    flat += [word for level in words["size_levels"] for word in level]
    return flat + [word for topic, items in words["topics"].items() for word in (topic, *items)]


def synthetic_vocab() -> list[str]:
    """Tokenizer vocabulary, one token per id: the special tokens, then the words."""
    text = resources.files("ckd.data").joinpath("resources/synthetic_vocab.txt").read_text("utf-8")
    return text.splitlines()


def synthetic_tokenizer(model_max_length: int = 512):
    """A lower-casing BERT WordPiece tokenizer (`BertTokenizerFast`) over the synthetic vocabulary."""
    from transformers import BertTokenizerFast

    vocab = synthetic_vocab()
    kwargs = dict(do_lower_case=True, model_max_length=model_max_length)
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:  # transformers >= 5
        return BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, **kwargs)
    with resources.as_file(resources.files("ckd.data").joinpath("resources/synthetic_vocab.txt")) as path:
        return BertTokenizerFast(vocab_file=str(path), **kwargs)


def read_synthetic_split(task: str | TaskSpec, split: str, *, synthetic_sizes: dict[str, int] | None = None,
                         synthetic_seed: int = 0, synthetic_noise: float = DEFAULT_LABEL_NOISE) -> list[Example]:
    """`load_split` entry point: sizes per split (defaults train 2000, dev 500), seed and train noise."""
    unknown = sorted(set(synthetic_sizes or {}) - set(DEFAULT_SIZES))
    if unknown:
        raise DataError(f"synthetic_sizes has unknown split(s) {', '.join(unknown)}; use train and dev")
    sizes = {**DEFAULT_SIZES, **(synthetic_sizes or {})}
    task = get_task(task)
    size = sizes.get(split)
    if split not in task.splits or size is None:
        raise DataError(f"synthetic task {task.name} has no split {split!r}; use one of {', '.join(task.splits)}")
    return generate_split(task, split, size=size, seed=synthetic_seed, label_noise=synthetic_noise)


def generate_split(task: str | TaskSpec, split: str, *, size: int, seed: int = 0,
                   label_noise: float = DEFAULT_LABEL_NOISE) -> list[Example]:
    """`size` examples of a synthetic task; `label_noise` applies to the train split only."""
    task = get_task(task)
    if task.name not in _GENERATORS:
        raise DataError(f"task {task.name} is not synthetic; synthetic tasks: {', '.join(_GENERATORS)}")
    if not isinstance(size, int) or size < 1:
        raise DataError(f"synthetic size for {task.name}/{split} is {size!r}; use a positive integer")
    if not 0.0 <= label_noise < 1.0:
        raise DataError(f"synthetic label noise {label_noise!r} is outside [0, 1); use e.g. 0.1")
    rng = random.Random(_split_seed(task.name, split, seed))
    # a stream of its own, so the texts (and which rows are hit) do not depend on the noise rate
    noise_rng = random.Random(_split_seed(task.name, f"{split}/noise", seed))
    generator = _GENERATORS[task.name]
    words = synthetic_words()
    examples = []
    for i in range(size):
        text_a, text_b, label = generator(rng, words)
        hit, wrong = noise_rng.random(), _corrupt(noise_rng, task, label)
        if split == "train" and hit < label_noise:
            label = wrong
        examples.append(Example(text_a=text_a, text_b=text_b, label=label, guid=f"{split}-{i}"))
    return examples


def _split_seed(task_name: str, split: str, seed: int) -> int:
    digest = hashlib.sha256(f"ckd-synthetic|{task_name}|{split}|{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _corrupt(rng: random.Random, task: TaskSpec, label):
    if task.is_regression:
        return round(rng.uniform(0.0, 5.0), 2)
    return rng.choice([k for k in range(task.num_labels) if k != label])


def _sentence(words: list[str]) -> str:
    text = " ".join(words)
    return text.replace(" ,", ",").replace(" .", ".")


# --- syn-sentiment -------------------------------------------------------------------------------

def _sentiment(rng: random.Random, w) -> tuple[str, None, int]:
    label = rng.randrange(2)
    while True:
        tokens, score = _sentiment_candidate(rng, w)
        if MIN_WORDS <= len(tokens) <= MAX_WORDS and score != 0 and (score > 0) == bool(label):
            return _sentence(tokens), None, label


def _sentiment_candidate(rng, w) -> tuple[list[str], int]:
    clauses = []
    score = 0
    for _ in range(rng.randint(1, 2)):
        clause, value = _review_clause(rng, w, sentiment=True)
        clauses.append(clause)
        score += value
    for _ in range(rng.choice((0, 1, 1))):
        clauses.insert(rng.randrange(len(clauses) + 1), _review_clause(rng, w, sentiment=False)[0])
    tokens = list(rng.choice((["honestly", ","], ["overall", ","], ["i", "think"], ["frankly", ","], [], [])))
    for k, clause in enumerate(clauses):
        if k:
            tokens += rng.choice(([","], ["and"], ["but"], ["yet"], ["while"], ["although"]))
        tokens += clause
    tokens.append(".")
    return tokens, score


def _review_clause(rng, w, *, sentiment: bool) -> tuple[list[str], int]:
    tokens = [rng.choice(("the", "this")), rng.choice(w["review_subjects"]), rng.choice(w["linking_verbs"])]
    negated = rng.random() < 0.25
    intensified = rng.random() < 0.3
    if negated:
        tokens.append(rng.choice(w["negators"]))
    if intensified:
        tokens.append(rng.choice(w["intensifiers"]))
    if not sentiment:
        tokens.append(rng.choice(w["neutral_adjectives"]))
        return tokens, 0
    polarity = rng.choice((1, -1))
    strong = rng.random() < 0.5
    key = ("positive_" if polarity > 0 else "negative_") + ("strong" if strong else "mild")
    tokens.append(rng.choice(w[key]))
    value = (2 if strong else 1) + (1 if intensified else 0)
    return tokens, polarity * value * (-1 if negated else 1)


# --- syn-pair ------------------------------------------------------------------------------------

def _pair(rng: random.Random, w) -> tuple[str, str, int]:
    topics = w["topics"]
    label = rng.randrange(3)  # 0 entailment, 1 neutral, 2 contradiction
    name, verb = rng.choice(w["names"]), rng.choice(w["verbs"])
    premise_topic = rng.choice(sorted(topics))
    items = rng.sample(topics[premise_topic], rng.randint(1, 3))
    premise_negated = rng.random() < 0.25
    premise = list(rng.choice(([], [], ["yesterday"], ["last", "week"], ["apparently"])))
    premise += [name] + (["never"] if premise_negated else []) + [verb]
    for k, item in enumerate(items):
        if k:
            premise += ["and"] if k == len(items) - 1 else [","]
        premise += ["the"] + ([rng.choice(w["colours"])] if rng.random() < 0.4 else []) + [item]
    if rng.random() < 0.4:
        premise += ["in", "the", rng.choice(w["places"])]
    premise.append(".")

    if label == 1:
        topic = rng.choice([t for t in sorted(topics) if t != premise_topic])
        hypothesis_negated = rng.random() < 0.5
    else:
        topic = premise_topic
        hypothesis_negated = premise_negated if label == 0 else not premise_negated
    hedged = rng.random() < (0.5 if label == 1 else 0.1)
    hypothesis = ([rng.choice(w["hedges"])] if hedged else []) + [name]
    hypothesis += ["never", verb, "any", topic] if hypothesis_negated else [verb, "some", topic]
    return _sentence(premise), _sentence(hypothesis + ["."]), label


# --- syn-similarity ------------------------------------------------------------------------------

def _similarity(rng: random.Random, w) -> tuple[str, str, float]:
    levels = w["size_levels"]
    top = len(levels) - 1
    distance = rng.randint(0, top)
    level_a = rng.choice([lv for lv in range(top + 1) if lv + distance <= top or lv - distance >= 0])
    level_b = rng.choice([lv for lv in (level_a - distance, level_a + distance) if 0 <= lv <= top])
    item = rng.choice([i for items in w["topics"].values() for i in items])
    other = item if rng.random() < 0.5 else rng.choice([i for items in w["topics"].values() for i in items])
    score = round(5.0 * (1 - distance / top), 2)
    return (_size_sentence(rng, w, rng.choice(levels[level_a]), item),
            _size_sentence(rng, w, rng.choice(levels[level_b]), other), score)


def _size_sentence(rng, w, size: str, item: str) -> str:
    tokens = list(rng.choice(([], [], ["yesterday"], ["last", "week"], ["today"], ["i", "think"])))
    tokens += [rng.choice(w["names"]), rng.choice(w["verbs"]), "the", size, item]
    if rng.random() < 0.5:
        tokens += ["and", "the", rng.choice(w["colours"]), rng.choice(w["topics"][rng.choice(sorted(w["topics"]))])]
    if rng.random() < 0.5:
        tokens += ["in", "the", rng.choice(w["places"])]
    return _sentence(tokens + ["."])


_GENERATORS = {"syn-sentiment": _sentiment, "syn-pair": _pair, "syn-similarity": _similarity}
