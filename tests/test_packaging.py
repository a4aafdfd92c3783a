"""The package as a library: its core install is enough for the losses and the training loop, and a
wheel carries the methods file."""

import json
import subprocess
import sys
import zipfile

import tomllib

from tests.conftest import REPO

EXTRAS_ONLY = ("pandas", "matplotlib", "snakemake", "datasets", "jsonschema", "tensorboard", "nbformat")

TRAIN = """
import json, sys
from ckd.losses import wr_pair, wr_triple, ltr_pair, ltr_triple
from ckd.cli import main
code = main(["finetune", "task=syn-pair", "output_dir=" + sys.argv[1], "model.init=random", "model.tokenizer=synthetic",
             "model.layers=1", "model.hidden=16", "model.heads=2", "model.ffn=32", "data.synthetic_train_size=16",
             "data.synthetic_dev_size=8", "data.max_length=16", "train.max_steps=2", "train.batch_size=8",
             "train.progress=false", "train.tensorboard=false", "train.threads=1"])
print(json.dumps({"code": code, "modules": sorted(m for m in sys.modules if "." not in m)}))
"""


def test_training_and_the_losses_import_no_extra(tmp_path):
    """`ckd finetune` and `from ckd.losses import ...` run without importing any package that only an
    extra (workflow, hub, tensorboard, notebooks) installs; so the core dependencies suffice."""
    done = subprocess.run([sys.executable, "-c", TRAIN, str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0
    assert sorted(set(EXTRAS_ONLY) & set(result["modules"])) == []


def test_extras_packages_are_not_core_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {dep.split(">")[0].split("=")[0].split("<")[0].strip() for dep in project["dependencies"]}
    assert not core & {"pandas", "matplotlib", "snakemake", "datasets", "jsonschema", "tensorboard"}
    assert {"workflow", "hub", "notebooks", "dev"} <= set(project["optional-dependencies"])


def test_wheel_carries_the_methods_file(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [wheel] = tmp_path.glob("ckd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ckd/resources/methods.yaml" in names
    assert zipfile.ZipFile(wheel).read("ckd/resources/methods.yaml") == (REPO / "config/methods.yaml").read_bytes()
