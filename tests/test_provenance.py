"""Atomic outputs and provenance: results are only ever renamed into place; run records carry a schema
version and fingerprints of their config and data; aggregation leaves out records whose config
fingerprint is not the one the study expects (stale results) unless told to include them."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from ckd import atomic, checkpoint
from ckd.aggregate import aggregate_study
from ckd.cli import main as cli
from ckd.config import resolve_config, result_fingerprint, run_fingerprint
from ckd.data.loading import data_fingerprint, load_split
from tests.fixtures.markdown import compact_markdown
from tests.fixtures.study import write_run

REPO = Path(__file__).resolve().parent.parent
MODEL = ["model.init=random", "model.tokenizer=synthetic", "model.layers=2", "model.hidden=32", "model.heads=4", "model.ffn=64"]
DATA = ["data.max_length=32", "data.synthetic_train_size=48", "data.synthetic_dev_size=16"]
QUIET = ["train.progress=false", "train.tensorboard=false", "train.threads=1"]
TRAIN = ["train.batch_size=16", "train.max_steps=2", "train.lr=1e-3"]

# Writes that do not go through ckd.atomic, each with the reason it is safe. Anything else that writes
# a file in ckd/ fails the scan below: results must be written to a temporary name and renamed.
ALLOWED_RAW_WRITES = {
    ("ckd/checkpoint.py", "torch.save("): "writes into the temporary folder of atomic_directory",
    ("ckd/models.py", "save_pretrained("): "save_model is called inside atomic_directory (runs.py)",
    ("ckd/train.py", "SummaryWriter("): "TensorBoard event logs: read by people, never by a later step",
    ("ckd/cache_key.py", "torch.save("): "saves into a BytesIO, then atomic_write_bytes",
    ("ckd/plots.py", "savefig("): "saves into a BytesIO, then atomic_write_bytes",
    ("ckd/aggregate.py", "to_csv("): "renders to a string, then atomic_write_text",
    ("ckd/explore.py", "savefig("): "renders a notebook figure into a BytesIO, never to a file",
    ("ckd/frame.py", "to_csv("): "renders to a string, then atomic_write_text",
    ("ckd/tables/render.py", "to_csv("): "renders to a string, then atomic_write_text",
    ("ckd/cost.py", "to_csv("): "renders to a string, then atomic_write_text",
    ("ckd/cost.py", "savefig("): "saves into a BytesIO, then atomic_write_bytes",
    ("ckd/dynabert/dynamic.py", "save_pretrained("): "save_export is called inside atomic_directory (stages.export_subnets)",
    ("ckd/dynabert/dynamic.py", "shutil.copyfile("): "save_export is called inside atomic_directory (stages.export_subnets)",
    ("ckd/teacher_store.py", "np.save("): "writes into the temporary folder of atomic_directory (_write_shard)",
    ("ckd/teacher_store.py", "write_text("): "shard.json, into the temporary folder of atomic_directory (_write_shard)",
    ("ckd/corpus/pack.py", "np.save("): "token and length shards, into the temporary folder of atomic_directory (pack_corpus)",
    ("ckd/general/run.py", "save_pretrained("): "the general student's model/, inside atomic_directory (_run)",
}
RAW_WRITE = re.compile(
    r"\.write_text\(|\.write_bytes\(|open\([^)]*['\"][wax]b?\+?['\"]|torch\.save\(|\.to_csv\(|savefig\(|save_pretrained\(|"
    r"json\.dump\(|SummaryWriter\(|np\.save\(|shutil\.(?:copy|copyfile|copytree|move)\("
)


def test_every_output_file_is_written_through_ckd_atomic():
    offenders = []
    for path in sorted((REPO / "ckd").rglob("*.py")):
        relative = path.relative_to(REPO).as_posix()
        if relative == "ckd/atomic.py":
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            code = line.split("#", 1)[0]
            for match in RAW_WRITE.finditer(code):
                call = match.group(0).lstrip(".")
                call = "torch.save(" if call.startswith("torch.save") else call
                if not any(relative == f and call.endswith(c) for f, c in ALLOWED_RAW_WRITES):
                    offenders.append(f"{relative}:{lineno}: {line.strip()}")
    assert not offenders, "write these through ckd.atomic:\n" + "\n".join(offenders)
    runs = (REPO / "ckd" / "runs.py").read_text()
    assert re.search(r"with atomic_directory\([^)]*\) as tmp:\s*\n\s*save_model\(", runs)


def _toy_study(root: Path) -> Path:
    labels = [0, 1, 0, 1]
    preds = {"dev": {"labels": labels, "final": labels, "best": labels}}
    for seed, acc in ((1, 0.6), (2, 0.7)):
        write_run(root, "rte", "3L-384", "kd", seed, {"dev": {"accuracy": acc}}, predictions=preds,
                  history=[{"step": 50, "train_loss": 0.7, "dev": {"accuracy": acc}}])
        write_run(root, "rte", "3L-384", "ckd", seed, {"dev": {"accuracy": acc + 0.05}}, predictions=preds,
                  history=[{"step": 50, "train_loss": 0.6, "dev": {"accuracy": acc}}])
    return root


def test_tables_and_plots_appear_only_by_rename(tmp_path, monkeypatch):
    study = _toy_study(tmp_path / "toy")
    renamed = set()
    real_replace = os.replace

    def spy(src, dst, *args, **kwargs):
        assert Path(src).name.startswith("."), f"renamed from a non-temporary name: {src}"
        renamed.add(Path(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", spy)
    aggregate_study(study, n_boot=20)
    from ckd.plots import plot_study

    plot_study(study, log=lambda message: None)
    written = [p for p in (study / "tables").rglob("*") if p.is_file()] + [p for p in (study / "plots").rglob("*") if p.is_file()]
    assert any(p.suffix == ".csv" for p in written) and any(p.suffix == ".png" for p in written)
    assert set(written) <= renamed, sorted(set(written) - renamed)
    assert not [p for p in study.rglob("*") if p.name.endswith(atomic.TMP_SUFFIX)]


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "tables" / "main.csv"
    atomic.atomic_write_text(target, "old\n")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(atomic.OutputError, match=r"cannot write .*main\.csv: disk full"):
        atomic.atomic_write_text(target, "new\n")
    monkeypatch.undo()
    assert target.read_text() == "old\n"
    assert [p.name for p in target.parent.iterdir()] == ["main.csv"]


def test_a_checkpoint_swap_cut_short_is_recovered_and_temporaries_swept(tmp_path):
    run_dir = tmp_path / "run"
    checkpoint.save_checkpoint(run_dir, {"config_fingerprint": "fp", "step": 3})
    latest = checkpoint.latest_path(run_dir)
    # a kill between the two renames of the next save: previous moved aside, new one still a temporary
    os.replace(latest, latest.with_name(".latest.old"))
    (latest.parent / ".latest.abc123.tmp").mkdir()
    state = checkpoint.load_checkpoint(run_dir, "fp")
    assert state["step"] == 3 and latest.is_dir()
    assert sorted(p.name for p in latest.parent.iterdir()) == ["latest"]
    (run_dir / ".record.json.x1.tmp").write_text("{")
    (run_dir / ".model.y2.tmp").mkdir()
    removed = atomic.remove_stale_temporaries(run_dir)
    assert sorted(p.name for p in removed) == [".model.y2.tmp", ".record.json.x1.tmp"]


# ---------------------------------------------------------------- fingerprints


def test_config_fingerprint_ignores_logging_and_folders_but_not_what_changes_results():
    base = ["task=syn-pair", "output_dir=a", *MODEL, *TRAIN]
    fp = run_fingerprint("finetune", base)
    assert fp == run_fingerprint("finetune", [*base, "output_dir=elsewhere", "study=other", *QUIET, "train.eval_batch_size=7"])
    assert fp == run_fingerprint("finetune", [a if a != "task=syn-pair" else "task=SYN-PAIR" for a in base])
    for change in ("train.lr=2e-3", "seed=2", "model.layers=3", "data.synthetic_train_size=64", "train.max_steps=3"):
        assert run_fingerprint("finetune", [*base, change]) != fp, change


def finetune(out: Path, *extra: str) -> tuple[list[str], dict]:
    overrides = ["task=syn-pair", f"output_dir={out}", *MODEL, *DATA, *QUIET, *TRAIN, *extra]
    assert cli(["finetune", *overrides]) == 0
    return overrides, json.loads((out / "record.json").read_text())


def test_record_carries_schema_version_and_fingerprints_of_config_and_data(tmp_path):
    from ckd.records import SCHEMA_VERSION as READ_VERSION
    from ckd.run_record import SCHEMA_VERSION as WRITE_VERSION

    overrides, record = finetune(tmp_path / "run")
    assert record["schema_version"] == WRITE_VERSION == READ_VERSION
    assert record["config_fingerprint"] == result_fingerprint(record["config"]) == run_fingerprint("finetune", overrides)
    config = resolve_config("finetune", None, overrides)
    sizes = {"synthetic_sizes": {"train": 48, "dev": 16}}
    expected = {split: data_fingerprint(load_split("syn-pair", split, source="synthetic", **sizes)) for split in ("train", "dev")}
    assert record["data_fingerprint"] == expected
    assert config["data"]["synthetic_train_size"] == 48


def test_stale_records_are_left_out_of_tables_and_listed_unless_included(tmp_path):
    study = tmp_path / "study"
    teachers = study / "teachers" / "syn-pair" / "2L-32"
    overrides1, _ = finetune(teachers / "seed1", "seed=1")
    _, rec2 = finetune(teachers / "seed2", "seed=2")
    _, rec3 = finetune(teachers / "seed3", "seed=3")
    # the study now wants seed 2 with another learning rate: its record is stale; seed 3 has no fingerprint to check
    wanted2 = run_fingerprint("finetune", [a for a in overrides1 if a != "seed=1"] + ["seed=2", "train.lr=2e-3"])
    assert wanted2 != rec2["config_fingerprint"]
    entries = [
        {"task": "syn-pair", "student": "2L-32", "method": "teacher", "seed": 1,
         "config_fingerprint": run_fingerprint("finetune", overrides1)},
        {"task": "syn-pair", "student": "2L-32", "method": "teacher", "seed": 2, "config_fingerprint": wanted2},
        {"task": "syn-pair", "student": "2L-32", "method": "teacher", "seed": 3},
    ]
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps(entries))
    args = ["aggregate", "--study-dir", str(study), "--bootstrap", "10", "--expected", str(expected)]

    assert cli(args) == 0
    main = pd.read_csv(study / "tables" / "main.csv")
    assert list(main["Syn-Pair_n"]) == [2]
    missing = compact_markdown((study / "tables" / "missing.md").read_text())
    assert "| syn-pair | 2L-32 | teacher | 2 | stale: finished with another config" in missing
    assert f"study expects {wanted2[:12]}" in missing and "--include-stale" in missing
    runs = pd.read_csv(study / "tables" / "runs.csv")
    assert sorted(runs["seed"]) == [1, 3]

    assert cli([*args, "--include-stale"]) == 0
    main = pd.read_csv(study / "tables" / "main.csv")
    assert list(main["Syn-Pair_n"]) == [3]
    missing = compact_markdown((study / "tables" / "missing.md").read_text())
    assert "1 stale run(s) included in the tables (--include-stale): syn-pair/2L-32/teacher/seed2" in missing
