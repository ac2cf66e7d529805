"""The speed of a stage 0 pretraining step, measured in one run: the notebook's own `pretrain` on blocks of the preset's
shape (`stage0_block_shape`; with FrozenLake in the corpus 4 blocks of 512 on the `cpu` preset), the model made as
stage 0 makes it, with each attention kernel transformers offers here and with the model under `torch.compile`. The
variants take turns for a few rounds (the median counts); each round makes a fresh model and warms it up
(`torch.compile` compiles there, timed apart). Random tokens: the step's cost does not depend on what the blocks say.
Prints one JSON object, with each variant's speed as a ratio to the notebook's own (`Config.attn_implementation`, not
compiled) and what the preset's build would take at it.

    .venv/bin/python tools/bench_pretraining.py                                   # the FrozenLake default
    .venv/bin/python tools/bench_pretraining.py --tasks countdown,multiplication --variants eager,sdpa
"""
import dataclasses
import json
import statistics
import time

import torch

from stage0_tools import base_model_arguments, load_notebook_module

VARIANTS = {"eager": ("eager", False), "sdpa": ("sdpa", False), "sdpa+compile": ("sdpa", True)}
WARMUP_STEPS = 3


def timed_pretraining(nb, config, attention: str, compiled: bool, steps: int, blocks: torch.Tensor,
                      seed: int) -> tuple[float, float]:
    """(seconds of a warm-up of `WARMUP_STEPS` steps, compiling included; seconds a step over `steps` more) of the
    notebook's `pretrain` on a fresh stage 0 model."""
    torch.manual_seed(seed)
    made = nb.tiny_qwen2_config(config, nb.build_char_tokenizer())
    made._attn_implementation = attention
    runner = nb.Qwen2ForCausalLM(made)
    if compiled:
        runner = torch.compile(runner)
    generator = torch.Generator().manual_seed(seed)

    def run(count: int) -> tuple[float, int]:
        """Seconds of `pretrain` asked for `count` steps, and the steps it took (`stage0_steps` scales the count up
        when FrozenLake trains beside other tasks)."""
        started = time.perf_counter()
        taken = len(nb.pretrain(runner, blocks, dataclasses.replace(config, base_pretrain_steps=count), generator))
        return time.perf_counter() - started, taken

    warmup_seconds, _ = run(WARMUP_STEPS)
    seconds, taken = run(steps)
    return warmup_seconds, seconds / taken


def main() -> None:
    parser = base_model_arguments(__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="frozenlake", help="comma-separated: the corpus whose block shape is timed")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=40, help="timed pretraining steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.steps < 1 or args.rounds < 1:
        parser.error(f"--steps {args.steps} and --rounds {args.rounds} must be at least 1")
    nb = load_notebook_module()
    config = nb.make_config(args.preset, tasks=args.tasks.split(","), seed=args.seed, cache_dir=args.cache_dir)
    blocks_per_step, block_length = nb.stage0_block_shape(config)
    blocks = torch.randint(0, len(nb.build_char_tokenizer()), (64, block_length),
                           generator=torch.Generator().manual_seed(args.seed))
    warmup, rounds = {name: [] for name in variants}, {name: [] for name in variants}
    for _ in range(args.rounds):
        for name in variants:
            first, per_step = timed_pretraining(nb, config, *VARIANTS[name], args.steps, blocks, args.seed)
            warmup[name].append(first)
            rounds[name].append(per_step)
    own = config.attn_implementation  # the notebook's own: its kernel, not compiled
    median = {name: statistics.median(values) for name, values in rounds.items()}
    build_steps = nb.stage0_steps(config)
    print(json.dumps({
        "preset": args.preset, "tasks": config.tasks, "block_shape": [blocks_per_step, block_length],
        "notebook_variant": own, "steps_timed": args.steps, "rounds": args.rounds,
        "warmup_seconds": {name: [round(value, 2) for value in values] for name, values in warmup.items()},
        "ms_per_step": {name: [round(1000 * v, 1) for v in values] for name, values in rounds.items()},
        "median_ms_per_step": {name: round(1000 * value, 1) for name, value in median.items()},
        "speed_over_notebook": {name: round(median[own] / value, 3) for name, value in median.items()} if own in median else None,
        "build_steps": build_steps,
        "pretraining_minutes_at_this_speed": {name: round(build_steps * value / 60, 1) for name, value in median.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
