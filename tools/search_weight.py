"""Which `search_weight` should test-time search use? Chosen on training prompts only, never held-out ones: a value
head is fit on the model's own samples for the first `--fit-prompts` training prompts of each task (as the notebook's
search section fits it), then A* search runs with each candidate weight on the next `--prompts` training prompts at
`--budget` times the mean response length, and its accuracy (the reward read after the search) is reported per
weight. Prints one JSON object; the weight with the best mean accuracy over the tasks is `best_weight`.

    .venv/bin/python tools/search_weight.py                                       # the cpu preset's base model
    .venv/bin/python tools/search_weight.py --model results/cpu-seed0/final_model # a trained policy

docs/search.md has both (weights 0, 1, 4 and 16 at 16x the mean response length: the defaults).
"""
import json
import os

import torch

from stage0_tools import ROOT, base_model_arguments, load_base_model, load_notebook_module


def weight_accuracies(nb, model, tokenizer, datasets: dict, config, weights: list, fit_prompts: int, prompts: int,
                      budget: float) -> dict:
    """Per task: the value head's report, and A* search's accuracy with each weight on training prompts it was not
    fit on."""
    report = {}
    for task in (t for t in config.tasks if nb.TASKS[t].environment is None):
        train = datasets[task]["train"]
        head, head_report = nb.fit_search_value_head(model, tokenizer, train[:fit_prompts], config)
        problems = train[fit_prompts:fit_prompts + prompts]
        tokens = max(1, round(budget * head_report["mean_response_tokens"]))
        accuracy = {}
        for weight in weights:
            torch.manual_seed(config.seed)  # every weight searches with the same random numbers
            found = nb.searched_responses(model, tokenizer, head, problems, nb.dataclasses.replace(config, search_weight=weight),
                                          tokens, finish_tokens=round(head_report["mean_response_tokens"]))
            texts = tokenizer.batch_decode([r.response_ids for r in found], skip_special_tokens=True)
            rewards = nb.score(problems, texts, 1, config.format_score)
            accuracy[str(weight)] = sum(r == 1.0 for r in rewards) / len(problems)
        report[task] = {"problems": len(problems), "budget_tokens": tokens, "accuracy": accuracy,
                        "value_head": {k: v for k, v in head_report.items() if k != "calibration"}}
    return report


def main() -> None:
    parser = base_model_arguments(__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a saved model folder instead of the base model")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0, 4.0, 16.0])
    parser.add_argument("--budget", type=float, default=16.0, help="budget in multiples of the mean response length")
    parser.add_argument("--fit-prompts", type=int, default=256, help="training prompts per task the value head is fit on")
    parser.add_argument("--prompts", type=int, default=64, help="further training prompts per task each weight is tried on")
    parser.add_argument("--k", type=int, default=None, help="search_k (default: the preset's)")
    args = parser.parse_args()
    overrides = {"seed": args.seed} | ({"search_k": args.k} if args.k else {})
    if args.model is None:
        nb, config, datasets, path, tokenizer, model = load_base_model(args.preset, args.cache_dir, **overrides)
    else:
        nb, path = load_notebook_module(), os.path.abspath(args.model)
        config = nb.make_config(args.preset, **overrides, cache_dir=args.cache_dir)
        datasets = nb.build_datasets(config)
        tokenizer, model = nb.load_tokenizer(path), nb.load_causal_lm(path, config, torch.device("cpu"))
    model.eval()
    tasks = weight_accuracies(nb, model, tokenizer, datasets, config, args.weights, args.fit_prompts, args.prompts,
                              args.budget)
    mean = {str(w): sum(t["accuracy"][str(w)] for t in tasks.values()) / len(tasks) for w in args.weights}
    print(json.dumps({"model": os.path.relpath(path, ROOT), "search_k": config.search_k, "budget": args.budget,
                      "tasks": tasks, "mean_accuracy": mean, "best_weight": float(max(mean, key=mean.get))}, indent=1))


if __name__ == "__main__":
    main()
