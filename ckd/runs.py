"""From a resolved run config to a finished run folder: data, models, objective, training, record."""

from __future__ import annotations

import copy
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from ckd import checkpoint as ckpt
from ckd.atomic import atomic_directory, atomic_write_json
from ckd.config import check_max_length, check_method_settings, result_fingerprint
from ckd.data.encoding import encode_split
from ckd.data.loading import data_fingerprint, run_splits, scored_task
from ckd.data.tasks import get_task
from ckd.distributed import barrier, gather_objects, start_runtime, stop_runtime
from ckd.errors import CkdError, ConfigError
from ckd.evaluation import evaluate
from ckd.hooks import AttentionCapture
from ckd.interrupts import defer_interrupts
from ckd.methods import ResolvedMethod, Term, load_methods, resolve_method
from ckd.models import build_model, check_same_tokenizer, describe, save_model
from ckd.objectives import TERMS, Batch, Objective, Outputs
from ckd.pause import pause_point
from ckd.run_dir import RunFolder, finished_record, tidy_finished
from ckd.run_dir import claim as claim_run_folder
from ckd.run_record import PREDICTIONS_FILE, RECORD_FILE, build_record, predictions_payload
from ckd.teacher_cache import load_teacher_logits, rebuild_command, teacher_logits_key
from ckd.train import TrainSetup, train

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_LR = 5e-5
DEFAULT_EPOCHS = 3


def run_forward(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], *, hidden: bool, capture: bool, capture_layers=None
) -> Outputs:
    inputs = {k: batch[k] for k in MODEL_INPUTS}
    recorder = AttentionCapture(model, layers=capture_layers) if capture else nullcontext()
    with recorder:
        out = model(**inputs, output_hidden_states=hidden)
    return Outputs(logits=out.logits, hidden_states=out.hidden_states if hidden else None, capture=recorder if capture else None)


def teacher_forward(model: torch.nn.Module, batch: dict[str, torch.Tensor], objective: Objective) -> Outputs:
    """The teacher's outputs under inference_mode, with only what the objective reads (hidden states and
    attention internals of the layers its terms use). Inference tensors cannot be saved for backward, so
    the logits and the used hidden states are cloned out of it (a few MB); the attention scores losses
    compute from the captured projections are ordinary tensors already."""
    with torch.inference_mode():
        out = run_forward(
            model, batch, hidden=objective.needs_hidden, capture=objective.needs_capture,
            capture_layers=objective.capture_layers("teacher"),
        )
    hidden = out.hidden_states
    if hidden is not None:
        used = objective.teacher_hidden_layers(len(hidden))
        hidden = tuple(h.clone() if i in used else h for i, h in enumerate(hidden))
    return Outputs(logits=out.logits.clone(), hidden_states=hidden, capture=out.capture)


def make_step_loss(
    objective: Objective, student: torch.nn.Module, teacher: torch.nn.Module | None = None,
    cached_logits: torch.Tensor | None = None, teacher_store: Any = None,
):
    """The loss of one batch as the training loop calls it: the student forward, the teacher's outputs
    (from `teacher_store`, a ckd.teacher_store.TeacherStore holding every field the objective reads, when
    given; cached logits for logit-only methods when given; else a teacher forward) and the objective."""

    def step_loss(
        batch: dict[str, torch.Tensor], shares: dict[str, float] | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        student_out = run_forward(
            student, batch, hidden=objective.needs_hidden, capture=objective.needs_capture,
            capture_layers=objective.capture_layers("student"),
        )
        teacher_out = None
        if objective.needs_teacher:
            if teacher_store is not None:
                teacher_out = teacher_store.outputs(batch, objective)
            elif cached_logits is not None:
                teacher_out = Outputs(logits=cached_logits[batch["index"]])
            else:
                teacher_out = teacher_forward(teacher, batch, objective)
        return objective(Batch(labels=batch["labels"], attention_mask=batch["attention_mask"]), student_out, teacher_out, shares)

    return step_loss


def _open_teacher_cache(config, task, objective, teacher_built, tokenizer, train_data, data_fp):
    """The teacher cache (config teacher_cache, ckd.teacher_store) if it can serve every teacher term of the
    objective, else None (the live teacher runs); the record's teacher.head.teacher_cache says which and why."""
    from ckd import teacher_store

    path = str(config["teacher_cache"])
    fields, reason = teacher_store.objective_fields(objective)
    if reason is not None:
        teacher_built.head = {**teacher_built.head, "teacher_cache": {"source": "live teacher", "dir": path, "reason": reason}}
        print(f"teacher_cache={path} not used: {reason}; the teacher runs live", file=sys.stderr)
        return None
    key = teacher_store.store_key(config, task, teacher_built.model, tokenizer, train_data, data_fp)
    info = teacher_store.manifest_info(path)  # a rebuild keeps serving the methods and depths the cache served
    methods = {str(config["method"]), *info.get("methods", [])}
    depths = {*info.get("student_layers", []), objective.map.student_layers if objective.map is not None else 1}
    rebuild = teacher_store.rebuild_command(config, path, methods, depths, info.get("store_dtype", "float32"))
    store = teacher_store.open_store(path, key, fields, rebuild=rebuild)
    teacher_built.head = {**teacher_built.head, "teacher_cache": {
        "source": "cache", "dir": path, "teacher_fingerprint": key["teacher"], "fields": store.fields,
        "store_dtype": store.dtype, "store_relative_error": store.manifest["store_relative_error"],
    }}
    return store


def _load_data(config: dict[str, Any], task: Any) -> tuple[list, dict[str, list]]:
    """Training examples and evaluation splits (dev, or the carved selection split: ckd.data.loading.run_splits)."""
    return run_splits(task, config["data"])


def _finetune_method(task_name: str) -> ResolvedMethod:
    return ResolvedMethod(
        name="finetune", base="finetune", description="fine-tuning on gold labels", needs_teacher=False,
        layer_map=None, intermediate=False, after=None, terms=[Term("task", 1.0)], settings={},
    )


def _train_hyperparameters(config: dict[str, Any], method: ResolvedMethod) -> tuple[float, int]:
    lr = config["train"]["lr"] or method.settings.get("lr") or DEFAULT_LR
    epochs = config["train"]["epochs"] or method.settings.get("epochs") or DEFAULT_EPOCHS
    return float(lr), int(epochs)


def is_complete(run_dir: Path) -> bool:
    """Whether `run_dir` holds a finished run: a readable record.json (a 0-byte or truncated one is not)."""
    return finished_record(run_dir) is not None


def execute(kind: str, config: dict[str, Any], *, force: bool = False) -> dict[str, Any] | None:
    """Run `ckd finetune` or `ckd distill` for a resolved config; returns the record (None if already done)."""
    runtime = start_runtime(str(config["train"]["device"]), str(config["train"]["precision"]))
    try:
        return _execute(kind, config, runtime, force)
    finally:
        stop_runtime(runtime)


def _execute(kind: str, config: dict[str, Any], runtime, force: bool) -> dict[str, Any] | None:
    """Claim the output folder (ckd.run_dir: identity, inputs, lock; before anything loads), then run."""
    run_dir = Path(config["output_dir"])
    folder = claim_run_folder(
        kind, config, force=force, is_main=runtime.is_main, agree=lambda outcome: gather_objects(outcome, runtime)[0]
    )
    if folder is None:
        if runtime.is_main:
            tidy_finished(run_dir)  # a kill between the record and the clean-up left checkpoints or temporaries
        print(f"{run_dir / RECORD_FILE} exists: run already complete (use --force to redo it)", file=sys.stderr)
        return None
    with folder:
        return _run(kind, config, runtime, force, folder)


def _run(kind: str, config: dict[str, Any], runtime, force: bool, folder: RunFolder) -> dict[str, Any] | None:
    run_dir = folder.path
    started = time.time()
    if config["train"]["threads"]:
        torch.set_num_threads(int(config["train"]["threads"]))
    # scored on the dev split(s), or on the selection split carved from the training set
    task = scored_task(get_task(config["task"]), config["data"])
    config = copy.deepcopy(config)
    config["task"] = task.name

    if kind == "finetune":
        method = _finetune_method(task.name)
        model_spec = config["model"]
        teacher_built = None
    else:
        document = load_methods(config["methods_file"])
        method = resolve_method(
            document, config["method"], task.name,
            use_task_settings=bool(config["use_task_settings"]), options=config["method_options"], known_terms=set(TERMS),
        )
        check_method_settings(
            method.name, method.settings, config["method_options"], document["_path"], {t.name: t.weight for t in method.terms}
        )
        model_spec = copy.deepcopy(config["student"])
        if method.after:
            model_spec = _second_stage_student(config, method, model_spec, force)
        teacher_built = None
        if method.needs_teacher:
            if not config["teacher"]:
                raise ConfigError(f"method {method.name!r} needs a teacher: set teacher.name_or_path to a fine-tuned teacher folder")
            # a teacher must carry a trained head for this task (labels mapped by name): ckd.models.build_model
            teacher_built = build_model(config["teacher"], task=task, role="teacher", head="trained")
            teacher_built.model.to(runtime.device).eval().requires_grad_(False)

    lr, epochs = _train_hyperparameters(config, method)
    role = "model" if kind == "finetune" else "student"
    student = build_model(model_spec, task=task, role=role, seed=int(config["seed"]))
    student.model.to(runtime.device)
    if teacher_built is not None:
        check_same_tokenizer(teacher_built.tokenizer, student.tokenizer, str(config["teacher"].get("name_or_path")), str(model_spec.get("name_or_path") or model_spec.get("tokenizer")))

    positions = {role: student.model.config, **({"teacher": teacher_built.model.config} if teacher_built else {})}
    check_max_length(int(config["data"]["max_length"]), positions)  # before the data is read
    train_examples, dev_examples = _load_data(config, task)
    max_length = int(config["data"]["max_length"])
    train_data = encode_split(train_examples, student.tokenizer, max_length, task)
    dev_data = {split: encode_split(examples, student.tokenizer, max_length, task) for split, examples in dev_examples.items()}
    fingerprints = {"train": data_fingerprint(train_examples), **{s: data_fingerprint(e) for s, e in dev_examples.items()}}

    objective = Objective(
        method, regression=task.is_regression,
        teacher_config=teacher_built.model.config if teacher_built else None, student_config=student.model.config,
    )
    cached_logits = None
    if teacher_built is not None and objective.logits_only and config.get("teacher_logits"):
        key = teacher_logits_key(config, task, teacher_built.model, student.tokenizer, train_data, fingerprints["train"])
        rebuild = rebuild_command(config, config["teacher_logits"])
        cached_logits = load_teacher_logits(config["teacher_logits"], key, rebuild).to(runtime.device)
        # the record's teacher says which weights the cached logits came from (content, not path)
        teacher_built.head = {**teacher_built.head, "logits_cache": {"file": str(config["teacher_logits"]), "teacher_fingerprint": key["teacher"]}}

    store = None
    if teacher_built is not None and objective.needs_teacher and config.get("teacher_cache"):
        store = _open_teacher_cache(config, task, objective, teacher_built, student.tokenizer, train_data, fingerprints["train"])
    step_loss = make_step_loss(objective, student.model, teacher_built.model if teacher_built else None, cached_logits, store)

    config_fp = result_fingerprint(config)
    if runtime.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    barrier(runtime)
    objective.to(runtime.device)
    setup = TrainSetup(
        run_dir=run_dir, config=config, config_fingerprint=config_fp, student=student.model, objective=objective,
        step_loss=step_loss, train_data=train_data, dev_data=dev_data, task=task, lr=lr, epochs=epochs,
        evaluate_dev=not method.intermediate, runtime=runtime,
    )
    result = train(setup)
    if not runtime.is_main:
        return None

    eval_ms = None
    if not method.intermediate:
        _, _, eval_ms = evaluate(student.model, dev_data, task, int(config["train"]["eval_batch_size"]), runtime.autocast)
    with defer_interrupts("the final save"):  # SIGTERM / SIGINT now would leave a half-saved run
        if config["train"]["save_model"] or method.intermediate:
            with atomic_directory(run_dir / "model") as tmp:
                save_model(student, tmp)
        if result.final_predictions is not None:
            atomic_write_json(run_dir / PREDICTIONS_FILE, predictions_payload(result.final_predictions, result.best_predictions))
        record = build_record(
            kind="intermediate" if method.intermediate else kind,
            config=config, config_fingerprint=config_fp, task=task, method=method, result=result,
            student=describe(student.model, student.spec, student.head),
            teacher=describe(teacher_built.model, {**config["teacher"], "name": config["teacher"].get("name")}, teacher_built.head) if teacher_built else None,
            layer_map=objective.map.to_record() if objective.map else None,
            data_fingerprints=fingerprints, wall_seconds=time.time() - started, eval_ms_per_example=eval_ms,
            runtime=runtime.to_record(),
        )
        from ckd.general.regime import training_regime

        record.update(training_regime(model_spec, teacher_built is not None))  # regime: ckd.general.regime
        folder.write_record(record)  # record.json last (with its second name, ckd.run_dir)
        ckpt.remove_checkpoints(run_dir)
    pause_point("run-finished")
    return record


def _second_stage_student(config: dict[str, Any], method: ResolvedMethod, student_spec: dict[str, Any], force: bool) -> dict[str, Any]:
    """A chained method (TinyBERT prediction) starts from its first stage's student: run or reuse that stage."""
    stage_dir = config.get("init_from_run")
    if not stage_dir:
        stage_dir = str(Path(config["output_dir"]) / "stage1")
        stage_config = copy.deepcopy(config)
        stage_config.update(method=method.after, output_dir=stage_dir, method_name=None, init_from_run=None)
        # Each stage has its own recipe: options only the second stage has (its temperature) stay with it.
        first = resolve_method(load_methods(config["methods_file"]), method.after, str(config["task"]),
                               use_task_settings=bool(config["use_task_settings"]), known_terms=set(TERMS))
        stage_config["method_options"] = {k: v for k, v in config["method_options"].items() if k in first.settings}
        print(f"method {method.name!r} runs after {method.after!r}: running that stage in {stage_dir}", file=sys.stderr)
        execute("distill", stage_config, force=force)
    model_dir = Path(stage_dir) / "model"
    if not is_complete(Path(stage_dir)) or not model_dir.is_dir():
        raise CkdError(f"init_from_run={stage_dir} is not a finished {method.after!r} run (no record.json / model/): run that stage first")
    stage = finished_record(Path(stage_dir))
    if method.after not in (stage.get("method"), stage.get("method_base")) or stage.get("task") != config["task"]:
        raise CkdError(
            f"init_from_run={stage_dir} holds a {stage.get('kind')} run of method {stage.get('method')!r} on {stage.get('task')}, "
            f"not a {method.after!r} run on {config['task']}: point init_from_run at that stage's run folder"
        )
    return {"name_or_path": str(model_dir), "init": "pretrained", "name": student_spec.get("name") or None}
