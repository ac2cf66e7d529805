"""FrozenLake's episodes sampled by this revision and by an earlier one, in one run: the same base model, lakes,
settings and seeds, the two taking turns for a few rounds (this machine's speed drifts over minutes; the median
counts). Three kinds of work, as a FrozenLake run of the `cpu` preset does them:

- `greedy`: one greedy episode on each of --lakes held-out lakes (every evaluation, at each level);
- `reference`: `num_ref_samples` sampled episodes on each of half as many training lakes (stage 1's V*, and
  pass@k in the base and final evaluations);
- `stage2_batch`: one sampled episode on each of `prompts_per_step` training lakes (every stage 2 step).

The earlier revision prefilled every turn's whole context again (its sampler queued each next turn as a new
prompt, and ran all episodes a turn at a time when they fitted in the slots); this one keeps an episode in its slot
and computes only the tokens the environment added. Prints one JSON object and writes it to --output.

    .venv/bin/python tools/bench_episodes.py
    .venv/bin/python tools/bench_episodes.py --lakes 16 --rounds 1 --output /tmp/bench_episodes.json
"""
import json
import pathlib

import torch

from bench_generation import interleaved_rounds, previous_notebook
from stage0_tools import ROOT, base_model_arguments, load_base_model

PREVIOUS = "3f41027"  # the last revision whose episodes prefilled each turn's whole context


def episode_figures(returned: tuple) -> dict:
    """What a call of `rollouts` played: episodes, their success rate, mean turns, and the policy's tokens."""
    generations, rewards, episodes = returned
    return {"episodes": len(rewards), "success": round(sum(r == 1.0 for r in rewards) / len(rewards), 4),
            "mean_turns": round(sum(e["turns"] for e in episodes) / len(episodes), 3),
            "policy_tokens": sum(map(sum, generations.policy_masks))}


def main() -> None:
    parser = base_model_arguments(__doc__.splitlines()[0])
    parser.add_argument("--lakes", type=int, default=256, help="held-out lakes (greedy) and training lakes (sampled)")
    parser.add_argument("--previous", default=PREVIOUS, help="git revision of the earlier sampler")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the two revisions taking turns (median)")
    parser.add_argument("--output", default=str(ROOT / "results" / "bench_episodes.json"))
    args = parser.parse_args()
    nb, config, datasets, path, tokenizer, model = load_base_model(args.preset, args.cache_dir, seed=args.seed,
                                                                   tasks=["frozenlake"])
    model.eval()
    revisions = {"now": nb, f"previous_{args.previous}": previous_notebook(args.previous)}
    lakes = datasets["frozenlake"]["test"][:args.lakes]
    work = {"greedy": (lakes, True, 1),
            "reference": (datasets["frozenlake"]["train"][:args.lakes // 2], False, config.num_ref_samples),
            "stage2_batch": (datasets["frozenlake"]["train"][:config.prompts_per_step], False, 1)}
    report = {"base_model": str(pathlib.Path(path).relative_to(ROOT)) if path.startswith(str(ROOT)) else path,
              "generation_batch_size": config.generation_batch_size, "max_turns": config.max_turns,
              "max_turn_tokens": config.max_turn_tokens, "threads": torch.get_num_threads(), "rounds": args.rounds}
    for kind, (problems, greedy, samples) in work.items():
        for module in revisions.values():  # warm-up: first-call costs are nobody's sampling time
            module.rollouts(model, tokenizer, problems[:4], config, greedy, samples, show_progress=False)
        runs = {name: (lambda module=module: module.rollouts(model, tokenizer, problems, config, greedy, samples,
                                                            show_progress=False)) for name, module in revisions.items()}
        with torch.no_grad():
            results = interleaved_rounds(runs, episode_figures, args.seed, args.rounds)
        results["speedup"] = round(results[f"previous_{args.previous}"]["seconds"] / results["now"]["seconds"], 2)
        report[kind] = results
        print(kind, json.dumps(results), flush=True)
    pathlib.Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
