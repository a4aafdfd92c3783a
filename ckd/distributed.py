"""Device, mixed precision and multi-process (torchrun) plumbing for the training loop.

Under `torchrun --nproc_per_node N` every process trains on a 1/N share of each optimiser step's
examples (the global batch stays `train.batch_size`), gradients are summed by torch's
DistributedDataParallel once per step (`no_sync` for the other micro-batches), dev evaluation is
sharded across the processes (ckd.evaluation.evaluate), and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch

from ckd.errors import ConfigError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def to_record(self) -> dict[str, Any]:
        return {"device": str(self.device), "precision": self.precision, "world_size": self.world_size}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but no CUDA device is visible: use train.device=cpu (or auto)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None


def start_runtime(device_name: str, precision: str) -> Runtime:
    """Join the torchrun process group when launched by torchrun; otherwise a single process."""
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a CUDA device; on CPU use bf16")
    if world_size == 1:
        return Runtime(device=device, precision=precision)
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Runtime(device=device, precision=precision, rank=rank, world_size=world_size)


def stop_runtime(runtime: Runtime) -> None:
    if runtime.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def share_of(indices: list[int], runtime: Runtime) -> list[int]:
    """This process's part of one optimiser step's examples."""
    return indices[runtime.rank::runtime.world_size]


def wrap_for_training(module: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """`module` under torch's DistributedDataParallel when there are several processes (itself
    otherwise). Unused parameters are allowed: some methods read no logits (TinyBERT stage 1)."""
    if not runtime.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True, broadcast_buffers=False)


def no_gradient_sync(module: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Accumulate gradients locally (DistributedDataParallel.no_sync) for every micro-batch of a
    step but the last."""
    return module.no_sync() if hasattr(module, "no_sync") else contextlib.nullcontext()


def sum_across(values: dict[str, float], runtime: Runtime) -> dict[str, float]:
    if not runtime.distributed:
        return values
    import torch.distributed as dist

    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(tensor)
    return dict(zip(keys, tensor.tolist()))


def any_process(flag: bool, runtime: Runtime) -> bool:
    """True on every process when `flag` is true on any."""
    if not runtime.distributed:
        return flag
    return sum_across({"flag": float(flag)}, runtime)["flag"] > 0


def gather_objects(obj: Any, runtime: Runtime) -> list[Any]:
    if not runtime.distributed:
        return [obj]
    import torch.distributed as dist

    gathered: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        import torch.distributed as dist

        dist.barrier()
