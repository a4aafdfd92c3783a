"""`ckd general-distill` from a resolved config to a finished run folder: record.json and model/ (an MLM model
the task runs start from, with ckd_general.json naming where it came from).

The loop is the task runs' (ckd.train.Trainer): exact resume from the latest step checkpoint (same
config, same thread count), SIGTERM / Ctrl-C checkpoint and stop, bf16 autocast, progress bar,
TensorBoard, torchrun. The training split is the packed corpus (ckd.corpus.packed), masked for MLM
as a pure function of (seed, row), so a resumed run sees the same masks.
"""

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
from ckd.corpus.packed import IGNORE, open_pack
from ckd.distributed import barrier, gather_objects, start_runtime, stop_runtime
from ckd.errors import ConfigError, ModelError
from ckd.general.config import default_general_methods_file
from ckd.general.models import GeneralModel, build_general_model, mlm_head_module
from ckd.general.objective import GENERAL_TERMS, GeneralObjective
from ckd.general.regime import MARKER
from ckd.hooks import AttentionCapture
from ckd.interrupts import defer_interrupts
from ckd.methods import load_methods, resolve_method
from ckd.models import check_same_tokenizer, describe
from ckd.objectives import Batch, Outputs
from ckd.pause import pause_point
from ckd.run_dir import check_not_an_input, tidy_finished
from ckd.run_dir import claim as claim_run_folder
from ckd.run_record import RECORD_FILE, SCHEMA_VERSION, determinism, git_state, library_versions
from ckd.train import TrainSetup, train

KIND = "general"
GENERAL_TASK = "general"   # the "task" a general method is resolved for (its recipe has no per-task rows)
DEFAULT_LR = 1e-4


def general_forward(model, batch, *, hidden: bool, capture: bool, capture_layers, mlm: bool) -> Outputs:
    """One forward of a *ForMaskedLM on a packed-corpus batch: hidden states when asked, attention internals,
    and (with `mlm`) the MLM logits at the masked positions only, (M, V)."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    recorder = AttentionCapture(model, layers=capture_layers) if capture else nullcontext()
    with recorder:
        out = model.base_model(**inputs, output_hidden_states=hidden)
    logits = None
    if mlm:
        logits = mlm_head_module(model)(out.last_hidden_state[batch["labels"] != IGNORE])
    return Outputs(logits=logits, hidden_states=out.hidden_states if hidden else None, capture=recorder if capture else None)


def make_general_step_loss(objective: GeneralObjective, student, teacher):
    def step_loss(batch: dict[str, torch.Tensor], shares: dict[str, float] | None = None):
        student_out = general_forward(
            student, batch, hidden=objective.needs_hidden, capture=objective.needs_capture,
            capture_layers=objective.capture_layers("student"), mlm=objective.needs_mlm,
        )
        teacher_out = None
        if objective.needs_teacher:
            with torch.inference_mode():
                out = general_forward(
                    teacher, batch, hidden=objective.needs_hidden, capture=objective.needs_capture,
                    capture_layers=objective.capture_layers("teacher"), mlm=objective.teacher_mlm,
                )
            hidden = out.hidden_states
            if hidden is not None:  # inference tensors cannot be saved for backward: clone what the terms read
                used = objective.teacher_hidden_layers(len(hidden))
                hidden = tuple(h.clone() if i in used else h for i, h in enumerate(hidden))
            teacher_out = Outputs(logits=out.logits.clone() if out.logits is not None else None, hidden_states=hidden, capture=out.capture)
        return objective(Batch(labels=batch["labels"], attention_mask=batch["attention_mask"]), student_out, teacher_out, shares)

    return step_loss


def resolve_general_method(config: dict[str, Any], teacher: GeneralModel):
    """The method with its settings; the masked-LM KD term kept, dropped or refused by `mlm_logit_kd`
    (auto: kept when the teacher has a trained MLM head; true: required; false: dropped)."""
    path = config["methods_file"] or default_general_methods_file()
    document = load_methods(path)
    method = resolve_method(document, config["method"], GENERAL_TASK, use_task_settings=False,
                            options=config["method_options"], known_terms=set(GENERAL_TERMS))
    setting = method.settings.get("mlm_logit_kd", "auto")
    if setting not in ("auto", True, False):
        raise ConfigError(f"method_options.mlm_logit_kd must be auto, true or false, got {setting!r}")
    check_method_settings(method.name, {k: v for k, v in method.settings.items() if k != "mlm_logit_kd"},
                          config["method_options"], document["_path"], {t.name: t.weight for t in method.terms})
    dropped = []
    uses_head = [t.name for t in method.terms if t.name == "mlm_kd"]
    if uses_head and not teacher.mlm_head:
        if setting is True:
            raise ModelError(
                f"method {method.name!r} distils masked-LM logits (mlm_kd) but the teacher {teacher.spec.get('name_or_path')} has "
                f"no trained MLM head: give a teacher with one (e.g. bert-base-uncased), or method_options.mlm_logit_kd=auto"
            )
        dropped.append({"term": "mlm_kd", "reason": "the teacher has no trained MLM head (mlm_logit_kd auto)"})
    if uses_head and setting is False:
        dropped.append({"term": "mlm_kd", "reason": "mlm_logit_kd false"})
    if dropped:
        method.terms = [t for t in method.terms if t.name != "mlm_kd"]
        if not method.terms:
            raise ConfigError(f"method {method.name!r} has no term left without masked-LM KD; choose another method")
    return method, dropped, str(path)


def execute_general(config: dict[str, Any], *, force: bool = False) -> dict[str, Any] | None:
    runtime = start_runtime(str(config["train"]["device"]), str(config["train"]["precision"]))
    try:
        run_dir = Path(config["output_dir"])
        check_not_an_input(run_dir, {"corpus": Path(config["corpus"]).expanduser().resolve()})
        folder = claim_run_folder(KIND, config, force=force, is_main=runtime.is_main,
                                  agree=lambda outcome: gather_objects(outcome, runtime)[0])
        if folder is None:
            if runtime.is_main:
                tidy_finished(run_dir)
            print(f"{run_dir / RECORD_FILE} exists: run already complete (use --force to redo it)", file=sys.stderr)
            return None
        with folder:
            return _run(config, runtime, folder)
    finally:
        stop_runtime(runtime)


def _run(config: dict[str, Any], runtime, folder) -> dict[str, Any] | None:
    run_dir = folder.path
    started = time.time()
    if config["train"]["threads"]:
        torch.set_num_threads(int(config["train"]["threads"]))
    seed = int(config["seed"])
    teacher = build_general_model(config["teacher"], role="teacher", seed=seed)
    teacher.model.to(runtime.device).eval().requires_grad_(False)
    method, dropped, methods_path = resolve_general_method(config, teacher)
    student = build_general_model(config["student"], role="student", seed=seed)
    student.model.to(runtime.device)
    check_same_tokenizer(teacher.tokenizer, student.tokenizer, str(config["teacher"].get("name_or_path")),
                         str(config["student"].get("name_or_path") or config["student"].get("tokenizer")))
    max_length = int(config["data"]["max_length"])
    check_max_length(max_length, {"teacher": teacher.model.config, "student": student.model.config})
    corpus = open_pack(config["corpus"], student.tokenizer, max_length, config["corpus_spec"]).with_seed(seed)
    objective = GeneralObjective(method, regression=False, teacher_config=teacher.model.config, student_config=student.model.config)
    step_loss = make_general_step_loss(objective, student.model, teacher.model)
    lr = float(config["train"]["lr"] or method.settings.get("lr") or DEFAULT_LR)
    config_fp = result_fingerprint(config)
    barrier(runtime)
    objective.to(runtime.device)
    setup = TrainSetup(
        run_dir=run_dir, config={**config, "task": GENERAL_TASK}, config_fingerprint=config_fp, student=student.model,
        objective=objective, step_loss=step_loss, train_data=corpus, dev_data={}, task=None, lr=lr, epochs=1,
        runtime=runtime, evaluate_dev=False,
    )
    result = train(setup)
    if not runtime.is_main:
        return None
    manifest = corpus.manifest
    corpus_record = {"dir": str(config["corpus"]), "name": manifest.get("name"), "key": manifest["key"],
                     "counts": manifest["counts"], "tokenizer": manifest["tokenizer"].get("reference"),
                     "sequences_seen": result.examples_seen, "epochs_seen": round(result.examples_seen / len(corpus), 4)}
    teacher_info = {**describe(teacher.model, teacher.spec), "mlm_head": teacher.mlm_head}
    student_info = describe(student.model, {**student.spec, "name": config.get("name") or student.spec.get("name")})
    marker = {"general_run": str(run_dir), "name": config.get("name") or student_info["name"], "method": method.name,
              "teacher": teacher_info.get("name_or_path"), "corpus": corpus_record["name"], "corpus_key": manifest["key"],
              "steps": result.steps, "config_fingerprint": config_fp}
    with defer_interrupts("the final save"):
        with atomic_directory(run_dir / "model") as tmp:
            student.model.save_pretrained(tmp, safe_serialization=True)
            student.tokenizer.save_pretrained(tmp)
            atomic_write_json(tmp / MARKER, marker)
        record = {
            "schema_version": SCHEMA_VERSION, "ckd_version": library_versions()["ckd"], "kind": KIND,
            "regime": "general", "study": config.get("study"), "task": None, "name": marker["name"],
            "method": method.name, "method_base": method.base, "method_overrides": dict(config["method_options"]),
            "method_resolved": {**method.to_record(), "methods_file": methods_path, "dropped_terms": dropped},
            "seed": seed, "student": student_info, "teacher": teacher_info,
            "layer_map": objective.map.to_record() if objective.map else None, "corpus": corpus_record,
            "metrics": None, "history": result.history,
            "final_loss": result.history[-1]["train_loss"] if result.history else None,
            "timing": {
                "wall_s": round(time.time() - started, 3), "train_s": round(result.train_seconds, 3), "train_steps": result.steps,
                "train_sequences_per_s": round(result.examples_seen / result.train_seconds, 2) if result.train_seconds else None,
                "step_s": round(result.train_seconds / result.steps, 4) if result.steps else None,
            },
            "runtime": runtime.to_record(), **determinism(runtime.to_record()), "versions": library_versions(),
            **git_state(), "data_fingerprint": {"corpus": manifest["key"]}, "config_fingerprint": config_fp,
            "config": copy.deepcopy(config),
        }
        folder.write_record(record)
        ckpt.remove_checkpoints(run_dir)
    pause_point("run-finished")
    return record
