"""Does `torch.compile` of the sampler's decoding step pay on this machine? Times one `FusedDecodingStep` call, eager
and compiled (inductor, dynamic shapes), on a model of the `cpu` preset's shape (random weights: the arithmetic is
the same whatever the weights) over a KV cache of random keys and values, at the shapes stage 2 and stage 1 decode at,
and reports the seconds the first compiled call took (compiling) and how far the compiled logits are from eager's.
Prints one JSON object.

    .venv/bin/python tools/bench_compiled_step.py
"""
import argparse
import json
import sys
import time

import torch

from stage0_tools import ROOT, load_notebook_module

sys.path.insert(0, str(ROOT))
from tinyzero.torch_sampler import SLOT_GROUPS, FusedDecodingStep, SlotCache, slot_group_bounds  # noqa: E402

CAPACITY = 600  # columns of the cache, as stage 1 of the cpu preset sizes it
SHAPES = [(64, 60), (16, 150), (8, 200), (256, 100)]  # (live slots, columns read): a stage 2 batch's start and tail, stage 1


def step_inputs(model_config, slots: int, columns: int, generator: torch.Generator):
    """A cache of `slots` slots holding `columns` random columns, and a step's tokens, positions, bias and windows."""
    cache = SlotCache(model_config, slots, CAPACITY, torch.float32, "cpu", length=columns)
    for layer in cache.layers:
        layer.key_buffer.normal_(generator=generator)
        layer.value_buffer.normal_(generator=generator)
    tokens = torch.randint(0, model_config.vocab_size, (slots,), generator=generator)
    positions = torch.full((slots,), columns)
    bias = torch.zeros(slots, columns + 1)
    bounds = slot_group_bounds(slots, SLOT_GROUPS)
    windows = [(a, b, 0) for a, b in zip(bounds, bounds[1:])]
    return cache, (tokens, positions, bias, windows)


def seconds_per_call(step, cache, inputs, calls: int) -> float:
    """Mean seconds of `calls` calls of `step` on the same inputs."""
    started = time.perf_counter()
    for _ in range(calls):
        step(*inputs, cache)
    return (time.perf_counter() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="timed calls per shape and mode")
    args = parser.parse_args()
    nb = load_notebook_module()
    config = nb.make_config("cpu")
    torch.manual_seed(0)
    model = nb.Qwen2ForCausalLM(nb.tiny_qwen2_config(config, nb.build_char_tokenizer())).eval()
    eager = FusedDecodingStep(model, CAPACITY)
    compiled = torch.compile(eager.__call__, dynamic=True)
    report = {"torch": torch.__version__, "threads": torch.get_num_threads(), "shapes": []}
    with torch.inference_mode():
        for slots, columns in SHAPES:
            cache, inputs = step_inputs(model.config, slots, columns, torch.Generator().manual_seed(slots))
            eager_logits = eager(*inputs, cache)
            started = time.perf_counter()
            compiled_logits = compiled(*inputs, cache)
            first_call = time.perf_counter() - started
            for _ in range(3):
                eager(*inputs, cache), compiled(*inputs, cache)
            eager_ms = 1e3 * seconds_per_call(eager, cache, inputs, args.calls)
            compiled_ms = 1e3 * seconds_per_call(compiled, cache, inputs, args.calls)
            report["shapes"].append({
                "slots": slots, "columns": columns, "eager_ms": round(eager_ms, 3), "compiled_ms": round(compiled_ms, 3),
                "speedup": round(eager_ms / compiled_ms, 2), "first_compiled_call_s": round(first_call, 1),
                "same_logits": bool(torch.equal(eager_logits, compiled_logits)),
                "max_abs_difference": float((eager_logits - compiled_logits).abs().max())})
            print(json.dumps(report["shapes"][-1]), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
