"""The teacher cache (ckd.teacher_store, `ckd cache-teacher`): cached losses equal live-teacher losses,
a step stays independent of its micro-batch split with the cache, a SIGKILLed build resumes to the
same bytes, and a stale or damaged cache is refused in one line with the rebuild command."""

from __future__ import annotations

import contextlib
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from ckd.cache_key import CacheError
from ckd.cli import main as cli
from ckd.config import resolve_config
from ckd.data.tasks import get_task
from ckd.distributed import Runtime
from ckd.losses import relations
from ckd.methods import load_methods, resolve_method
from ckd.models import build_model
from ckd.objectives import TERMS, Objective
from ckd.runs import make_step_loss
from ckd.teacher_store import (
    MANIFEST,
    build_store,
    cache_bytes,
    field_size,
    objective_fields,
    open_store,
    rebuild_command,
    sorted_fields,
)
from ckd.train import Trainer, TrainSetup
from tests.fixtures.teachers import saved_teachers
from tests.test_batch_split import ORDER, SPLITS, _assert_same, _data
from tests.test_reliability_kill import run_and_stop

SHAPE = {"init": "random", "tokenizer": "synthetic", "hidden": 32, "heads": 4, "ffn": 64, "dropout": 0}
CACHED_METHODS = ["kd", "pkd", "minilm", "ckd", "ckd-full-triple", "ckd-wr", "ckd-ltr", "ckd-pair", "ckd-triple", "tinybert"]
LIVE_METHODS = {"tinybert-intermediate": "TinyBERT stage 1", "distilbert-cos": "DistilBERT",
                "ckd-released": "released_window_quirks"}
KEY = {"format": "f", "kind": "teacher-terms", "teacher": "a" * 64}


def _objective(method: str, task, teacher, student) -> Objective:
    resolved = resolve_method(load_methods(None), method, task.name, use_task_settings=False, known_terms=set(TERMS))
    return Objective(resolved, regression=task.is_regression, teacher_config=teacher.config, student_config=student.config)


@pytest.fixture(scope="module")
def models():
    task = get_task("syn-pair")
    common = {"num_labels": task.num_labels, "regression": False}
    teacher = build_model({**SHAPE, "layers": 4}, role="teacher", seed=1, **common).model.eval().requires_grad_(False)
    student = build_model({**SHAPE, "layers": 2}, role="student", seed=2, **common).model.train()
    # BERT's initialisation (std 0.02) leaves a token's layer vectors nearly parallel, every LTR term near
    # 0 and its value rounding noise: larger weights make the layers (and the terms) differ
    torch.manual_seed(0)
    with torch.no_grad():
        for model in (teacher, student):
            for name, p in model.named_parameters():
                if p.dim() == 2 and "embeddings" not in name:
                    p.normal_(std=0.3)
    return task, teacher, student


def _all_fields(task, teacher, student) -> list[str]:
    fields = set()
    for method in CACHED_METHODS:
        got, reason = objective_fields(_objective(method, task, teacher, student))
        assert reason is None, (method, reason)
        fields |= got
    return sorted_fields(fields)


@pytest.fixture(scope="module")
def store_dir(models, tmp_path_factory):
    task, teacher, student = models
    out = tmp_path_factory.mktemp("store") / "cache"
    build_store(out, KEY, _all_fields(task, teacher, student), _data(task), teacher, batch_size=3,
                autocast=contextlib.nullcontext, shard_examples=3, info={"heads": 4}, log=lambda m: None)
    return out


def test_methods_read_what_their_terms_need(models):
    task, teacher, student = models
    fields = {m: objective_fields(_objective(m, task, teacher, student))[0] for m in CACHED_METHODS}
    assert fields["kd"] == {"logits"}
    assert fields["pkd"] == {"logits", "cls/2"}  # pkd-skip, 4 -> 2 layers: teacher layer 2 <- student layer 1
    assert fields["tinybert"] == {"logits"}  # stage 2 (stage 1 stays live)
    assert fields["minilm"] == {"logits", "attention/last", "value/last"}
    assert fields["ckd"] == {"logits", "token/0", "token/2", "token/4", "layers/0,2,4"}
    assert fields["ckd-wr"] == {"logits", "token/0", "token/2", "token/4"}
    assert fields["ckd-ltr"] == {"logits", "layers/0,2,4"}
    for method, reason in LIVE_METHODS.items():
        got, why = objective_fields(_objective(method, task, teacher, student))
        assert got == set() and reason in why, (method, why)


@pytest.mark.parametrize("method", CACHED_METHODS)
def test_cached_loss_and_gradients_equal_the_live_teachers(method, models, store_dir):
    """float32 cache, float32 models: the step loss, every term and the student's gradients from the
    cache equal those with the live teacher to 1e-6 relative, on a batch padded otherwise than the
    cache's build batches."""
    task, teacher, student = models
    objective = _objective(method, task, teacher, student)
    fields, _ = objective_fields(objective)
    store = open_store(store_dir, KEY, fields, rebuild="R")
    batch = _data(task).batch(ORDER[:5])
    results = []
    for source in ("live", "cache"):
        step = make_step_loss(objective, student, teacher, teacher_store=store if source == "cache" else None)
        student.zero_grad(set_to_none=True)
        loss, terms = step(batch)
        loss.backward()
        results.append((float(loss.detach()), terms, torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None])))
    (live, live_terms, live_grads), (cached, cached_terms, cached_grads) = results
    assert live > 0
    assert cached == pytest.approx(live, rel=1e-6)
    for name, value in live_terms.items():
        assert value > 1e-4, f"{name} is too small ({value}) for a relative comparison"
        assert cached_terms[name] == pytest.approx(value, rel=1e-6), name
    assert float((live_grads - cached_grads).abs().max()) <= 1e-5 * float(live_grads.abs().max())


def test_store_reconstructs_the_teachers_relation_matrices(models, store_dir):
    task, teacher, student = models
    data = _data(task)
    batch = data.batch([1, 4, 6])
    store = open_store(store_dir, KEY, ["token/2", "layers/0,2,4", "cls/2"], rebuild="R")
    got = store.batch(batch["index"], batch["attention_mask"])
    with torch.no_grad():
        states = teacher(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}, output_hidden_states=True).hidden_states
    mask = batch["attention_mask"]
    valid = mask.bool()
    pair = valid[:, :, None] & valid[:, None, :]
    for centre, cached in ((False, got["token/2"][0]), (True, got["token/2"][1])):
        (direct,) = relations.token_grams([states[2]], mask, centre=centre)
        torch.testing.assert_close(cached[pair], direct[pair], rtol=1e-5, atol=1e-5)
        assert float(cached[~pair].abs().max()) == 0.0
    for centre, cached in ((False, got["layers/0,2,4"][0]), (True, got["layers/0,2,4"][1])):
        direct = relations.layer_grams([states[i] for i in (0, 2, 4)], mask, centre=centre)
        torch.testing.assert_close(cached, direct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["cls/2"][:, 0], states[2][:, 0])


def _trainer(task, teacher, student, method, grad_accum, tmp_path, store) -> Trainer:
    objective = _objective(method, task, teacher, student).double()
    config = resolve_config("finetune", None, [f"train.grad_accum={grad_accum}", "train.batch_size=8", "seed=1", f"task={task.name}",
                                               "model.init=random", "model.tokenizer=synthetic", f"output_dir={tmp_path}"])
    setup = TrainSetup(
        run_dir=tmp_path, config=config, config_fingerprint="test", student=student, objective=objective,
        step_loss=make_step_loss(objective, student, None, teacher_store=store), train_data=_data(task), dev_data={},
        task=task, lr=1e-3, epochs=1, runtime=Runtime(device=torch.device("cpu"), precision="fp32"),
    )
    return Trainer(setup)


@pytest.mark.parametrize("method", ["ckd", "ckd-full-triple", "pkd", "minilm"])
def test_cached_step_is_independent_of_grad_accum(method, models, store_dir, tmp_path):
    """As tests/test_batch_split.py for the live teacher: float64 student, the cache's teacher side."""
    task, teacher, _ = models
    common = {"num_labels": task.num_labels, "regression": False}
    student = build_model({**SHAPE, "layers": 2}, role="student", seed=2, **common).model.double().train()
    objective = _objective(method, task, teacher, student)
    store = open_store(store_dir, KEY, objective_fields(objective)[0], rebuild="R")

    def step(grad_accum):
        trainer = _trainer(task, teacher, student, method, grad_accum, tmp_path, store)
        loss, terms = trainer.accumulate_gradients(ORDER)
        return loss, terms, [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in trainer.params]

    whole = step(1)
    assert any(float(g.abs().max()) > 0 for g in whole[2])
    for grad_accum in SPLITS[1:]:
        _assert_same(whole, step(grad_accum), f"{method} cached grad_accum={grad_accum}")


def test_sizes_follow_the_documented_layout(models, store_dir):
    manifest = json.loads((store_dir / MANIFEST).read_text())
    lengths = [5, 17, 9, 23, 3, 12, 20, 7]
    assert manifest["examples"] == 8 and [s["stop"] for s in manifest["shards"]] == [3, 6, 8]
    assert field_size("token/2", 5, labels=2, width=32, heads=4) == 2 * 15
    assert field_size("layers/0,2,4", 5, labels=2, width=32, heads=4) == 5 * 2 * 6
    values = cache_bytes(manifest["fields"], lengths, labels=models[0].num_labels, width=32, heads=4)
    stored = sum(np.load(store_dir / s["name"] / n).nbytes for s in manifest["shards"] for n in s["files"]
                 if not n.endswith(".offsets.npy") and n != "lengths.npy")
    assert stored == values
    assert manifest["store_relative_error"] == 2.0**-24


def test_half_precision_store_states_its_error(models, tmp_path):
    task, teacher, student = models
    fields = ["logits", "token/2"]
    out = {}
    for dtype in ("float32", "bfloat16", "float16"):
        manifest = build_store(tmp_path / dtype, KEY, fields, _data(task), teacher, batch_size=4, autocast=contextlib.nullcontext,
                               dtype=dtype, info={"heads": 4}, log=lambda m: None)
        store = open_store(tmp_path / dtype, KEY, fields, rebuild="R")
        batch = _data(task).batch(range(8))
        out[dtype] = (manifest, store.batch(batch["index"], batch["attention_mask"]))
    exact = out["float32"][1]["token/2"][1]
    for dtype, bound in (("bfloat16", 2.0**-8), ("float16", 2.0**-11)):
        manifest, got = out[dtype]
        assert manifest["store_relative_error"] == bound
        assert manifest["bytes"] < out["float32"][0]["bytes"]
        err = (got["token/2"][1] - exact).abs().max() / exact.abs().max()
        assert 0 < float(err) <= bound


# ----------------------------------------------------------------------------- command, refusal, kill


TINY = {"init": "random", "tokenizer": "synthetic", "layers": 4, "hidden": 32, "heads": 4, "ffn": 64}
QUIET = ["train.progress=false", "train.tensorboard=false", "train.threads=1"]
DATA = ["task=syn-sentiment", "data.max_length=32", "data.synthetic_train_size=48", "data.synthetic_dev_size=16"]
STUDENT = [f"student.{k}={v}" for k, v in {**TINY, "layers": 2}.items()]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> tuple[Path, Path]:
    return saved_teachers(tmp_path_factory.mktemp("teachers"), TINY)


def cache_args(teacher: Path, out: Path, *extra: str) -> list[str]:
    return ["cache-teacher", *DATA, f"teacher.name_or_path={teacher}", *QUIET, "train.eval_batch_size=8",
            "--methods", "kd,ckd,pkd", "--student-layers", "2", "--shard-examples", "16", *extra, "--out", str(out)]


def distill(out: Path, teacher: Path, method: str, *extra: str) -> int:
    return cli(["distill", *DATA, f"method={method}", f"output_dir={out}", f"teacher.name_or_path={teacher}", *STUDENT,
                "train.max_steps=3", "train.batch_size=16", "use_task_settings=false", *QUIET, *extra])


def error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"ckd {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.npy"))}


def test_a_run_with_the_cache_ends_as_the_live_run_and_says_so(teachers, tmp_path):
    a, _ = teachers
    cache = tmp_path / "cache"
    assert cli(cache_args(a, cache)) == 0
    records = {}
    for source in ("live", "cache"):
        extra = [f"teacher_cache={cache}"] if source == "cache" else []
        assert distill(tmp_path / f"run-{source}", a, "ckd", *extra) == 0
        records[source] = json.loads((tmp_path / f"run-{source}" / "record.json").read_text())
    head = records["cache"]["teacher"]["teacher_cache"]
    assert head["source"] == "cache" and head["store_dtype"] == "float32" and "layers/0,2,4" in head["fields"]
    assert "teacher_cache" not in records["live"]["teacher"]
    # the same dev metrics, and the same training losses to 1e-5 relative (float32, CPU, 3 steps)
    assert records["cache"]["metrics"] == records["live"]["metrics"]
    live, cached = records["live"]["history"], records["cache"]["history"]
    assert len(live) == len(cached) > 0
    for one, other in zip(live, cached):
        assert other["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
        # (abs: this random-weight teacher's LTR pair term is ~3e-7, float32 rounding noise on 1.0-sized cosines)
        assert other["loss_terms"] == pytest.approx(one["loss_terms"], rel=1e-5, abs=1e-10)
    # a method with a live-only term keeps the live teacher, and the record says why
    assert distill(tmp_path / "distil", a, "distilbert-cos", f"teacher_cache={cache}") == 0
    head = json.loads((tmp_path / "distil" / "record.json").read_text())["teacher"]["teacher_cache"]
    assert head["source"] == "live teacher" and "DistilBERT" in head["reason"]


def test_stale_and_damaged_caches_are_refused_in_one_line(teachers, tmp_path, capsys):
    a, b = teachers
    cache = tmp_path / "cache"
    assert cli(cache_args(a, cache)) == 0
    capsys.readouterr()
    # another teacher
    assert distill(tmp_path / "b", b, "ckd", f"teacher_cache={cache}") == 2
    line = error_line(capsys, "distill")
    assert f"{cache} was computed with another teacher (weights or config): key field 'teacher'" in line
    assert f"rebuild it with `ckd cache-teacher task=syn-sentiment teacher.name_or_path={b}" in line
    assert "--methods ckd,kd,pkd --student-layers 2 --out" in line
    # other token ids (max_length), and another tokenizer (a run's key: ckd.cache_key.fingerprint_tokenizer)
    assert distill(tmp_path / "tok", a, "ckd", f"teacher_cache={cache}", "data.max_length=16") == 2
    assert "key field 'max_length' is 32 in the file but 16 for this run" in error_line(capsys, "distill")
    key = json.loads((cache / MANIFEST).read_text())["key"]
    with pytest.raises(CacheError, match=r"was computed with another tokenizer: key field 'tokenizer' is \w{12} in the file "
                                         r"but 000000000000 for this run; rebuild it with `R`"):
        open_store(cache, {**key, "tokenizer": "0" * 64}, ["logits"], rebuild="R")
    # another layer map: a 1-layer student maps teacher layers 0 and 4 only
    assert distill(tmp_path / "map", a, "ckd", f"teacher_cache={cache}", "student.layers=1") == 2
    line = error_line(capsys, "distill")
    assert "holds no layer Gram matrices of teacher hidden states 0,4 (another layer map?)" in line
    assert "--student-layers 1,2" in line
    # a method the cache was not built for
    assert distill(tmp_path / "minilm", a, "minilm", f"teacher_cache={cache}") == 2
    assert "holds no last-layer attention scores" in error_line(capsys, "distill")
    # damaged: a shard file truncated, then one byte changed
    victim = next(cache.glob("shard-00001/token@2.npy"))
    original = victim.read_bytes()
    victim.write_bytes(original[:-4])
    assert distill(tmp_path / "cut", a, "ckd", f"teacher_cache={cache}") == 2
    assert "is damaged (shard-00001/token@2.npy differs from the manifest): rebuild it with `ckd cache-teacher" in error_line(capsys, "distill")
    victim.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    assert distill(tmp_path / "flip", a, "ckd", f"teacher_cache={cache}") == 2
    assert "is damaged" in error_line(capsys, "distill")
    # the printed command rebuilds a cache the run accepts
    victim.write_bytes(original)
    assert distill(tmp_path / "b", b, "ckd", f"teacher_cache={cache}") == 2
    command = error_line(capsys, "distill").split("rebuild it with `", 1)[1].rstrip("`")
    argv = shlex.split(command)[1:]
    argv[argv.index("--methods"):argv.index("--methods")] = QUIET
    assert cli(argv) == 0
    assert distill(tmp_path / "b", b, "ckd", f"teacher_cache={cache}") == 0


def test_killed_build_resumes_to_an_identical_cache(teachers, tmp_path):
    a, _ = teachers
    reference = tmp_path / "reference"
    assert cli(cache_args(a, reference)) == 0
    killed = tmp_path / "killed"
    outcome = run_and_stop(cache_args(a, killed), "teacher-cache-shard", 2)
    assert outcome.returncode == -9
    assert not (killed / MANIFEST).exists() and (killed / "shard-00000").is_dir()
    with pytest.raises(CacheError, match="holds an unfinished build .re-run it to resume.: build it with `R`"):
        open_store(killed, {}, [], rebuild="R")
    assert cli(cache_args(a, killed)) == 0
    assert _files(killed) == _files(reference)
    ref, got = (json.loads((p / MANIFEST).read_text()) for p in (reference, killed))
    assert {k: v for k, v in ref.items() if k != "info"} == {k: v for k, v in got.items() if k != "info"}


def test_rebuild_command_names_methods_depths_and_dtype():
    config = resolve_config("distill", None, ["task=rte", "teacher.name_or_path=t", "output_dir=o", "method=ckd",
                                              "student.name_or_path=s", "train.precision=bf16"])
    command = rebuild_command(config, "c", ["pkd", "ckd", "pkd"], [6, 4], "bfloat16")
    assert command == ("ckd cache-teacher task=rte teacher.name_or_path=t train.precision=bf16 --methods ckd,pkd "
                       "--student-layers 4,6 --dtype bfloat16 --out c")


def test_cache_size_at_the_papers_sizes_by_hand():
    """BERT-base -> 6L-768 under uniform+emb: K = 7 mapped layers (0, 2, ..., 12). Per example of n tokens
    ckd stores 2 logits, 7 token records of 2 tri(n) and n layer records of 2 tri(7) values."""
    from benchmarks.cache_size import PAPER, method_fields, per_example, run_cache_sizes

    fields, k = method_fields("ckd", PAPER, 6, 768)
    assert k == 7 and fields == {"logits", *(f"token/{i}" for i in range(0, 13, 2)), "layers/0,2,4,6,8,10,12"}
    n = 128
    by_hand = 4 * (2 + 7 * n * (n + 1) + n * 2 * 28)
    assert per_example(fields, [n], 1, PAPER, 2) == by_hand == 491_016
    assert by_hand / (4 * n * 768 * 7) == pytest.approx(1 / 5.6, rel=1e-2)  # the worst case, every example at 128
    assert method_fields("pkd", PAPER, 4, 312) == (set(), 0)  # PKD needs equal widths
    lines, targets, results = run_cache_sizes(quick=True)
    assert 0 < results["tasks"]["rte"]["ckd_hidden_ratio"] < 1 and "ckd cache bytes/example" in targets[0]
