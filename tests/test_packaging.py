"""The package as a library: its core install is enough for the losses and the training loop, and a
wheel carries the methods file."""

import json
import os
import re
import subprocess
import sys
import zipfile

import tomllib

from tests.conftest import REPO

TORCH = re.search(r"^TORCH \?= (\S+)$", (REPO / "Makefile").read_text(), re.M).group(1)  # the CPU build make setup installs
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


LIBRARY = """
import json, subprocess, sys
import torch
from ckd.losses import ltr_pair, ltr_triple, wr_pair, wr_triple
torch.manual_seed(0)
student = [torch.randn(2, 5, 8, requires_grad=True) for _ in range(3)]
teacher = [torch.randn(2, 5, 16) for _ in range(3)]
mask = torch.ones(2, 5, dtype=torch.bool)
losses = {"wr_pair": wr_pair, "wr_triple": wr_triple, "ltr_pair": ltr_pair, "ltr_triple": ltr_triple}
values = {name: loss(teacher, student, mask) for name, loss in losses.items()}
sum(values.values()).backward()
help_text = subprocess.run([sys.executable, "-m", "ckd.cli", "distill", "--help"], capture_output=True, text=True)
print(json.dumps({"values": {k: float(v) for k, v in values.items()}, "grad": float(student[0].grad.abs().sum()),
                  "help_code": help_text.returncode, "help": help_text.stdout}))
"""


def test_wheel_in_a_fresh_environment_with_only_the_core_dependencies(tmp_path):
    """`pip wheel .`, then a new virtual environment (no site packages of ours) that installs the wheel
    with its core dependencies only: the four CKD losses compute with gradients, `ckd distill --help`
    answers, and none of the extras' packages is there. Then the `workflow` extra installs into it and
    Snakemake plans the embedded demo study (`snakemake -n`)."""
    wheels, env = tmp_path / "wheels", tmp_path / "env"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                           str(REPO)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [wheel] = wheels.glob("ckd-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=300)
    python = env / "bin" / "python"
    # the CPU build first, as `make setup` does: left to the resolver, `torch` would come as a CUDA build
    cpu_torch = subprocess.run([str(python), "-m", "pip", "install", "-q", TORCH], capture_output=True, text=True,
                               timeout=900)
    assert cpu_torch.returncode == 0, cpu_torch.stderr[-3000:]
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True,
                             timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True)
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"ckd", "torch", "transformers"} <= installed
    assert not {name for name in installed if name.startswith(("nvidia-", "cuda-"))}  # no CUDA build pulled in
    assert sorted(set(EXTRAS_ONLY) & installed) == []
    done = subprocess.run([str(python), "-c", LIBRARY], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(value > 0 for value in result["values"].values()), result["values"]
    assert result["grad"] > 0
    assert result["help_code"] == 0 and "usage: ckd distill" in result["help"]
    extra = subprocess.run([str(python), "-m", "pip", "install", "-q", f"{wheel}[workflow]"], capture_output=True,
                           text=True, timeout=900)
    assert extra.returncode == 0, extra.stderr[-3000:]
    plan = subprocess.run([str(env / "bin" / "snakemake"), "-n", "--cores", "1", "--quiet", "rules"], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PATH": f"{env / 'bin'}:{os.environ['PATH']}"})
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "distill" in plan.stdout and "aggregate" in plan.stdout
