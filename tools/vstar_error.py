"""How far cheaper stage 1 estimates of V* land from the full one, on the same training prompts and base model:
N = 8 (the full estimate) drawn again with other sampling seeds (the noise floor: what two full estimates
disagree by), N = 4, and adaptive sampling (draw `m` first, the rest of N only where those disagree). For each:
seconds, samples, mean V*, and the mean absolute change of V* per prompt against the full estimate of sampling
seed 0. Prints one JSON object.

    .venv/bin/python tools/vstar_error.py              # the cpu preset's training prompts (seed 0)
"""
import dataclasses
import json
import pathlib
import time

import torch

from stage0_tools import ROOT, base_model_arguments, load_base_model


def estimate(nb, model, tokenizer, problems, config, sampling_seed: int) -> dict:
    """V* per prompt from `config`'s stage 1, sampled after seeding torch with `sampling_seed`, and its cost."""
    torch.manual_seed(sampling_seed)
    started = time.perf_counter()
    rewards, tokens = nb.sample_reference_rewards(model, tokenizer, problems, config, show_progress=False)
    seconds = time.perf_counter() - started
    vstar = [nb.optimal_value(torch.tensor(r), config.beta1).item() for r in rewards]
    return {"seconds": round(seconds, 2), "samples": sum(map(len, rewards)), "sampled_tokens": tokens,
            "mean_vstar": sum(vstar) / len(vstar), "vstar": vstar}


def main() -> None:
    parser = base_model_arguments(__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=None, help="training prompts per task (default: all)")
    parser.add_argument("--floor-seeds", type=int, default=2, help="full estimates drawn again with other seeds")
    args = parser.parse_args()
    nb, config, datasets, path, tokenizer, model = load_base_model(args.preset, args.cache_dir, seed=args.seed)
    problems = [p for task in config.tasks for p in datasets[task]["train"][:args.prompts]]
    full, half = config.num_ref_samples, config.num_ref_samples // 2
    variants = {f"N={full}, sampling seed {s}": (dataclasses.replace(config, adaptive_min_samples=0), s)
                for s in range(args.floor_seeds + 1)}
    variants[f"N={half}"] = (dataclasses.replace(config, num_ref_samples=half, adaptive_min_samples=0), 0)
    for first in (2, half):
        variants[f"adaptive, {first} first"] = (dataclasses.replace(config, adaptive_min_samples=first), 0)
    nb.sample_reference_rewards(model, tokenizer, problems[:8], variants[f"N={full}, sampling seed 0"][0],
                                show_progress=False)  # warm-up
    results = {name: estimate(nb, model, tokenizer, problems, variant_config, seed)
               for name, (variant_config, seed) in variants.items()}
    reference = results[f"N={full}, sampling seed 0"]["vstar"]
    for result in results.values():
        result["mean_abs_change"] = sum(abs(a - b) for a, b in zip(result["vstar"], reference)) / len(reference)
        result["seconds_ratio"] = result["seconds"] / results[f"N={full}, sampling seed 0"]["seconds"]
        del result["vstar"]
    shown = str(pathlib.Path(path).relative_to(ROOT)) if path.startswith(str(ROOT)) else path
    print(json.dumps({"preset": args.preset, "prompts": len(problems), "base_model": shown, "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "estimates": results}, indent=1))


if __name__ == "__main__":
    main()
