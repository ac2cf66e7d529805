"""One process or many (tinyzero/distributed.py): the device chosen, the prompts-per-rank check, and the sum and
gather over ranks, in one process and across two gloo ranks started as torchrun starts them."""
import json
import os
import socket
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

from tinyzero.distributed import (check_world_size, gather_by_index, global_sum, init_distributed, machine_description,
                                  peak_memory_mb, peak_reserved_memory_mb, phase_peak_memory_mb, pick_device,
                                  print_on_rank_zero_only)

CPU = torch.device("cpu")


def test_the_device_is_the_one_asked_for_and_cuda_without_a_gpu_is_refused():
    assert pick_device(SimpleNamespace(device="cpu")) == CPU
    if not torch.cuda.is_available():
        assert pick_device(SimpleNamespace(device="auto")) == CPU
        with pytest.raises(ValueError, match="Config.device='cuda'"):
            pick_device(SimpleNamespace(device="cuda"))


def test_the_machine_is_described_by_its_processor_and_the_instruction_set_torch_runs_on(monkeypatch):
    machine = machine_description(CPU)
    assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and machine["gpu"] is None
    assert machine["cpu"] and machine["cpu_threads"] == torch.get_num_threads()
    monkeypatch.setattr("builtins.open", lambda *args, **kwargs: (_ for _ in ()).throw(OSError("no /proc")))
    assert machine_description(CPU)["cpu"], "a name even where /proc/cpuinfo cannot be read"


def test_prompts_per_step_must_split_evenly_over_the_ranks():
    check_world_size(SimpleNamespace(prompts_per_step=64), 4)
    with pytest.raises(ValueError, match=r"prompts_per_step=64 .* \(3\)"):
        check_world_size(SimpleNamespace(prompts_per_step=64), 3)


def test_in_one_process_the_sum_is_the_values_and_the_gather_puts_each_value_at_its_index():
    assert global_sum([1.5, 2.0], CPU, 1) == [1.5, 2.0]
    assert gather_by_index([2, 0], ["c", "a"], 3, 1) == ["a", None, "c"]


def test_memory_peaks_on_cpu_are_the_processes_resident_peak(monkeypatch):
    assert phase_peak_memory_mb(CPU) == round(peak_memory_mb(CPU), 1) > 0
    assert peak_reserved_memory_mb(CPU) is None
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # restored after the test
    print_on_rank_zero_only(0)
    assert sys.stdout is not None and sys.stdout.name != os.devnull
    print_on_rank_zero_only(1)
    assert sys.stdout.name == os.devnull


def two_ranks(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    got_rank, world_size = init_distributed(CPU)
    assert init_distributed(CPU) == (got_rank, world_size)  # a second call joins the same group
    total = global_sum([float(rank + 1), 10.0], CPU, world_size)
    share = list(range(rank, 5, world_size))  # rank 0 computes items 0, 2, 4; rank 1 items 1, 3
    merged = gather_by_index(share, [f"item {i} by rank {rank}" for i in share], 5, world_size)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump([got_rank, world_size, total, merged], f)
    torch.distributed.destroy_process_group()


def test_two_ranks_sum_their_values_and_gather_every_item_in_order(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(two_ranks, args=(port, str(tmp_path)), nprocs=2)
    merged = [f"item {i} by rank {i % 2}" for i in range(5)]
    for rank in range(2):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == [rank, 2, [3.0, 20.0], merged]
