"""The benchmark harness (`make bench`) at tiny sizes: it runs end to end, and our relation terms
agree with the dense baseline (benchmarks/dense.py, i.e. ckd.losses.relations_dense, which
tests/test_relations.py checks the fast engine against). No timing assertions."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks import dense
from benchmarks.__main__ import QUICK_TERMS, main
from benchmarks.measure import probe
from benchmarks.steps import METHODS, TEACHER_FORWARD
from benchmarks.terms import TERMS, make_inputs, term_call


def test_quick_benchmark_runs_and_values_agree(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--quick", "--no-memory", "--device", "cpu", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "CKD relation terms" in printed and "Training steps" in printed and "Targets" in printed
    result = json.loads(out.read_text())
    rows = result["cpu"]["terms"]["rows"]
    assert [row["term"] for row in rows] == list(TERMS)
    for row in rows:
        assert row["agree"] is True, row  # the fast and dense values agree
        assert math.isfinite(row["ours_value"]) and row["ours_value"] > 0
        assert row["ours_s"] > 0 and row["dense_s"] > 0
    steps = {row["method"]: row for row in result["cpu"]["steps"]["rows"]}
    assert set(steps) == set(METHODS) | {TEACHER_FORWARD}
    assert all(row["seconds"] > 0 for row in steps.values())
    assert steps["kd"]["vs_kd"] == pytest.approx(1.0)
    # teacher cache rows: sizes, and cached losses equal to the live teacher's (tiny synthetic models here)
    assert "Teacher cache size" in printed and "Teacher cache agreement" in printed
    assert {row["method"] for row in result["agreement"]} == {"kd", "pkd", "minilm", "ckd", "ckd-full-triple", "tinybert"}
    assert all(row["worst_rel_diff"] <= 1e-6 for row in result["agreement"]), result["agreement"]


def test_dense_terms_too_large_for_memory_run_on_a_smaller_batch(capsys):
    assert main(["--quick", "--no-memory", "--device", "cpu", "--sections", "terms", "--dense-memory-gb", "1e-6"]) == 0
    printed = capsys.readouterr().out
    assert "dense run at B=1 and scaled x4" in printed


def test_memory_probe_measures_in_a_fresh_process():
    spec = {"kind": "term", "term": "wr_triple", "impl": "dense", "sizes": vars(QUICK_TERMS) | {"batch": 2}, "batch": 2}
    answer = probe(spec, threads=1, timeout=300)
    assert "error" not in answer, answer
    assert answer["extra_mb"] >= 0
    teacher, student, mask = make_inputs(QUICK_TERMS, 2, torch.device("cpu"))
    loss, kwargs = term_call("wr_triple", QUICK_TERMS)
    assert answer["value"] == pytest.approx(dense.DENSE[loss](teacher, student, mask, **kwargs).item(), rel=1e-6)
