"""Registry of the nine GLUE tasks and the synthetic tasks: `TaskSpec`, `TASKS`, `get_task`.

Label order is the OFFICIAL order, i.e. the order of the `label` ClassLabel in the Hugging Face
`nyu-mll/glue` dataset, so that hub labels can be used as indices directly and a model trained on
one source scores correctly on another. Readers map label *strings* to indices by name
(`TaskSpec.label_index`), never by the order in which labels first appear in a file.

MNLI pitfall: the hub order is (entailment, neutral, contradiction). Several older code bases
(e.g. the original BERT `run_classifier.py` and transformers' legacy `MnliProcessor`) use
(contradiction, entailment, neutral). Mixing the two silently swaps classes: a model or teacher
logits produced under one order score near zero under the other. Everything in `ckd` uses the hub
order below.

Model selection (`selection_metric`) uses the metric the paper reports for the task, so the
checkpoint we pick is the one best on the number we publish: CoLA mcc, MRPC f1, QQP accuracy,
STS-B spearman, accuracy elsewhere.

`text_fields` are the column names of the hub dataset (e.g. MNLI `premise`, `hypothesis`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ckd.errors import DataError


@dataclass(frozen=True)
class TaskSpec:
    name: str
    display: str
    text_fields: tuple[str, ...]
    labels: tuple[str, ...] | None
    is_regression: bool
    metrics: tuple[str, ...]
    selection_metric: str
    dev_splits: tuple[str, ...]
    report: tuple[tuple[str, str, str], ...]
    glue_dir: str | None
    hub_config: str | None

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.labels or ())

    @property
    def is_pair(self) -> bool:
        return len(self.text_fields) == 2

    @property
    def is_synthetic(self) -> bool:
        return self.glue_dir is None

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train",) + self.dev_splits

    def label_index(self, label_name: str) -> int:
        """Index of a label by its official name (KeyError if unknown)."""
        if self.labels is None or label_name not in self.labels:
            raise KeyError(label_name)
        return self.labels.index(label_name)


def _classification(name, display, text_fields, labels, metrics, selection, glue_dir, hub_config,
                    report_metric=None, dev_splits=("dev",)):
    report_metric = report_metric or selection
    if dev_splits == ("dev",):
        report = ((display, "dev", report_metric),)
    else:
        report = tuple((f"{display}-{suffix}", split, report_metric)
                       for suffix, split in zip(("m", "mm"), dev_splits))
    return TaskSpec(name=name, display=display, text_fields=tuple(text_fields), labels=tuple(labels),
                    is_regression=False, metrics=tuple(metrics), selection_metric=selection,
                    dev_splits=tuple(dev_splits), report=report, glue_dir=glue_dir,
                    hub_config=hub_config)


def _regression(name, display, text_fields, glue_dir, hub_config):
    return TaskSpec(name=name, display=display, text_fields=tuple(text_fields), labels=None,
                    is_regression=True, metrics=("pearson", "spearman"), selection_metric="spearman",
                    dev_splits=("dev",), report=((display, "dev", "spearman"),), glue_dir=glue_dir,
                    hub_config=hub_config)


_ACC = ("accuracy",)
_F1_ACC = ("f1", "accuracy")

_ALL = (
    _classification("cola", "CoLA", ("sentence",), ("unacceptable", "acceptable"), ("mcc",), "mcc",
                    "CoLA", "cola"),
    _classification("sst2", "SST-2", ("sentence",), ("negative", "positive"), _ACC, "accuracy",
                    "SST-2", "sst2"),
    _classification("mrpc", "MRPC", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"),
                    _F1_ACC, "f1", "MRPC", "mrpc"),
    _regression("stsb", "STS-B", ("sentence1", "sentence2"), "STS-B", "stsb"),
    _classification("qqp", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"),
                    _F1_ACC, "accuracy", "QQP", "qqp"),
    _classification("mnli", "MNLI", ("premise", "hypothesis"),
                    ("entailment", "neutral", "contradiction"), _ACC, "accuracy", "MNLI", "mnli",
                    dev_splits=("dev_matched", "dev_mismatched")),
    _classification("qnli", "QNLI", ("question", "sentence"), ("entailment", "not_entailment"), _ACC,
                    "accuracy", "QNLI", "qnli"),
    _classification("rte", "RTE", ("sentence1", "sentence2"), ("entailment", "not_entailment"), _ACC,
                    "accuracy", "RTE", "rte"),
    _classification("wnli", "WNLI", ("sentence1", "sentence2"), ("not_entailment", "entailment"),
                    _ACC, "accuracy", "WNLI", "wnli"),
    _classification("syn-sentiment", "Syn-Sentiment", ("sentence",), ("negative", "positive"), _ACC,
                    "accuracy", None, None),
    _classification("syn-pair", "Syn-Pair", ("sentence1", "sentence2"),
                    ("entailment", "neutral", "contradiction"), _ACC, "accuracy", None, None),
    _regression("syn-similarity", "Syn-Similarity", ("sentence1", "sentence2"), None, None),
)

TASKS: dict[str, TaskSpec] = {task.name: task for task in _ALL}
GLUE_TASKS: tuple[str, ...] = tuple(t.name for t in _ALL if not t.is_synthetic)
SYNTHETIC_TASKS: tuple[str, ...] = tuple(t.name for t in _ALL if t.is_synthetic)


def _normalise(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


_BY_ALIAS: dict[str, TaskSpec] = {}
for _task in _ALL:
    _BY_ALIAS[_normalise(_task.name)] = _task
    _BY_ALIAS[_normalise(_task.display)] = _task


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The task for a canonical id or display name, case- and punctuation-insensitive ("SST-2", "sst2")."""
    if isinstance(name, TaskSpec):
        return name
    task = _BY_ALIAS.get(_normalise(str(name)))
    if task is None:
        known = ", ".join(TASKS)
        raise DataError(f"unknown task {name!r}; known tasks: {known}")
    return task
