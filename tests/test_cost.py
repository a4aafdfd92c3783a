"""Measured cost (ckd.cost) from benchmark files and records, and `ckd estimate` before submission.

The benchmark files are written here in Snakemake's TSV layout (header `s h:m:s max_rss max_vms max_uss
max_pss io_in io_out mean_load cpu_time`, snakemake/benchmark.py) with chosen numbers; the expected sums
are worked out by hand from those numbers.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ckd import paths
from ckd.cli import main
from ckd.cost import CostError, cost_table, job_costs, planned_jobs, read_benchmark, write_cost
from tests.conftest import REPO

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
SMOKE = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())


def bench(study: Path, rule: str, s, rss, cpu, **fields) -> Path:
    path = study / paths.BENCHMARK[rule].format(**fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{s}\t0:00:00\t{rss}\t1\t1\t1\t0\t0\t50\t{cpu}\n")
    return path


def record(folder: Path, device: str, world_size: int, wall_s: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "record.json").write_text(json.dumps(
        {"runtime": {"device": device, "world_size": world_size, "precision": "fp32"}, "timing": {"wall_s": wall_s}}))
    (folder / "model.bin").write_bytes(b"\0" * 2**20)  # 1 MiB of "checkpoint"


@pytest.fixture
def study(tmp_path) -> Path:
    """A teacher on CPU and two kd runs on two GPUs each; the second run's benchmark (60 s) is shorter than
    its record's own training (100 s): a restored or resumed run."""
    study = tmp_path / "smoke"
    record(paths.teacher_dir(study, "syn-pair", "T", 1), "cpu", 1, 10.0)
    bench(study, "finetune_teacher", 12.0, 300.5, 11.0, task="syn-pair", teacher="T", seed=1)
    for seed, s, rss, cpu in ((1, 120.0, 1000.0, 200.0), (2, 60.0, 900.0, 100.0)):
        record(paths.run_dir(study, "syn-pair", "S", "kd", seed), "cuda", 2, 100.0)
        bench(study, "distill", s, rss, cpu, task="syn-pair", student="S", method="kd", seed=seed)
    return study


def test_cost_table_sums_benchmarks_per_method_task_model(study):
    jobs = job_costs(study)
    assert len(jobs) == 3
    teacher = jobs[jobs["rule"] == "finetune_teacher"].iloc[0]
    assert (teacher["method"], teacher["gpus"], teacher["gpu_h"]) == ("teacher", 0, 0.0)
    assert teacher["cpu_h"] == pytest.approx(11.0 / 3600) and teacher["max_rss_mb"] == 300.5
    assert not teacher["partial"] and teacher["disk_mb"] == pytest.approx(1.0, abs=0.01)
    runs = jobs[jobs["rule"] == "distill"].set_index("seed")
    assert runs.loc[1, "gpu_h"] == pytest.approx(120 * 2 / 3600) and not runs.loc[1, "partial"]
    assert runs.loc[2, "partial"]  # 60 s < 0.9 x 100 s

    table = cost_table(jobs).set_index(["task", "model", "method"])
    kd = table.loc[("syn-pair", "S", "kd")]
    assert kd["jobs"] == 2 and kd["wall_h"] == pytest.approx(180 / 3600) and kd["wall_s_mean"] == 90
    assert kd["gpu_h"] == pytest.approx(360 / 3600) and kd["cpu_h"] == pytest.approx(300 / 3600)
    assert kd["max_rss_mb"] == 1000 and kd["partial"] == 1


def test_write_cost_writes_tables_and_plot(study, tmp_path):
    written = write_cost(study, tmp_path / "out", log=lambda line: None)
    assert sorted(p.name for p in written) == ["cost.csv", "cost.md", "cost.png", "cost_jobs.csv"]
    markdown = (tmp_path / "out" / "cost.md").read_text()
    # 12 + 120 + 60 s = 0.0533 h; CPU 11 + 200 + 100 s = 0.0864 h; GPU 2 x 180 s = 0.1 h
    assert "Study total: 3 jobs, 0.0533 wall hours, 0.0864 CPU-hours, 0.1000 GPU-hours, largest max RSS 1000 MB" \
        in markdown
    assert "1 job(s) are partial" in markdown
    assert pd.read_csv(tmp_path / "out" / "cost.csv")["jobs"].sum() == 3
    assert (tmp_path / "out" / "cost.png").read_bytes()[:4] == b"\x89PNG"


def test_benchmark_without_samples_reads_as_nan_and_empty_study_gets_empty_tables(tmp_path):
    path = tmp_path / "b.tsv"
    path.write_text(HEADER + "0.4\t0:00:00\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tNA\n")  # ended before the first sample
    values = read_benchmark(path)
    assert values["wall_s"] == 0.4 and pd.isna(values["max_rss_mb"]) and pd.isna(values["cpu_s"])
    written = write_cost(tmp_path / "empty", tmp_path / "out", log=lambda line: None)
    assert len(written) == 4 and "Study total: 0 jobs" in (tmp_path / "out" / "cost.md").read_text()


@pytest.mark.parametrize("text, message", [
    ("s\tmax_rss\n1\t2\n", "column(s) cpu_time missing"),
    (HEADER, "no row"),
    (HEADER + "abc\t0\t1\t1\t1\t1\t0\t0\t1\t1\n", "is not a number"),
])
def test_bad_benchmark_file_is_refused_in_one_line(tmp_path, text, message):
    path = tmp_path / "b.tsv"
    path.write_text(text)
    with pytest.raises(CostError, match=re.escape(message)) as error:
        read_benchmark(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


SUMMARY = "\n".join([
    "Building DAG of jobs...",
    "output_file\tdate\trule\tlog-file(s)\tstatus\tplan",
    "/r/smoke/teachers/syn-pair/T/seed1/record.json\tMon\tfinetune_teacher\t-\tok\tno update",
    "/r/smoke/runs/syn-pair/S/kd/seed1/record.json\t-\tdistill\t-\tmissing\tupdate pending",
    "/r/smoke/search/runs/syn-pair/S/ckd/lr-1/seed7/record.json\t-\tsearch_distill\t-\tmissing\tupdate pending",
    "/r/smoke/teachers/syn-pair/T/seed1/train_logits.pt\t-\tcache_teacher_logits\t-\tmissing\tupdate pending",
    "/r/smoke/tables/main.csv\t-\taggregate\t-\tmissing\tupdate pending",
])


def test_planned_jobs_reads_the_summary():
    planned, others = planned_jobs(SUMMARY)
    assert planned.values.tolist() == [["distill", "syn-pair", "S", "kd", 1], ["search_distill", "syn-pair", "S", "ckd", 7],
                                       ["cache_teacher_logits", "syn-pair", "T", "teacher-logits", 1]]
    assert others == ["aggregate"]
    every, _ = planned_jobs(SUMMARY, all_jobs=True)
    assert every["rule"].tolist()[0] == "finetune_teacher" and len(every) == 4
    with pytest.raises(CostError, match="no table"):
        planned_jobs("Building DAG of jobs...\n")


def tiny_study(tmp_path) -> Path:
    config = copy.deepcopy(SMOKE)
    config.update({"tasks": ["syn-pair"], "seeds": [1], "methods": ["kd", "ckd-pair"],
                   "results_dir": str(tmp_path / "results")})
    # without the smoke study's task-agnostic stage (students started from a general-distilled model)
    config["students"] = {name: spec for name, spec in config["students"].items() if "general" not in spec}
    for key in ("general", "corpus"):
        config.pop(key, None)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def measured_csv(tmp_path, rows) -> Path:
    path = tmp_path / "cost_jobs.csv"
    pd.DataFrame(rows, columns=["rule", "task", "model", "method", "wall_s", "disk_mb"]).to_csv(path, index=False)
    return path


def test_estimate_times_the_plan_from_measured_jobs(tmp_path, capsys):
    student = next(iter(SMOKE["students"]))
    teacher = next(iter(SMOKE["teachers"]))
    measured = measured_csv(tmp_path, [
        ("finetune_teacher", "syn-pair", teacher, "teacher", 30.0, 2.0),
        ("distill", "syn-pair", student, "kd", 8.0, 1.0),     # exact
        ("distill", "syn-pair", student, "kd", 12.0, 1.0),    # exact: mean 10 s
        ("distill", "syn-sentiment", student, "ckd-pair", 20.0, 3.0),  # same rule and method, other task
    ])
    out = tmp_path / "estimate.json"
    code = main(["estimate", "--configfile", str(tiny_study(tmp_path)), "--measured", str(measured),
                 "--snakefile", str(REPO / "Snakefile"), "--json", str(out)])
    printed, error = capsys.readouterr()
    assert code == 0, error
    result = json.loads(out.read_text())
    jobs = {(j["rule"], j["method"]): j for j in result["jobs"]}
    assert jobs[("finetune_teacher", "teacher")]["match"] == "exact"
    assert jobs[("distill", "kd")]["wall_s"] == 10.0 and jobs[("distill", "kd")]["match"] == "exact"
    assert jobs[("distill", "ckd-pair")]["wall_s"] == 20.0 and jobs[("distill", "ckd-pair")]["match"] == "method"
    totals = result["totals"]
    # 30 + 10 + 20 s; smoke resources: 1 thread, no GPU; disk 2 + 1 + 3 MB
    assert totals["jobs"] == 3 and totals["wall_h"] == pytest.approx(60 / 3600)
    assert totals["gpu_h"] == 0 and totals["cpu_h_alloc"] == pytest.approx(60 / 3600)
    assert totals["checkpoint_disk_mb"] == 6.0 and totals["cache_disk_mb"] == 0.0
    assert "3 training jobs" in printed and "aggregate" in printed


def test_estimate_refuses_a_plan_it_cannot_time(tmp_path, capsys):
    student = next(iter(SMOKE["students"]))
    measured = measured_csv(tmp_path, [("distill", "syn-pair", student, "kd", 8.0, 1.0)])
    code = main(["estimate", "--configfile", str(tiny_study(tmp_path)), "--measured", str(measured),
                 "--snakefile", str(REPO / "Snakefile")])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in error
    assert "no measured finetune_teacher job to time the planned ones" in error and str(measured) in error


@pytest.mark.parametrize("content, message", [
    (None, "no such file or folder"),
    ("rule,task\ndistill,rte\n", "column(s) model, method, wall_s missing"),
])
def test_estimate_refuses_bad_measured_input_in_one_line(tmp_path, capsys, content, message):
    measured = tmp_path / "cost_jobs.csv"
    if content is not None:
        measured.write_text(content)
    code = main(["estimate", "--configfile", str(REPO / "config" / "smoke.yaml"), "--measured", str(measured)])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in error and message in error and str(measured) in error


def test_every_training_rule_writes_a_benchmark_file():
    """Each rule that trains or caches (resources from the study's finetune/distill/cache_logits) has a
    `benchmark:` under the study folder from ckd.paths.BENCHMARK."""
    rules = {}
    for smk in ("teacher.smk", "distill.smk", "search.smk"):
        text = (REPO / "workflow" / "rules" / smk).read_text()
        for name, body in re.findall(r"^rule (\w+):\n((?:    .*\n|\n)+)", text, re.M):
            if re.search(r'resources_of\("(finetune|distill|cache_logits)"\)', body):
                rules[name] = body
    assert set(rules) == set(paths.BENCHMARK)
    for name, body in rules.items():
        assert f"benchmark:\n        f\"{{STUDY_DIR}}/{{paths.BENCHMARK['{name}']}}\"" in body, name
