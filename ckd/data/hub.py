"""Reader for GLUE on the Hugging Face hub (`nyu-mll/glue`).

`datasets` is imported inside the function: importing `ckd` must never touch the network or pay
for importing `datasets`. With HF_HUB_OFFLINE=1 this works only for data already in the cache
(or a local dataset folder passed as `hub_dataset`); otherwise it fails with a DataError.
"""

from __future__ import annotations

from ckd.data.examples import Example
from ckd.data.tasks import TaskSpec, get_task
from ckd.errors import DataError

HUB_DATASET = "nyu-mll/glue"
HUB_SPLITS = {
    "train": "train",
    "dev": "validation",
    "dev_matched": "validation_matched",
    "dev_mismatched": "validation_mismatched",
}


def read_hub_split(task: str | TaskSpec, split: str, *, hub_dataset: str = HUB_DATASET,
                   cache_dir: str | None = None) -> list[Example]:
    """One split of one GLUE task from the hub (or a local copy), as Examples in dataset order."""
    task = get_task(task)
    if task.hub_config is None:
        raise DataError(f"task {task.name} is synthetic and is not on the hub; use source='synthetic'")
    if split not in task.splits:
        raise DataError(f"task {task.name} has no split {split!r}; use one of {', '.join(task.splits)}")
    hub_split = HUB_SPLITS[split]
    from ckd.prefetch import is_hub_id, pinned_snapshot

    # Under $CKD_HUB_MANIFEST (cluster jobs after `ckd prefetch`): the pinned snapshot in the local cache.
    source = (pinned_snapshot(hub_dataset, "dataset") if is_hub_id(hub_dataset) else None) or hub_dataset
    try:
        import datasets
    except ImportError:
        raise DataError("source='hub' needs the 'datasets' package; pip install datasets, "
                        "or use source='glue_dir'") from None
    try:
        dataset = datasets.load_dataset(source, task.hub_config, split=hub_split, cache_dir=cache_dir)
    except Exception as exc:  # network, offline mode, missing cache: all mean "not available here"
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise DataError(
            f"cannot load {hub_dataset} config {task.hub_config!r} split {hub_split!r} from the Hugging Face "
            f"hub ({type(exc).__name__}: {reason}); check network access and HF_HUB_OFFLINE, or use a "
            f"local GLUE folder (source='glue_dir' with GLUE_DIR set)") from None
    return _to_examples(dataset, task, split, hub_dataset)


def _to_examples(dataset, task: TaskSpec, split: str, hub_dataset: str) -> list[Example]:
    missing = [f for f in (*task.text_fields, "label") if f not in dataset.column_names]
    if missing:
        raise DataError(f"{hub_dataset} {task.hub_config}/{split} lacks column(s) {missing}; "
                        f"expected {list(task.text_fields) + ['label']}")
    if not task.is_regression:
        names = getattr(dataset.features["label"], "names", None)
        if names is not None and tuple(names) != task.labels:
            raise DataError(f"{hub_dataset} {task.hub_config} labels are {names}, expected {list(task.labels)} "
                            f"in that order; use the official nyu-mll/glue dataset")
    examples = []
    columns = [dataset[f] for f in task.text_fields]
    for i, label in enumerate(dataset["label"]):
        if task.is_regression:
            label = float(label)
        elif not 0 <= int(label) < task.num_labels:
            raise DataError(f"{hub_dataset} {task.hub_config}/{split} row {i}: label {label} is out of range "
                            f"(unlabelled test split?); use train or a dev split")
        else:
            label = int(label)
        text_b = columns[1][i] if len(columns) > 1 else None
        examples.append(Example(text_a=columns[0][i], text_b=text_b, label=label, guid=f"{split}-{i}"))
    if not examples:
        raise DataError(f"{hub_dataset} {task.hub_config}/{split} has no examples")
    return examples
