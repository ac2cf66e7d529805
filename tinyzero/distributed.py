"""One process or many: the device, the `torch.distributed` group (of size 1 in a notebook, one rank of many under
torchrun), the few collectives the run needs (a sum, and a list reassembled from every rank's share), printing on
rank 0 only, peak memory per phase, and the machine a run ran on."""
import datetime
import os
import platform
import resource
import sys

import torch
import torch.distributed as dist


def pick_device(config: "Config") -> torch.device:
    """cuda when asked for or available under "auto", else cpu."""
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("Config.device='cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    if config.device == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(config.device)


def init_distributed(device: torch.device, timeout_minutes: float = 30.0) -> tuple[int, int]:
    """Join (or create) the process group; returns (rank, world_size). Idempotent. A rank that waits in a
    collective longer than `timeout_minutes` fails the run (for NCCL, instead of its 10-minute default)."""
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(minutes=timeout_minutes)
        device_id = device if device.type == "cuda" else None  # NCCL binds the rank to its GPU instead of guessing
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun: rendezvous through env://
            dist.init_process_group(backend, rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                                    timeout=timeout, device_id=device_id)
        else:  # one process: an in-memory store, no network port to collide with other runs
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout,
                                    device_id=device_id)
    return dist.get_rank(), dist.get_world_size()


def check_world_size(config: "Config", world_size: int) -> None:
    """Raise ValueError unless every rank gets the same number of prompts per step (checked before any work)."""
    if config.prompts_per_step % world_size:
        raise ValueError(f"Config.prompts_per_step={config.prompts_per_step} must be divisible by the number of "
                         f"processes ({world_size}), so that every rank runs the same number of micro-batches")


def local_device(config: "Config") -> torch.device:
    """This rank's device: its own GPU under torchrun, else the configured one."""
    device = pick_device(config)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    return device


def gather_by_index(indices: list[int], values: list, total: int, world_size: int) -> list:
    """Reassemble a list of `total` items that ranks computed at their `indices`."""
    pieces = [(indices, values)]
    if world_size > 1:
        pieces = [None] * world_size
        dist.all_gather_object(pieces, (indices, values))
    merged = [None] * total
    for piece_indices, piece_values in pieces:
        for i, value in zip(piece_indices, piece_values):
            merged[i] = value
    return merged


def global_sum(values: list[float], device: torch.device, world_size: int) -> list[float]:
    """Element-wise sum of `values` over all ranks."""
    if world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def print_on_rank_zero_only(rank: int) -> None:
    """Under torchrun, send what every rank but 0 prints to nowhere, so the log holds each line once
    (warnings and errors still reach stderr)."""
    if rank != 0:
        sys.stdout = open(os.devnull, "w")


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on `device`, or this process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_reserved_memory_mb(device: torch.device) -> float | None:
    """Peak GPU memory the CUDA allocator reserved on `device` (what an out-of-memory error sees), None on CPU."""
    return torch.cuda.max_memory_reserved(device) / 2**20 if device.type == "cuda" else None


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak on GPU (a process's peak resident memory on CPU cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def phase_peak_memory_mb(device: torch.device) -> float:
    """`peak_memory_mb` of the phase that just ended. On GPU the peak counter is then reset, so each phase
    reports its own peak; on CPU the process's peak resident memory cannot be reset and only grows."""
    peak = peak_memory_mb(device)
    reset_peak_memory(device)
    return round(peak, 1)


def cpu_model_name() -> str:
    """The processor's model name (Linux's /proc/cpuinfo), or what `platform` knows elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def machine_description(device: torch.device) -> dict:
    """What a run's floats depend on beyond its code and seed: the processor, the instruction set torch's CPU
    kernels dispatch to ("AVX512", "AVX2", ...: the same run on two of them sums in other orders and drifts apart),
    the CPU threads, and the GPU when the run used one."""
    return {"cpu": cpu_model_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
