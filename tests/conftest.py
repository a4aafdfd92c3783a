import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """The real GLUE folder from $GLUE_DIR. CI sets it; tests that need it fail loudly without it."""
    value = os.environ.get("GLUE_DIR")
    if not value:
        pytest.fail("GLUE_DIR is not set: point it at a glue_data folder (CI uses ../shared/data/glue)")
    path = Path(value)
    if not path.is_dir():
        pytest.fail(f"GLUE_DIR={value} is not a directory")
    return path


BIN = Path(sys.executable).parent


def snakemake(*args: str, timeout: float = 600, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """The real `snakemake` command; its rules call `ckd`, which lives beside this Python."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
    )


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table Snakemake prints before running (or dry-running) jobs."""
    match = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\ntotal\s+(\d+)", output, re.S)
    if not match:
        return {}
    return {line.split()[0]: int(line.split()[1]) for line in match.group(1).splitlines()}


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory) -> Path:
    """The smoke study (the embedded default, what `make demo` runs), run once per test session with
    `snakemake --cores 2` into a temporary results root; tests of the workflow, the notebooks and the
    cluster profile all read it."""
    results = tmp_path_factory.mktemp("workflow") / "results"
    done = snakemake("--cores", "2", "--config", f"results_dir={results}", timeout=1500)
    assert done.returncode == 0, done.stdout[-5000:]
    return results
