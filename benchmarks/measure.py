"""Clocks and peak-memory probes shared by the term and step benchmarks.

CPU times are process CPU seconds (robust to other processes on a shared machine when torch runs one
thread); CUDA times are event-timed. CPU peak memory is the growth of the resident set in a fresh
process (`python -m benchmarks.probe`), CUDA peak memory the allocator's peak above what was
allocated before the measured call.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Clock:
    """Seconds taken by one call, on the device the benchmark runs on."""

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize(self.device)
            return start.elapsed_time(stop) / 1000
        started = time.process_time()
        fn()
        return time.process_time() - started


def interleaved(cases: dict[str, tuple[Callable[[], object], int]], clock: Clock, warmup: int = 1) -> dict[str, list[float]]:
    """Time each case `repeats` times, round-robin, so every case sees the same load over time."""
    for fn, _ in cases.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(max(repeats for _, repeats in cases.values())):
        for name, (fn, repeats) in cases.items():
            if round_ < repeats:
                times[name].append(clock(fn))
    return times


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux: VmHWM is reset by writing 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def available_mb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("inf")


def cuda_peak_mb(fn: Callable[[], object], device: torch.device) -> float:
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def probe(spec: dict, threads: int, timeout: float = 900) -> dict:
    """Run one measurement (`benchmarks.probe`) in a fresh Python process; returns its JSON answer,
    or {"error": ...} if it failed (for example killed for lack of memory)."""
    env = {
        **os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
    }
    command = [sys.executable, "-m", "benchmarks.probe", json.dumps({**spec, "threads": threads})]
    try:
        done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        reason = "killed (out of memory?)" if done.returncode in (-9, 137) else f"exit code {done.returncode}"
        tail = done.stderr.strip().splitlines()[-1:] or [""]
        return {"error": f"{reason} {tail[0]}".strip()}
    return json.loads(lines[-1])
