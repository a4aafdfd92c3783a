"""docs/analysis/ltr_gradients.py measures without changing what it measures: with its probe a short
`ckd-ltr` run of the smoke setting ends with the same weights as without it (the extra per-term passes
restore the dropout RNG and the objective's terms), the per-term gradients it reports add up to the real
gradient, and its clip factor is torch's clip_grad_norm_ factor for the total it reports. A random-init
teacher of the smoke teacher's shape stands in for the trained one."""

from __future__ import annotations

import importlib

import torch
from safetensors.torch import load_file

import ckd.runs
from ckd.cli import main as cli
from ckd.models import build_model, save_model
from tests.conftest import REPO

SHORT = ["train.max_steps=5", "data.synthetic_train_size=80", "data.synthetic_dev_size=16"]


def test_probe_leaves_training_unchanged_and_its_terms_add_up(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "docs" / "analysis"))
    probe = importlib.import_module("ltr_gradients")
    collapse = importlib.import_module("ltr_collapse")
    teacher = tmp_path / "teacher"
    save_model(build_model({**collapse.SHAPE, "layers": 4}, task="syn-sentiment", seed=1), teacher)

    def weights(name: str) -> dict[str, torch.Tensor]:
        out = tmp_path / name
        assert cli(["distill", *probe.distill_args(probe.STUDENTS["ckd-ltr"], teacher, out), *SHORT]) in (0, None)
        return load_file(out / "model" / "model.safetensors")

    plain = weights("plain")
    probe.ROWS.clear()
    monkeypatch.setattr(ckd.runs, "train", lambda setup: probe.GradientProbe(setup).run())
    probed = weights("probed")

    assert plain.keys() == probed.keys()
    assert all(torch.equal(plain[key], probed[key]) for key in plain)
    assert [row["step"] for row in probe.ROWS] == [1, 2, 5]
    for row in probe.ROWS:
        assert set(row["terms"]) == {"kd", "ltr_pair", "ltr_triple"}
        assert row["mismatch"] < 1e-5
        assert row["clip"] == min(1.0, 1.0 / (row["total"] + 1e-6))
        for term in row["terms"].values():  # the groups split the parameters: their squared norms add up
            assert abs(sum(term[g] ** 2 for g in probe.GROUPS) - term["all"] ** 2) <= 1e-6 * term["all"] ** 2 + 1e-12
