import os
import subprocess
import sys
import types

import pytest

from ckd.data.examples import Example
from ckd.data.loading import data_fingerprint, load_split, resolve_source, subsample
from ckd.errors import DataError
from tests.conftest import REPO


def test_load_split_reads_glue_dir_argument_and_env(glue_dir, monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    from_argument = load_split("rte", "dev", glue_dir=glue_dir)
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    from_env = load_split("RTE", "dev")
    assert len(from_argument) == 277 and from_argument == from_env


def test_no_glue_dir_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    with pytest.raises(DataError, match="set GLUE_DIR"):
        load_split("rte", "dev")
    with pytest.raises(DataError, match=f"GLUE folder {tmp_path}/nowhere does not exist"):
        load_split("rte", "dev", glue_dir=tmp_path / "nowhere")


def test_subsample_is_seeded_and_keeps_order(glue_dir):
    full = load_split("wnli", "train", glue_dir=glue_dir)
    part = load_split("wnli", "train", glue_dir=glue_dir, max_examples=100, subsample_seed=3)
    again = load_split("wnli", "train", glue_dir=glue_dir, max_examples=100, subsample_seed=3)
    other = load_split("wnli", "train", glue_dir=glue_dir, max_examples=100, subsample_seed=4)
    assert len(part) == 100 and part == again and part != other
    positions = [full.index(ex) for ex in part]
    assert positions == sorted(positions)
    assert load_split("wnli", "dev", glue_dir=glue_dir, max_examples=10_000) == load_split("wnli", "dev", glue_dir=glue_dir)


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_bad_max_examples(bad):
    with pytest.raises(DataError, match="max_examples"):
        subsample([Example("a", None, 0, "x-0")] * 3, bad)


def test_data_fingerprint_covers_text_and_labels_not_guids():
    rows = [Example("a b", None, 0, "f:1"), Example("c", "d", 1, "f:2")]
    base = data_fingerprint(rows)
    assert len(base) == 64
    assert data_fingerprint([Example("a b", None, 0, "other:9"), rows[1]]) == base
    assert data_fingerprint([Example("a b", None, 1, "f:1"), rows[1]]) != base
    assert data_fingerprint([Example("a c", None, 0, "f:1"), rows[1]]) != base
    assert data_fingerprint(rows[::-1]) != base
    # the field boundary counts: ("ab", None) is not ("a", "b")
    assert data_fingerprint([Example("ab", None, 0, "")]) != data_fingerprint([Example("a", "b", 0, "")])


def test_unknown_source_split_and_option(glue_dir):
    with pytest.raises(DataError, match="unknown data source 'web'"):
        load_split("rte", "dev", source="web")
    with pytest.raises(DataError, match="task rte has no split 'test'"):
        load_split("rte", "test", glue_dir=glue_dir)
    with pytest.raises(DataError, match="unknown data option.*synthetic_size\\b"):
        load_split("syn-pair", "dev", source="synthetic", synthetic_size=10)


def test_auto_source(glue_dir, tmp_path):
    assert resolve_source("syn-pair", "auto") == "synthetic"
    assert resolve_source("rte", "auto", glue_dir) == "glue_dir"
    assert resolve_source("mnli", "auto", tmp_path) == "hub"  # no MNLI folder there
    assert len(load_split("syn-sentiment", "dev", source="auto")) == 500


def test_hub_unreachable_is_a_data_error(monkeypatch):
    calls = []

    def unreachable(path, name, split, cache_dir=None):
        calls.append((path, name, split))
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=unreachable))
    with pytest.raises(DataError, match=r"cannot load nyu-mll/glue config 'mnli' split 'validation_mismatched'.*"
                                        r"ConnectionError.*GLUE_DIR"):
        load_split("mnli", "dev_mismatched", source="hub")
    assert calls == [("nyu-mll/glue", "mnli", "validation_mismatched")]


def test_hub_rows_become_examples(monkeypatch):
    class FakeLabel:
        names = ["entailment", "not_entailment"]

    class FakeDataset:
        column_names = ["sentence1", "sentence2", "label", "idx"]
        features = {"label": FakeLabel()}

        def __getitem__(self, key):
            return {"sentence1": ["A.", "B."], "sentence2": ["C.", "D."], "label": [1, 0]}[key]

    fake = types.SimpleNamespace(load_dataset=lambda *a, **k: FakeDataset())
    monkeypatch.setitem(sys.modules, "datasets", fake)
    examples = load_split("rte", "dev", source="hub")
    assert examples == [Example("A.", "C.", 1, "dev-0"), Example("B.", "D.", 0, "dev-1")]
    FakeLabel.names = ["not_entailment", "entailment"]  # a copy with another label order is refused
    with pytest.raises(DataError, match="labels are"):
        load_split("rte", "dev", source="hub")


def test_real_offline_hub_fails_fast_without_importing_datasets_early(tmp_path):
    script = (
        "import sys\n"
        "import ckd.data\n"
        "assert 'datasets' not in sys.modules and 'transformers' not in sys.modules\n"
        "from ckd.errors import DataError\n"
        "try:\n"
        "    ckd.data.load_split('rte', 'dev', source='hub')\n"
        "except DataError as exc:\n"
        "    print('DataError:', exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "DataError: cannot load nyu-mll/glue config 'rte' split 'validation'" in result.stdout
