"""The DynaBERT stages as `ckd dynabert` runs them: rewire -> train width -> train depth -> evaluate -> export.

Training stages are ordinary ckd run folders (ckd.run_dir: owner, lock, record.json last) trained by
ckd.train.Trainer, so a stage killed anywhere resumes from its last checkpoint to the same result.

- width stage (DynaBERT_W): the student starts as the rewired teacher; each step, every width m_w at full
  depth is distilled from the fixed teacher (losses summed, one optimiser step; the authors accumulate
  the same gradients width by width).
- depth stage (DynaBERT): student and teacher both start as DynaBERT_W; the teacher stays fixed; each step,
  every (m_w, m_d) is distilled from the teacher at width m_w (teacher_width: same) or at full width
  (teacher_width: full, what the released code does), full depth.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ckd import checkpoint as ckpt
from ckd.atomic import atomic_directory, atomic_write_json
from ckd.config import check_method_settings, result_fingerprint
from ckd.data.encoding import encode_split
from ckd.data.loading import data_fingerprint, run_splits, scored_task
from ckd.data.tasks import get_task
from ckd.distributed import Runtime, start_runtime, stop_runtime
from ckd.dynabert import dynamic
from ckd.dynabert.config import default_methods_file
from ckd.dynabert.objective import StageObjective
from ckd.dynabert.rewire import importance, reorder
from ckd.dynabert.subnet import SubNet, grid, param_count
from ckd.errors import CkdError, ConfigError, ModelError
from ckd.evaluation import evaluate
from ckd.interrupts import defer_interrupts
from ckd.methods import load_methods, resolve_method
from ckd.models import build_model, describe, save_model
from ckd.objectives import TERMS, Batch, Outputs
from ckd.pause import pause_point
from ckd.run_dir import RunFolder, claim, tidy_finished
from ckd.run_record import RECORD_FILE, git_state
from ckd.train import TrainSetup, train

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
KINDS = {"width": "dynabert_width", "depth": "dynabert_depth"}


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in MODEL_INPUTS}


def _data(config: dict[str, Any], task: Any, tokenizer) -> tuple[Any, dict[str, Any], dict[str, str]]:
    train_examples, dev_examples = run_splits(task, config["data"])
    max_length = int(config["data"]["max_length"])
    train_data = encode_split(train_examples, tokenizer, max_length, task)
    dev = {split: encode_split(examples, tokenizer, max_length, task) for split, examples in dev_examples.items()}
    fingerprints = {"train": data_fingerprint(train_examples), **{s: data_fingerprint(e) for s, e in dev_examples.items()}}
    return train_data, dev, fingerprints


def _spec(config: dict[str, Any], key: str, command: str) -> dict[str, Any]:
    spec = config.get(key)
    if not spec or not spec.get("name_or_path"):
        raise ConfigError(f"missing config key '{key}.name_or_path': ckd dynabert {command} needs it (a model/ folder)")
    return {"init": "pretrained", **spec}


def _base_record(kind: str, config: dict[str, Any], task: Any, started: float) -> dict[str, Any]:
    from ckd import __version__

    return {
        "kind": kind, "task": task.name, "seed": int(config["seed"]), "method": config.get("method"),
        "config": config, "config_fingerprint": result_fingerprint(config),
        "ckd_version": __version__, **git_state(), "wall_seconds": round(time.time() - started, 3),
    }


def _claimed(kind: str, config: dict[str, Any], force: bool):
    folder = claim(kind, config, force=force)
    if folder is None:
        tidy_finished(Path(config["output_dir"]))
        print(f"{Path(config['output_dir']) / RECORD_FILE} exists: already complete (use --force to redo it)", file=sys.stderr)
    return folder


# --------------------------------------------------------------------------- rewire

def rewire(config: dict[str, Any], *, force: bool = False) -> dict[str, Any] | None:
    """Score heads and neurons of the fine-tuned `teacher` on training data, reorder, save to output_dir/model."""
    started = time.time()
    config = copy.deepcopy(config)
    folder = _claimed("dynabert_rewire", config, force)
    if folder is None:
        return None
    with folder:
        if config["train"]["threads"]:
            torch.set_num_threads(int(config["train"]["threads"]))
        task = scored_task(get_task(config["task"]), config["data"])
        built = build_model(_spec(config, "teacher", "rewire"), task=task, role="teacher", head="trained")
        train_data, _, fingerprints = _data(config, task, built.tokenizer)
        model = built.model
        before = _probe_logits(model, train_data)
        heads, neurons = importance(model, train_data, regression=task.is_regression,
                                    batch_size=int(config["rewire"]["batch_size"]), max_examples=config["rewire"]["max_examples"])
        orders = reorder(model, heads, neurons)
        after = _probe_logits(model, train_data)
        deviation = float((after - before).abs().max())
        if deviation > 1e-4:
            raise ModelError(f"rewiring changed the teacher's logits by {deviation:.2e} (> 1e-4): the reordering is wrong, nothing saved")
        with defer_interrupts("the final save"):
            with atomic_directory(folder.path / "model") as tmp:
                save_model(built, tmp)
            record = {
                **_base_record("dynabert_rewire", config, task, started),
                "teacher": describe(model, built.spec, built.head), "data_fingerprints": fingerprints,
                "importance": {"heads": heads.tolist(), "ffn_top": [n.topk(min(8, n.numel())).values.tolist() for n in neurons]},
                "orders": orders, "max_logit_change": deviation,
            }
            folder.write_record(record)
        return record


@torch.no_grad()
def _probe_logits(model: torch.nn.Module, data: Any, count: int = 32) -> torch.Tensor:
    model.eval()
    batch = data.batch(list(range(min(count, len(data)))))
    return model(**_inputs(batch)).logits.double()


# --------------------------------------------------------------------------- training stages

def stage_method(config: dict[str, Any], stage: str, task_name: str):
    """The objective of `stage` from the methods file: settings `<stage>_<name>` replace `<name>`, then the
    run's method_options apply on top."""
    path = config["methods_file"] or default_methods_file()
    document = load_methods(path)
    args = dict(use_task_settings=bool(config["use_task_settings"]), known_terms=set(TERMS))
    first = resolve_method(document, config["method"], task_name, **args)
    prefix = f"{stage}_"
    staged = {k[len(prefix):]: v for k, v in first.settings.items() if k.startswith(prefix) and k[len(prefix):] in first.settings}
    options = {**staged, **(config["method_options"] or {})}
    method = resolve_method(document, config["method"], task_name, options=options, **args)
    check_method_settings(method.name, method.settings, options, document["_path"], {t.name: t.weight for t in method.terms})
    return method


def _stage_subnets(config: dict[str, Any], stage: str) -> list[SubNet]:
    return grid(config["widths"], [1.0] if stage == "width" else config["depths"])


def make_stage_loss(stage: str, objective: StageObjective, student: torch.nn.Module, teacher: torch.nn.Module, teacher_width: str):
    """The loss of one batch: teacher outputs once per distinct teacher width (full depth, no gradient), then
    every sub-network's forward and its objective, summed."""
    subnets = objective.subnets

    def teacher_outputs(batch) -> dict[float, Outputs]:
        widths = {1.0} if stage == "width" or teacher_width == "full" else {s.width for s in subnets}
        out = {}
        with torch.inference_mode():
            for width in widths:
                result = dynamic.forward(teacher, SubNet(width, 1.0), _inputs(batch), hidden=objective.needs_hidden)
                hidden = tuple(h.clone() for h in result.hidden_states) if objective.needs_hidden else None
                out[width] = Outputs(logits=result.logits.clone(), hidden_states=hidden)
        return out

    def step_loss(batch: dict[str, torch.Tensor], shares: dict[str, float] | None = None):
        teachers = teacher_outputs(batch)
        loss_batch = Batch(labels=batch["labels"], attention_mask=batch["attention_mask"])
        total, values = None, {}
        for subnet in subnets:
            result = dynamic.forward(student, subnet, _inputs(batch), hidden=objective.needs_hidden)
            outputs = Outputs(logits=result.logits, hidden_states=result.hidden_states if objective.needs_hidden else None)
            t_out = teachers[1.0] if 1.0 in teachers and len(teachers) == 1 else teachers[subnet.width]
            loss, terms = objective.subnet_loss(subnet, loss_batch, outputs, t_out, shares)
            total = loss if total is None else total + loss
            values.update(terms)
        return total, values

    return step_loss


def train_stage(stage: str, config: dict[str, Any], *, force: bool = False) -> dict[str, Any] | None:
    """Train the width (DynaBERT_W) or depth (DynaBERT) stage into output_dir; its record when it ran."""
    if stage not in KINDS:
        raise ConfigError(f"stage must be one of {', '.join(KINDS)}, got {stage!r}")
    kind = KINDS[stage]
    started = time.time()
    config = copy.deepcopy(config)
    if not config.get("method"):
        raise ConfigError("missing config key 'method': an objective of the DynaBERT methods file (dynabert, dynabert-ckd, ...)")
    runtime = start_runtime(str(config["train"]["device"]), str(config["train"]["precision"]))
    try:
        if runtime.world_size > 1:
            raise ConfigError("ckd dynabert stages run in one process: launch them without torchrun")
        folder = _claimed(kind, config, force)
        if folder is None:
            return None
        with folder:
            return _train_stage(stage, kind, config, runtime, folder, started)
    finally:
        stop_runtime(runtime)


def _train_stage(stage: str, kind: str, config: dict[str, Any], runtime: Runtime, folder: RunFolder, started: float) -> dict[str, Any]:
    """The body of `train_stage`, in its claimed run folder: build, train, save the model and the record."""
    if config["train"]["threads"]:
        torch.set_num_threads(int(config["train"]["threads"]))
    task = scored_task(get_task(config["task"]), config["data"])
    method = stage_method(config, stage, task.name)
    teacher = build_model(_spec(config, "teacher", f"train-{stage}"), task=task, role="teacher", head="trained")
    teacher.model.to(runtime.device).eval().requires_grad_(False)
    student = build_model(_spec(config, "student", f"train-{stage}"), task=task, role="student", head="trained", seed=int(config["seed"]))
    student.model.to(runtime.device)
    for key in ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers"):
        if getattr(teacher.model.config, key) != getattr(student.model.config, key):
            raise ModelError(f"teacher and student differ in {key}: a DynaBERT stage starts the student from the teacher's own architecture")
    train_data, dev_data, fingerprints = _data(config, task, student.tokenizer)
    subnets = _stage_subnets(config, stage)
    objective = StageObjective(method, student.model.config, subnets, regression=task.is_regression).to(runtime.device)
    step_loss = make_stage_loss(stage, objective, student.model, teacher.model, config["teacher_width"])
    lr = float(config["train"]["lr"] or method.settings.get("lr") or 2e-5)
    epochs = int(config["train"]["epochs"] or method.settings.get("epochs") or 3)
    setup = TrainSetup(
        run_dir=folder.path, config=config, config_fingerprint=result_fingerprint(config), student=student.model,
        objective=objective, step_loss=step_loss, train_data=train_data, dev_data=dev_data, task=task, lr=lr,
        epochs=epochs, runtime=runtime, evaluate_dev=False,
    )
    result = train(setup)
    with defer_interrupts("the final save"):
        with atomic_directory(folder.path / "model") as tmp:
            save_model(student, tmp)
        record = {
            **_base_record(kind, config, task, started),
            "stage": stage, "method_resolved": method.to_record(), "lr": lr, "epochs": epochs,
            "subnets": [{"width": s.width, "depth": s.depth, "tag": s.tag} for s in subnets],
            "layer_maps": objective.layer_maps(), "teacher_width": config["teacher_width"] if stage == "depth" else "full",
            "history": result.history, "steps": result.steps, "examples_seen": result.examples_seen,
            "train_seconds": result.train_seconds,
            "student": describe(student.model, student.spec, student.head), "teacher": describe(teacher.model, teacher.spec, teacher.head),
            "data_fingerprints": fingerprints, "runtime": runtime.to_record(),
        }
        folder.write_record(record)
        ckpt.remove_checkpoints(folder.path)
    pause_point("run-finished")
    return record


# --------------------------------------------------------------------------- evaluate, export

def evaluate_subnets(config: dict[str, Any], output: Path) -> dict[str, Any]:
    """Dev metrics of every (width, depth) of `model` (a trained stage's model/), written to `output` (JSON)."""
    if config["train"]["threads"]:
        torch.set_num_threads(int(config["train"]["threads"]))
    task = scored_task(get_task(config["task"]), config["data"])
    built = build_model(_spec(config, "model", "evaluate"), task=task, role="model", head="trained")
    _, dev_data, fingerprints = _data(config, task, built.tokenizer)
    rows = []
    for subnet in grid(config["widths"], config["depths"]):
        metrics, _, ms = evaluate(dynamic.SubNetworkView(built.model, subnet), dev_data, task, int(config["train"]["eval_batch_size"]))
        shape = subnet.shape(built.model.config)
        rows.append({
            "width": subnet.width, "depth": subnet.depth, "tag": subnet.tag, "metrics": metrics,
            "score": metrics[task.dev_splits[0]][task.selection_metric], "score_metric": task.selection_metric,
            "heads": shape["heads"], "ffn": shape["ffn"], "layers": list(shape["layers"]),
            "params": param_count(built.model.config, subnet), "eval_ms_per_example": ms,
        })
    result = {"task": task.name, "seed": int(config["seed"]), "method": config.get("method"), "model": str(config["model"]["name_or_path"]),
              "data_fingerprints": fingerprints, "subnets": rows}
    atomic_write_json(output, result)
    return result


def _latency_ms(model: torch.nn.Module, batch: dict[str, torch.Tensor], repeats: int, warmup: int) -> float:
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            begun = time.perf_counter()
            model(**batch)
            if i >= warmup:
                times.append(1000.0 * (time.perf_counter() - begun))
    return statistics.median(times)


def export_subnets(config: dict[str, Any], output: Path) -> dict[str, Any]:
    """Every (width, depth) of `model` saved as a standalone smaller model under output/<tag>/, checked (its
    parameter count equals `param_count`, its logits the dynamic model's on the first dev batch), with its
    median CPU latency; a summary in output/sizes.json (written last)."""
    latency = config["latency"]
    torch.set_num_threads(int(latency["threads"]))
    task = scored_task(get_task(config["task"]), config["data"])
    built = build_model(_spec(config, "model", "export"), task=task, role="model", head="trained")
    built.model.eval()
    _, dev_data, _ = _data(config, task, built.tokenizer)
    dev = dev_data[task.dev_splits[0]]
    check_batch = _inputs(dev.batch(list(range(min(32, len(dev))))))
    timed = _inputs(dev.batch(list(range(min(int(latency["batch_size"]), len(dev))))))
    rows = []
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    for subnet in grid(config["widths"], config["depths"]):
        small = dynamic.export(built.model, subnet)
        params, formula = dynamic.numel(small), param_count(built.model.config, subnet)
        if params != formula:
            raise ModelError(f"export {subnet.tag}: {params} parameters, the formula says {formula}")
        with torch.inference_mode():
            expected = dynamic.forward(built.model, subnet, check_batch).logits
            got = small(**check_batch).logits
        difference = float((expected - got).abs().max())
        if difference > 1e-4:
            raise ModelError(f"export {subnet.tag}: logits differ from the dynamic model's by {difference:.2e} (> 1e-4)")
        with atomic_directory(output / subnet.tag) as tmp:
            dynamic.save_export(small, built.tokenizer, tmp)
        rows.append({
            "width": subnet.width, "depth": subnet.depth, "tag": subnet.tag, "params": params,
            "heads": small.config.num_attention_heads, "ffn": small.config.intermediate_size, "layers": small.config.num_hidden_layers,
            "max_logit_difference": difference, "latency_ms": _latency_ms(small, timed, int(latency["repeats"]), int(latency["warmup"])),
        })
    summary = {"task": task.name, "seed": int(config["seed"]), "method": config.get("method"),
               "latency": {**latency, "sequence_length": int(timed["input_ids"].shape[1])}, "subnets": rows}
    atomic_write_json(output / "sizes.json", summary)
    return summary


def require_finished(folder: Path, what: str) -> None:
    if not (Path(folder) / RECORD_FILE).is_file():
        raise CkdError(f"{folder} is not a finished {what} (no record.json): run that stage first")
