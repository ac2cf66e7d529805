"""What gradient accumulation costs under FSDP2 on several ranks: syncing once per step (the notebook) against
syncing at every micro-batch, measured on CPU with 2 gloo ranks and the notebook's own `wrap_fsdp`.

For each way it reports, on rank 0, the gradient elements held between micro-batches (FSDP2 keeps a rank's
accumulated gradient unsharded, full size, while sync is off; syncing reduce-scatters it into the shard) and the
seconds per step of 8 micro-batches. Gloo on a CPU says nothing about NCCL's speed on NVLink: the seconds only
show that per-micro-batch syncs add one reduce-scatter each.

    .venv/bin/python tools/fsdp_grad_sync.py > results/fsdp_grad_sync.json

Reading the held gradients uses FSDP2's internal `FSDPParam` fields (`unsharded_param`, `unsharded_accumulated_grad`,
`sharded_param`), as of torch 2.13.
"""
import json
import os
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stage0_tools import load_notebook_module

MICRO_BATCHES, ROWS, LENGTH, STEPS = 8, 4, 96, 3


def held_gradient_elements(model) -> int:
    """Gradient elements this rank holds: unsharded accumulations and sharded gradients."""
    total = 0
    for module in model.modules():
        state = getattr(module, "_get_fsdp_state", None)
        group = state()._fsdp_param_group if state else None
        for param in (group.fsdp_params if group else []):
            for tensor in (getattr(param, "unsharded_accumulated_grad", None),
                           getattr(getattr(param, "_unsharded_param", None), "grad", None),
                           param.sharded_param.grad):
                if tensor is not None:
                    total += (tensor.to_local() if hasattr(tensor, "to_local") else tensor).numel()
    return total


def worker(rank: int, world_size: int, store_path: str, queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    nb = load_notebook_module()
    config = nb.make_config("cpu", base_hidden_size=128)
    tokenizer = nb.build_char_tokenizer()
    parameters = None
    results = {}
    for mode in ("once per step", "every micro-batch"):
        torch.manual_seed(0)
        model = nb.Qwen2ForCausalLM(nb.tiny_qwen2_config(config, tokenizer))
        parameters = sum(p.numel() for p in model.parameters())
        model = nb.wrap_fsdp(model, torch.device("cpu"), config, world_size)
        batch = torch.randint(2, 100, (ROWS, LENGTH))
        held, seconds = [], []
        for _ in range(STEPS):
            started = time.perf_counter()
            for index in range(MICRO_BATCHES):
                model.set_requires_gradient_sync(mode == "every micro-batch" or index == MICRO_BATCHES - 1)
                model(input_ids=batch, labels=batch).loss.backward()
                if index == 0:
                    held.append(held_gradient_elements(model))
            seconds.append(time.perf_counter() - started)
            model.zero_grad(set_to_none=True)
        results[mode] = {"gradient_elements_held_after_first_micro_batch": held[-1],
                         "seconds_per_step": round(sorted(seconds)[len(seconds) // 2], 3)}
    if rank == 0:
        queue.put({"parameters": parameters, "world_size": world_size, "micro_batches": MICRO_BATCHES,
                   "torch": torch.__version__, **results})
    dist.destroy_process_group()


def main() -> None:
    world_size = 2
    context = mp.get_context("spawn")
    queue = context.Queue()
    with tempfile.TemporaryDirectory() as folder:
        processes = [context.Process(target=worker, args=(rank, world_size, os.path.join(folder, "store"), queue))
                     for rank in range(world_size)]
        for process in processes:
            process.start()
        report = queue.get(timeout=600)
        for process in processes:
            process.join()
    per_rank_share = report["parameters"] / world_size
    for mode in ("once per step", "every micro-batch"):
        report[mode]["held_in_parameters_per_rank_share"] = round(
            report[mode]["gradient_elements_held_after_first_micro_batch"] / per_rank_share, 2)
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
