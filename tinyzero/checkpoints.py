"""Checkpoints and the metrics log of a run: the full training state written atomically (every rank's RNG state
included), a checkpoint refused when it was written under other settings, inputs or process count, and
metrics.jsonl cut back to the checkpoint's step on resuming, so no step is lost or counted twice."""
import dataclasses
import json
import os

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from tinyzero.files import replaced_atomically

FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)


def rng_state() -> dict:
    """This rank's torch RNG state (and CUDA's when present)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


RESUMABLE_CHANGES = {"train_steps", "eval_every", "checkpoint_every", "pass_k", "generation_batch_size",
                     "micro_batch_size", "output_dir", "cache_dir", "device", "preset", "report_to",
                     "distributed_timeout_minutes", "vllm_memory_fraction", "vllm_sleep", "search_budgets", "search_k",
                     "search_weight", "search_prompts_per_task", "search_value_samples"}  # fields that change no update, unless what they feed changes


def resumable_fields(config: "Config") -> set:
    """RESUMABLE_CHANGES, less `train_steps` under a sequential curriculum (it sets which level each step
    trains on)."""
    if config.curriculum and config.curriculum_schedule == "sequential":
        return RESUMABLE_CHANGES - {"train_steps"}
    return set(RESUMABLE_CHANGES)


def config_differences(saved: dict, config: "Config", resumable: bool = False) -> list[str]:
    """Fields whose value differs from the checkpoint's config: those that may not change (every one with
    `resumable`)."""
    current = json.loads(json.dumps(dataclasses.asdict(config)))
    allowed = set() if resumable else resumable_fields(config)
    return sorted(name for name in current.keys() | saved.keys()
                  if name not in allowed and current.get(name) != saved.get(name))


def save_checkpoint(path: str, step: int, model, optimizer, config: "Config", rank: int, world_size: int,
                    reference_state: dict | None = None, run_inputs: dict | None = None) -> None:
    """Atomically write the full training state at `step` (collective: every rank calls it), with
    `reference_state` (the refreshed reference's folder, its V* and the refreshes so far) when there is one and
    `run_inputs` (digests of what the run trains on)."""
    model_state, optimizer_state = get_state_dict(model, optimizer, options=FULL_STATE)
    rng_states = [rng_state()]
    if world_size > 1:
        rng_states = [None] * world_size
        dist.all_gather_object(rng_states, rng_state())
    if rank == 0:
        with replaced_atomically(path) as staging:
            torch.save({"step": step, "model": model_state, "optimizer": optimizer_state, "rng": rng_states,
                        "config": json.loads(json.dumps(dataclasses.asdict(config))), "reference": reference_state,
                        "inputs": run_inputs or {}, "world_size": world_size}, staging)


def resume_refusal(state: dict, path: str, config: "Config", run_inputs: dict, world_size: int) -> str | None:
    """Why the checkpoint `state` (read from `path`) cannot be resumed under `config`, or None when it can."""
    retry = f"choose another run_name (or delete {os.path.dirname(path)}) to start a new run"
    saved_world_size = state.get("world_size", len(state["rng"]))
    if saved_world_size != world_size:
        return (f"{path} was written by {saved_world_size} processes and this run has {world_size}; resume with "
                f"{saved_world_size} (torchrun --nproc_per_node, Modal --gpus), or {retry}")
    changed = config_differences(state["config"], config)
    if changed:
        return f"{path} was written with other values of {changed}; resume with the same settings, or {retry}"
    inputs = sorted(name for name in run_inputs.keys() | state.get("inputs", {}).keys()
                    if run_inputs.get(name) != state.get("inputs", {}).get(name))
    if inputs:
        fields = config_differences(state["config"], config, resumable=True) or "none: the code or the model changed"
        return (f"{path} was written for other {', '.join(inputs)} (changed fields: {fields}); resume with the same "
                f"settings and code, or {retry}")
    return None


def load_checkpoint(path: str, model, optimizer, config: "Config", rank: int, run_inputs: dict | None = None,
                    world_size: int = 1) -> tuple[int, dict | None]:
    """Restore the training state saved at `path`; returns its step and its reference state (collective).
    Refuses a checkpoint written under different settings or inputs, which would silently mix two runs."""
    state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    refusal = resume_refusal(state, path, config, run_inputs or {}, world_size)
    if refusal:
        raise ValueError(refusal)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(full_state_dict=True))
    own = state["rng"][rank]
    torch.set_rng_state(own["cpu"])
    if "cuda" in own and torch.cuda.is_available():
        torch.cuda.set_rng_state(own["cuda"])
    return state["step"], state.get("reference")


def read_metrics(path: str) -> list[dict]:
    """The metrics records written so far (an unfinished last line is ignored)."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


def write_metrics(path: str, records: list[dict]) -> None:
    """Replace the records in `path` (atomically)."""
    with replaced_atomically(path) as staging, open(staging, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def truncate_metrics(path: str, last_step: int) -> None:
    """Keep only records of steps <= last_step."""
    write_metrics(path, [r for r in read_metrics(path) if r["step"] <= last_step])
