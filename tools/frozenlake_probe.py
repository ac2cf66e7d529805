"""Does a model read the lake? On held-out lakes, at each level's first turn, worked reasoning in the corpus's form
(`base_frozenlake_reasoning`) is fed to the model token by token (teacher forcing), and its greedy guess is compared
where the answer has to be read off the lake: the player's row and column, and what lies where each move leads,
counted by move and by what truly lies there (a model that always says ice scores 1.0 on ice and 0.0 on holes);
and, where a neighbour is ice or a hole, the probability the model puts on a hole (`hole_probability`, by what
truly lies there), which shows a lookup that has begun before it wins a greedy guess.
`checks`: for each move toward the goal, the tile where it leads, after the checks that come before it (as in the
corpus, where a hole is checked for only there); `neighbours`: the four tiles of one worked turn, and the move it
makes. Prints one JSON object.

    .venv/bin/python tools/frozenlake_probe.py                       # the cpu preset's FrozenLake base model
    .venv/bin/python tools/frozenlake_probe.py --model results/<run>/final_model   # a trained policy
"""
import collections
import json
import os
import sys

import torch

from base_model_modes import config_override
from stage0_tools import ROOT, base_model_arguments, load_base_model, load_notebook_module

sys.path.insert(0, str(ROOT))
from tinyzero.frozenlake import ACTION_NAMES, best_move, checks_turn, nearer_the_goal, neighbours_turn  # noqa: E402


def answer_logits(model, tokenizer, prompt: str, reasoning: str, answer: str) -> tuple[torch.Tensor, list[int]]:
    """The model's logits for each token of `answer` when fed `prompt`, `reasoning` and the answer's tokens before it
    (teacher forcing), and those tokens."""
    context = tokenizer(prompt, add_special_tokens=False)["input_ids"] + \
        tokenizer(reasoning, add_special_tokens=False)["input_ids"]
    wanted = tokenizer(answer, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return model(torch.tensor([context + wanted])).logits[0, len(context) - 1:-1], wanted


def guessed(model, tokenizer, prompt: str, reasoning: str, answer: str) -> bool:
    """Whether the model, fed `prompt` then `reasoning`, greedily continues with `answer` (teacher forced)."""
    logits, wanted = answer_logits(model, tokenizer, prompt, reasoning, answer)
    return logits.argmax(-1).tolist() == wanted


def hole_probabilities(nb, model, tokenizer, problem, config) -> list[tuple[str, float]]:
    """(what truly lies there, the model's probability of `O`) for each neighbouring tile inside the lake that the
    first turn's worked reasoning (`neighbours` form) names: a model that reads the lake puts more on `O` where
    there is a hole than where there is ice, even while its greedy guess is still ice."""
    rows, position, prompt = problem.lake.rows, problem.lake.start, nb.prompt_for(problem, config)
    hole = tokenizer("O", add_special_tokens=False)["input_ids"][0]
    words = neighbours_turn(rows, position, best_move(rows, position)).split(" ")
    found = []
    for i, word in enumerate(words[3:], start=3):
        if words[i - 1] in ACTION_NAMES and word in ("_", "O"):
            logits, _ = answer_logits(model, tokenizer, prompt, " " + " ".join(words[:i]) + " ", word)
            found.append((word, float(torch.softmax(logits[0].float(), -1)[hole])))
    return found


def probe_lake(nb, model, tokenizer, problem, config) -> list[tuple[str, bool]]:
    """(what was asked, whether the greedy guess was right) for each word of the first turn's worked reasoning on
    `problem` that has to be read off the lake."""
    rows, position, prompt = problem.lake.rows, problem.lake.start, nb.prompt_for(problem, config)
    asked = [("position", guessed(model, tokenizer, prompt, " at ", f"{position[0]},{position[1]}"))]
    if config.base_frozenlake_reasoning == "checks":  # the moves toward the goal: where the corpus checks for holes
        for action, name in enumerate(ACTION_NAMES):
            if nearer_the_goal(rows, position, action):
                *reasoning, tile = checks_turn(rows, position, [action]).split(" ")
                asked.append((f"{name} {tile}", guessed(model, tokenizer, prompt, " " + " ".join(reasoning) + " ", tile)))
        return asked
    words = neighbours_turn(rows, position, best_move(rows, position)).split(" ")
    for i, word in enumerate(words[3:], start=3):
        before = " " + " ".join(words[:i]) + " "
        if words[i - 1] == "so":
            asked.append(("move", guessed(model, tokenizer, prompt, before, word)))
        elif words[i - 1] in ACTION_NAMES:
            asked.append((f"{words[i - 1]} {word}", guessed(model, tokenizer, prompt, before, word)))
    return asked


def probe_report(nb, model, tokenizer, datasets, config, lakes: int | None, report: dict) -> dict:
    """`report` with, for each evaluation level, the probe's accuracy by what was asked, the counts, and the
    probability of a hole over holes and over ice, on the first `lakes` held-out lakes (all when None)."""
    model.eval()
    report["levels"] = {}
    for level in config.frozenlake_eval_levels:
        problems = datasets["frozenlake"]["by_level"][level][:lakes]
        right, total = collections.Counter(), collections.Counter()
        for problem in problems:
            for asked, correct in probe_lake(nb, model, tokenizer, problem, config):
                total[asked] += 1
                right[asked] += correct
        chances = collections.defaultdict(list)
        for problem in problems:
            for truth, chance in hole_probabilities(nb, model, tokenizer, problem, config):
                chances[truth].append(chance)
        report["levels"][level] = {"lakes": len(problems),
                                   "accuracy": {asked: round(right[asked] / total[asked], 3) for asked in sorted(total)},
                                   "count": dict(sorted(total.items())),
                                   "hole_probability": {truth: round(sum(c) / len(c), 4) for truth, c in
                                                        sorted(chances.items())}}
    return report


def main() -> None:
    parser = base_model_arguments(__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a saved model folder to probe instead of the base model")
    parser.add_argument("--lakes", type=int, default=None, help="held-out lakes per level (default: all)")
    parser.add_argument("--set", dest="overrides", type=config_override, action="append", default=[],
                        metavar="FIELD=VALUE", help="change a config field (repeatable)")
    args = parser.parse_args()
    overrides = {"tasks": ["frozenlake"], "seed": args.seed} | dict(args.overrides)
    if args.model is None:
        nb, config, datasets, path, tokenizer, model = load_base_model(args.preset, args.cache_dir, **overrides)
    else:  # a saved model: no base model to build
        nb, path = load_notebook_module(), os.path.abspath(args.model)
        config = nb.make_config(args.preset, **overrides, cache_dir=args.cache_dir)
        datasets = nb.build_datasets(config)
        tokenizer, model = nb.load_tokenizer(path), nb.load_causal_lm(path, config, torch.device("cpu"))
    print(json.dumps(probe_report(nb, model, tokenizer, datasets, config, args.lakes,
                                  {"model": os.path.relpath(path, ROOT), "overrides": overrides}), indent=1))


if __name__ == "__main__":
    main()
