"""The conda route (environment.yml) and the pip route (`make setup`) install one dependency list:
pyproject.toml's. Conda channels are not reachable from the build machines, so this checks the
file's structure, not a resolve."""

import re

import tomllib
import yaml

from tests.conftest import REPO


def _extras(requirement: str) -> set[str]:
    match = re.fullmatch(r"""-e\s+["']?\.(?:\[([\w,\s-]+)\])?["']?""", requirement.strip())
    assert match, f"environment.yml pip entry {requirement!r} is not an editable install of this package"
    return {e.strip() for e in (match.group(1) or "").split(",") if e.strip()}


def test_environment_yml_installs_the_package_and_nothing_else():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"], "the pytorch channel no longer carries current builds; bioconda is not needed"
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert sorted(re.split(r"[=<>]", d)[0] for d in conda) == ["pip", "python"], (
        f"conda dependencies must be python and pip only (the rest comes from pyproject.toml): {conda}")
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    assert len(pip_lists) == 1 and len(pip_lists[0]) == 1
    extras = _extras(pip_lists[0][0])
    declared = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    assert extras <= declared, f"extras {extras - declared} are not in pyproject.toml"


def test_conda_and_make_setup_install_the_same_extras():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda_extras = _extras(next(d for d in env["dependencies"] if isinstance(d, dict))["pip"][0])
    make_lines = re.findall(r"pip install \$\(PIP_QUIET\) -e '\.\[([\w,-]+)\]'", (REPO / "Makefile").read_text())
    assert make_lines, "Makefile no longer installs the package with extras"
    assert {set(m.split(",")) == conda_extras for m in make_lines} == {True}


def test_python_version_is_one_the_package_supports():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    version = tuple(int(x) for x in python.split("=")[1].split("."))
    minimum = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert version >= tuple(int(x) for x in minimum.lstrip(">=").split("."))
