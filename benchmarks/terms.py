"""Benchmark of each CKD relation term: ours (ckd.losses.relations) against the dense baseline
(benchmarks.dense), forward + backward, on random hidden states of given sizes."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch

from benchmarks import dense
from benchmarks.measure import Clock, available_mb, cuda_peak_mb, interleaved, median, probe
from ckd.layer_maps import layer_map
from ckd.losses import relations

# (row name, loss name, keyword arguments); the window is filled in from the sizes
TERMS = ("wr_pair", "ltr_pair", "ltr_triple", "wr_triple", "wr_triple_full")
# The dense terms' peak memory is about this many of their largest intermediate (measured: 5.7 to 6.0).
DENSE_PEAK_FACTOR = 6


@dataclass(frozen=True)
class TermSizes:
    batch: int = 32
    length: int = 128
    teacher_width: int = 768
    student_width: int = 768
    teacher_layers: int = 12
    student_layers: int = 6
    window: int = 21
    full_length: bool = False  # every sentence n tokens (default: lengths drawn from n/2..n, one of n)
    seed: int = 0

    @property
    def mapped_layers(self) -> int:
        return len(layer_map("uniform+emb", self.teacher_layers, self.student_layers).pairs)

    def describe(self) -> str:
        lengths = "all n" if self.full_length else f"lengths {self.length // 2}..{self.length}"
        return (
            f"B={self.batch} n={self.length} ({lengths}), teacher {self.teacher_layers}L d={self.teacher_width}, "
            f"student {self.student_layers}L d={self.student_width} -> K={self.mapped_layers} mapped layers "
            f"(uniform+emb), window {self.window}"
        )


def term_call(term: str, sizes: TermSizes):
    """(loss name, keyword arguments) of a benchmark row."""
    if term == "wr_triple":
        return "wr_triple", {"window": sizes.window}
    if term == "wr_triple_full":
        return "wr_triple", {"window": None}
    return term, {}


def lengths(sizes: TermSizes, batch: int) -> list[int]:
    g = torch.Generator().manual_seed(sizes.seed)
    drawn = torch.randint(sizes.length // 2, sizes.length + 1, (sizes.batch,), generator=g).tolist()
    drawn[0] = sizes.length
    return [sizes.length] * batch if sizes.full_length else drawn[:batch]


def make_inputs(sizes: TermSizes, batch: int, device: torch.device, dtype=torch.float32):
    """Teacher and student states (K lists of (batch, n, d)) and the mask. Every sentence is drawn from
    its own seed, so a smaller batch is exactly the first sentences of the full one. Student gradients
    are preallocated, as in a training step where every hidden state receives a gradient anyway."""
    K, n = sizes.mapped_layers, sizes.length
    mask = torch.zeros(batch, n, dtype=torch.long)
    for b, length in enumerate(lengths(sizes, batch)):
        mask[b, :length] = 1

    def states(width: int, side: int, scale: float, shift: float) -> list[torch.Tensor]:
        out = []
        for layer in range(K):
            h = torch.empty(batch, n, width)
            for b in range(batch):
                g = torch.Generator().manual_seed(((sizes.seed * 7 + side) * 1009 + layer) * 100_003 + b)
                torch.randn(n, width, generator=g, out=h[b])
            out.append(h.mul_(scale).add_(shift).to(device=device, dtype=dtype))
        return out

    teacher = states(sizes.teacher_width, 0, 2.0, 1.0)
    student = states(sizes.student_width, 1, 0.5, -0.3)
    for s in student:
        s.requires_grad_()
        s.grad = torch.zeros_like(s)
    return teacher, student, mask.to(device)


def term_case(term: str, impl: str, sizes: TermSizes, batch: int, device: torch.device, autocast_dtype=None):
    """A call running one forward + backward of `term` ("ours" or "dense"); it returns the loss."""
    name, kwargs = term_call(term, sizes)
    fn = getattr(relations, name) if impl == "ours" else dense.DENSE[name]
    teacher, student, mask = make_inputs(sizes, batch, device)

    def run() -> torch.Tensor:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = fn(teacher, student, mask, **kwargs)
        loss.backward()
        return loss.detach()

    return run


def dense_batch(term: str, sizes: TermSizes, limit_mb: float) -> int:
    """The largest batch (<= sizes.batch) whose dense peak memory estimate fits in limit_mb."""
    name, kwargs = term_call(term, sizes)
    width = max(sizes.teacher_width, sizes.student_width)
    one = DENSE_PEAK_FACTOR * dense.dense_bytes(name, sizes.mapped_layers, 1, sizes.length, width, kwargs.get("window", 21)) / 2**20
    return max(1, min(sizes.batch, int(limit_mb // one)))


def dense_estimate_mb(term: str, sizes: TermSizes) -> float:
    name, kwargs = term_call(term, sizes)
    width = max(sizes.teacher_width, sizes.student_width)
    return DENSE_PEAK_FACTOR * dense.dense_bytes(name, sizes.mapped_layers, sizes.batch, sizes.length, width, kwargs.get("window", 21)) / 2**20


def run_terms(
    sizes: TermSizes, *, device: torch.device, repeats: int, dense_repeats: int, dense_limit_mb: float | None,
    threads: int, memory: bool = True, autocast_dtype=None, terms=TERMS, log=print,
) -> list[dict]:
    """One result row per term: times, peak memory and values of ours and of the dense baseline."""
    if dense_limit_mb is None:
        free = torch.cuda.mem_get_info(device)[0] / 2**20 if device.type == "cuda" else available_mb()
        dense_limit_mb = 0.5 * free
    rows = []
    for term in terms:
        b_dense = dense_batch(term, sizes, dense_limit_mb)
        log(f"  {term}: timing ours (B={sizes.batch}) and dense (B={b_dense})")
        ours = term_case(term, "ours", sizes, sizes.batch, device, autocast_dtype)
        base = term_case(term, "dense", sizes, b_dense, device, autocast_dtype)
        times = interleaved({"ours": (ours, repeats), "dense": (base, dense_repeats)}, Clock(device))
        scale = sizes.batch / b_dense  # dense work and memory are linear in the batch
        row = {
            "term": term, "batch": sizes.batch, "dense_batch": b_dense,
            "ours_s": median(times["ours"]), "dense_s": median(times["dense"]) * scale,
            "ours_times": times["ours"], "dense_times": times["dense"],
            "ours_value": float(ours()), "dense_value": float(base()),
            "dense_estimate_mb": dense_estimate_mb(term, sizes),
            # the student states' gradients: a term coupling all layers (LTR) hands them back at once
            "gradient_floor_mb": sizes.mapped_layers * sizes.batch * sizes.length * sizes.student_width * 4 / 2**20,
        }
        # values are compared on the batch the dense term ran on
        row["ours_value_at_dense_batch"] = (
            row["ours_value"] if b_dense == sizes.batch else float(term_case(term, "ours", sizes, b_dense, device, autocast_dtype)())
        )
        del ours, base
        if memory:
            row["ours_mb"], row["dense_mb"] = _memory(term, sizes, b_dense, device, threads, autocast_dtype, log)
            if row["dense_mb"] is not None:
                row["dense_mb"] *= scale
        rows.append(row)
    return rows


def _memory(term, sizes, b_dense, device, threads, autocast_dtype, log):
    if device.type == "cuda":
        result = []
        for impl, batch in (("ours", sizes.batch), ("dense", b_dense)):
            run = term_case(term, impl, sizes, batch, device, autocast_dtype)
            run()
            result.append(cuda_peak_mb(run, device))
            del run
        return tuple(result)
    result = []
    for impl, batch in (("ours", sizes.batch), ("dense", b_dense)):
        answer = probe({"kind": "term", "term": term, "impl": impl, "sizes": asdict(sizes), "batch": batch}, threads)
        if "error" in answer:
            log(f"  {term} {impl}: memory probe failed: {answer['error']}")
        result.append(answer.get("extra_mb"))
    return tuple(result)


def probe_term(spec: dict) -> dict:
    """Body of a fresh-process memory probe for one term (see benchmarks.probe)."""
    from benchmarks.measure import peak_rss_mb, reset_peak_rss, rss_mb

    sizes = TermSizes(**spec["sizes"])
    cpu = torch.device("cpu")
    # warm-up: page in the kernels the measured call uses
    tiny = replace(sizes, batch=2, length=16, teacher_width=16, student_width=16, window=min(sizes.window, 5))
    term_case(spec["term"], spec["impl"], tiny, 2, cpu)()
    run = term_case(spec["term"], spec["impl"], sizes, spec["batch"], cpu)
    before = rss_mb()
    reset_peak_rss()
    value = float(run())
    return {"extra_mb": max(0.0, peak_rss_mb() - before), "value": value}


def relative_difference(a: float, b: float) -> float:
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(a), abs(b), 1e-300) if math.isfinite(a) and math.isfinite(b) else float("inf")
