"""Deterministic GLUE-shaped synthetic tasks and their small WordPiece tokenizer.

They let the whole pipeline run offline on CPU in minutes, and they are built so that a tiny
transformer trained from random initialisation learns them well above chance, while shallow
bag-of-words cues alone get only part of the way, so a deeper teacher has something to teach:

* `syn-sentiment` (single sentence, negative/positive): 1-3 review clauses such as
  "the plot was not very good"; strong words count 2, mild words 1, an intensifier adds 1, and a
  negator ("not", "never", "hardly") flips the sign of the next sentiment word. Clauses with
  neutral adjectives (also sometimes negated) and fillers are distractors. The label is the sign
  of the sum.
* `syn-pair` (sentence pair, MNLI-shaped: entailment/neutral/contradiction): the premise states
  2-3 facts "<name> [never] <verb> the [colour] <object> [in the <place>]". The hypothesis states
  one fact: entailment if the premise states it with the same polarity, contradiction if with the
  opposite polarity, neutral if the premise does not state it (new object, new name, other verb,
  or the name of one fact bound to the object of another).
* `syn-similarity` (pair regression, 0..5): two sentences built from five content slots (name,
  verb, object, colour, place, in varying word order); the score is the weighted share of slots
  they have in common (weights 1.25, 1.0, 1.25, 0.75, 0.75).

Label noise: on the TRAIN split only, a fraction `label_noise` (default 0.15) of the rows gets a
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
DEFAULT_LABEL_NOISE = 0.15
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MIN_WORDS, MAX_WORDS = 8, 24
SIMILARITY_WEIGHTS = {"name": 1.25, "verb": 1.0, "object": 1.25, "colour": 0.75, "place": 0.75}


@lru_cache(maxsize=1)
def synthetic_words() -> dict[str, tuple[str, ...]]:
    """The word classes shipped in `ckd/data/resources/synthetic_words.json`."""
    text = resources.files("ckd.data").joinpath("resources/synthetic_words.json").read_text("utf-8")
    return {k: tuple(v) for k, v in json.loads(text).items() if not k.startswith("_")}


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
    sizes = {**DEFAULT_SIZES, **(synthetic_sizes or {})}
    task = get_task(task)
    size = sizes.get(split)
    if split not in task.splits or size is None:
        raise DataError(f"synthetic task {task.name} has no split {split!r}; use one of {', '.join(task.splits)}")
    return generate_split(task, split, size=size, seed=synthetic_seed, label_noise=synthetic_noise)


def generate_split(task: str | TaskSpec, split: str, *, size: int, seed: int = 0,
                   label_noise: float = DEFAULT_LABEL_NOISE) -> list[Example]:
    task = get_task(task)
    if task.name not in _GENERATORS:
        raise DataError(f"task {task.name} is not synthetic; synthetic tasks: {', '.join(_GENERATORS)}")
    if not isinstance(size, int) or size < 1:
        raise DataError(f"synthetic size for {task.name}/{split} is {size!r}; use a positive integer")
    if not 0.0 <= label_noise < 1.0:
        raise DataError(f"synthetic label noise {label_noise!r} is outside [0, 1); use e.g. 0.15")
    rng = random.Random(_split_seed(task.name, split, seed))
    generator = _GENERATORS[task.name]
    words = synthetic_words()
    noisy = split == "train" and label_noise > 0
    examples = []
    for i in range(size):
        text_a, text_b, label = generator(rng, words)
        if noisy and rng.random() < label_noise:
            label = _corrupt(rng, task, label)
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
    for _ in range(rng.randint(1, 3)):
        clause, value = _review_clause(rng, w, sentiment=True)
        clauses.append(clause)
        score += value
    for _ in range(rng.choice((0, 0, 1, 2))):
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
    while True:
        n_facts = rng.randint(2, 3)
        names = rng.sample(w["names"], n_facts)
        objects = rng.sample(w["objects"], n_facts)
        facts = [(name, rng.choice(w["verbs"]), obj, rng.random() < 0.25) for name, obj in zip(names, objects)]
        premise = []
        for k, fact in enumerate(facts):
            if k:
                premise += rng.choice(([","], ["and"], ["while"], [",", "then"]))
            premise += _fact_tokens(rng, w, fact, decorate=True)
        premise.append(".")
        if MIN_WORDS <= len(premise) <= MAX_WORDS:
            break
    label = rng.randrange(3)  # 0 entailment, 1 neutral, 2 contradiction
    name, verb, obj, negated = rng.choice(facts)
    if label == 1:
        name, verb, obj = _unstated_fact(rng, w, facts, (name, verb, obj))
        negated = rng.random() < 0.4
    elif label == 2:
        negated = not negated
    hypothesis = list(rng.choice(([], [], ["i", "think"], ["apparently"], ["maybe"])))
    hypothesis += _fact_tokens(rng, w, (name, verb, obj, negated), decorate=False) + ["."]
    return _sentence(premise), _sentence(hypothesis), label


def _fact_tokens(rng, w, fact, *, decorate: bool) -> list[str]:
    name, verb, obj, negated = fact
    tokens = [name] + (["never"] if negated else []) + [verb, "the"]
    if decorate and rng.random() < 0.5:
        tokens.append(rng.choice(w["colours"]))
    tokens.append(obj)
    if decorate and rng.random() < 0.4:
        tokens += ["in", "the", rng.choice(w["places"])]
    return tokens


def _unstated_fact(rng, w, facts, chosen) -> tuple[str, str, str]:
    name, verb, obj = chosen
    stated = {(f[0], f[1], f[2]) for f in facts}
    kind = rng.choices(("object", "name", "verb", "swap"), weights=(35, 25, 20, 20))[0]
    while True:
        if kind == "object":
            candidate = (name, verb, rng.choice(w["objects"]))
        elif kind == "name":
            candidate = (rng.choice(w["names"]), verb, obj)
        elif kind == "verb":
            candidate = (name, rng.choice(w["verbs"]), obj)
        else:  # binds the name of one fact to the object of another: needs the pairing, not the words
            other = rng.choice([f for f in facts if f[0] != name])
            candidate = (name, rng.choice((verb, other[1])), other[2])
        if candidate not in stated:
            return candidate


# --- syn-similarity ------------------------------------------------------------------------------

def _similarity(rng: random.Random, w) -> tuple[str, str, float]:
    slots_a = _random_slots(rng, w)
    shared = rng.sample(list(SIMILARITY_WEIGHTS), rng.randint(0, len(SIMILARITY_WEIGHTS)))
    slots_b = {}
    for slot, value in slots_a.items():
        if slot in shared:
            slots_b[slot] = value
        else:
            slots_b[slot] = rng.choice([v for v in w[_SLOT_CLASS[slot]] if v != value])
    score = round(sum(SIMILARITY_WEIGHTS[slot] for slot in shared), 2)
    return _slot_sentence(rng, slots_a), _slot_sentence(rng, slots_b), score


_SLOT_CLASS = {"name": "names", "verb": "verbs", "object": "objects", "colour": "colours", "place": "places"}


def _random_slots(rng, w) -> dict[str, str]:
    return {slot: rng.choice(w[cls]) for slot, cls in _SLOT_CLASS.items()}


def _slot_sentence(rng, s) -> str:
    core = [s["name"], s["verb"], "the", s["colour"], s["object"]]
    place = ["in", "the", s["place"]]
    tokens = core + place if rng.random() < 0.6 else place + [","] + core
    prefix = rng.choice(([], [], ["yesterday"], ["last", "week"], ["today"], ["apparently"], ["i", "think"]))
    return _sentence(list(prefix) + tokens + ["."])


_GENERATORS = {"syn-sentiment": _sentiment, "syn-pair": _pair, "syn-similarity": _similarity}
