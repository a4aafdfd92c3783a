import pytest

from ckd.data.tasks import GLUE_TASKS, SYNTHETIC_TASKS, TASKS, get_task
from ckd.errors import DataError


@pytest.mark.parametrize("alias, name", [
    ("SST-2", "sst2"), ("sst-2", "sst2"), ("sst2", "sst2"), ("STS-B", "stsb"), ("stsb", "stsb"),
    ("CoLA", "cola"), ("MNLI", "mnli"), ("syn-pair", "syn-pair"), ("Syn-Sentiment", "syn-sentiment"),
])
def test_get_task_accepts_ids_and_display_names(alias, name):
    assert get_task(alias).name == name


def test_unknown_task_lists_known_ones():
    with pytest.raises(DataError, match=r"unknown task 'sst-3'.*cola.*syn-similarity"):
        get_task("sst-3")


def test_registry_covers_glue_and_synthetic():
    assert GLUE_TASKS == ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")
    assert SYNTHETIC_TASKS == ("syn-sentiment", "syn-pair", "syn-similarity")
    assert set(TASKS) == set(GLUE_TASKS) | set(SYNTHETIC_TASKS)


@pytest.mark.parametrize("name, labels", [
    # the HF nyu-mll/glue ClassLabel order
    ("mnli", ("entailment", "neutral", "contradiction")),
    ("rte", ("entailment", "not_entailment")),
    ("qnli", ("entailment", "not_entailment")),
    ("cola", ("unacceptable", "acceptable")),
    ("sst2", ("negative", "positive")),
    ("mrpc", ("not_equivalent", "equivalent")),
    ("qqp", ("not_duplicate", "duplicate")),
    ("wnli", ("not_entailment", "entailment")),
])
def test_official_label_order(name, labels):
    task = get_task(name)
    assert task.labels == labels
    assert task.num_labels == len(labels)
    assert [task.label_index(label) for label in labels] == list(range(len(labels)))


def test_regression_tasks():
    for name in ("stsb", "syn-similarity"):
        task = get_task(name)
        assert task.is_regression and task.labels is None and task.num_labels == 1
        assert task.metrics == ("pearson", "spearman") and task.selection_metric == "spearman"
    with pytest.raises(KeyError):
        get_task("stsb").label_index("entailment")


@pytest.mark.parametrize("name, metrics, selection", [
    ("cola", ("mcc",), "mcc"), ("sst2", ("accuracy",), "accuracy"), ("mrpc", ("f1", "accuracy"), "f1"),
    ("qqp", ("f1", "accuracy"), "accuracy"), ("mnli", ("accuracy",), "accuracy"),
    ("qnli", ("accuracy",), "accuracy"), ("rte", ("accuracy",), "accuracy"), ("wnli", ("accuracy",), "accuracy"),
])
def test_metrics_and_selection(name, metrics, selection):
    task = get_task(name)
    assert task.metrics == metrics and task.selection_metric == selection
    assert selection in task.metrics


def test_report_columns_match_paper_table():
    columns = [column for name in GLUE_TASKS for column in get_task(name).report]
    assert columns == [
        ("CoLA", "dev", "mcc"), ("SST-2", "dev", "accuracy"), ("MRPC", "dev", "f1"),
        ("STS-B", "dev", "spearman"), ("QQP", "dev", "accuracy"),
        ("MNLI-m", "dev_matched", "accuracy"), ("MNLI-mm", "dev_mismatched", "accuracy"),
        ("QNLI", "dev", "accuracy"), ("RTE", "dev", "accuracy"), ("WNLI", "dev", "accuracy"),
    ]
    for name in SYNTHETIC_TASKS:
        assert len(get_task(name).report) == 1


def test_splits_and_sources():
    mnli = get_task("mnli")
    assert mnli.dev_splits == ("dev_matched", "dev_mismatched")
    assert mnli.splits == ("train", "dev_matched", "dev_mismatched")
    assert (mnli.glue_dir, mnli.hub_config) == ("MNLI", "mnli")
    assert get_task("sst2").glue_dir == "SST-2" and get_task("stsb").hub_config == "stsb"
    assert get_task("syn-pair").glue_dir is None and get_task("syn-pair").hub_config is None
    assert get_task("syn-pair").is_pair and not get_task("syn-sentiment").is_pair
