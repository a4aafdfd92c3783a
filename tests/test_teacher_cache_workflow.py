"""The study setting `teacher_cache: true` (workflow/rules): one `ckd cache-teacher` job per (task, teacher,
teacher seed) and every run of a method it serves reads it; methods it cannot serve keep the live teacher."""

from __future__ import annotations

import json
import re
import shlex

import yaml

from ckd.methods import Term
from ckd.objectives import TERMS
from ckd.teacher_store import LIVE_ONLY_TERMS, term_fields
from tests.conftest import REPO, job_counts, snakemake


def test_workflow_cache_terms_are_the_stores():
    """common.smk writes the served terms out (parsing the workflow does not import torch): the same set
    as ckd.teacher_store serves."""
    text = (REPO / "workflow/rules/common.smk").read_text()
    logit = set(re.findall(r'"(\w+)"', re.search(r"^LOGIT_TERMS = \{(.*)\}$", text, re.M).group(1)))
    extra = set(re.findall(r'"(\w+)"', re.search(r"^CACHE_TERMS = LOGIT_TERMS \| \{(.*?)\}", text, re.M | re.S).group(1)))

    class Map:
        teacher_indices = (0, 2)

    served = {name for name in TERMS if term_fields(Term(name, 1.0), Map)[1] is None}
    assert logit | extra == served
    assert served.isdisjoint(LIVE_ONLY_TERMS)


def test_dry_run_builds_one_cache_per_teacher_and_runs_read_it(tmp_path):
    study = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    study.update(teacher_cache=True, results_dir=str(tmp_path / "results"),
                 methods=["kd", "ckd", "ckd-released", "tinybert", "minilm", "distilbert-cos"])
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study))
    planned = snakemake("-n", "-p", "--configfile", str(config))
    assert planned.returncode == 0, planned.stdout[-3000:]
    counts = job_counts(planned.stdout)
    assert counts["cache_teacher"] == len(study["tasks"]) * len(study["teacher_seeds"]) == 2
    commands = [line.split("Shell command:", 1)[-1].strip() for line in planned.stdout.splitlines()]
    commands = [c for c in commands if c.startswith(("ckd ", "OMP_NUM_THREADS"))]
    builds = [c for c in commands if " cache-teacher " in c]
    assert builds and all("--methods ckd,kd,minilm,tinybert " in c for c in builds)  # not ckd-released, distilbert-cos
    for build in builds:
        argv = shlex.split(build)
        assert [spec["layers"] for spec in json.loads(argv[argv.index("--students") + 1])] == [2]
    runs = {m: [c for c in commands if f"/tiny-2L/{m}/seed" in c and c.startswith("ckd distill ")]
            for m in ("kd", "ckd", "ckd-released", "tinybert", "minilm", "distilbert-cos")}
    for method in ("kd", "ckd", "tinybert", "minilm"):
        assert runs[method] and all("teacher_cache=" in c for c in runs[method]), method
    for method in ("ckd-released", "distilbert-cos"):
        assert runs[method] and not any("teacher_cache=" in c for c in runs[method]), method
