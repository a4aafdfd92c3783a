"""GLUE and synthetic task data: registry, readers, `load_split`, tokenisation.

Importing this package never imports `datasets` or `transformers` (the hub reader and the
synthetic tokenizer import them when called).
"""

from ckd.data.encoding import EncodedSplit, encode_split
from ckd.data.examples import Example
from ckd.data.glue_tsv import read_glue_split, read_glue_tsv
from ckd.data.hub import read_hub_split
from ckd.data.loading import SOURCES, data_fingerprint, load_split, resolve_source, subsample
from ckd.data.synthetic import generate_split, synthetic_tokenizer
from ckd.data.tasks import GLUE_TASKS, SYNTHETIC_TASKS, TASKS, TaskSpec, get_task

__all__ = [
    "EncodedSplit", "Example", "GLUE_TASKS", "SOURCES", "SYNTHETIC_TASKS", "TASKS", "TaskSpec",
    "data_fingerprint", "encode_split", "generate_split", "get_task", "load_split", "read_glue_split",
    "read_glue_tsv", "read_hub_split", "resolve_source", "subsample", "synthetic_tokenizer",
]
