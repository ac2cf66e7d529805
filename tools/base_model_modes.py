"""How the CPU default's base model answers: directly or step by step, and how often each way is right.

Uses the notebook's own definitions (through tests/notebook_module.py) and its cached stage 0 model
(building it when missing). For each task's held-out problems it reports greedy accuracy, greedy
accuracy when the model is made to reason (the token that closes the reasoning is banned as the
first token, so it cannot answer straight away), and from `--samples` samples per problem at
temperature 1 the share of step-by-step responses and the accuracy of each kind. The product of a
kind's share and accuracy is the reference probability of a correct response of that kind, which is
what A*PO's target policy, pi_ref * exp(r / beta2), keeps.

    .venv/bin/python tools/base_model_modes.py --samples 4 > results/base_model_modes.json

`--set FIELD=VALUE` (repeatable) changes a config field first, e.g. `--set base_think_fraction=0.3`,
to measure another stage 0 design; a changed stage 0 field builds (and caches) its own base model.
"""
import argparse
import ast
import json
import os

import torch

from stage0_tools import ROOT, base_model_arguments, load_base_model


def reasoning(text: str) -> str:
    """What a response writes before closing its reasoning (all of it when it never closes)."""
    return text.split("</think>", 1)[0]


def reasons(text: str) -> bool:
    """True when a response writes something before closing its reasoning."""
    return bool(reasoning(text).strip())


def repeats_an_attempt(text: str) -> bool:
    """True when the reasoning says one sentence twice word for word: in countdown, a search that
    tries the same combination again (the corpus's search does so only when a number repeats); a
    repeat under greedy decoding tends to loop until the length limit."""
    attempts = [attempt.strip() for attempt in reasoning(text).split(".") if attempt.strip()]
    return len(attempts) != len(set(attempts))


def config_override(text: str) -> tuple[str, object]:
    """`FIELD=VALUE` as (field, value); VALUE is read as a Python literal when it is one, else as text."""
    name, separator, value = text.partition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def forced_reasoning_texts(nb, model, tokenizer, prompts: list[str], config) -> list[str]:
    """Greedy responses that may not close the reasoning straight away. Every stage 0 completion opens
    with a space, so the prompts get it and the token after it may not be the closing tag."""
    closing_tag = tokenizer.convert_tokens_to_ids("</think>")
    texts = nb.generate(model, tokenizer, [p + " " for p in prompts], config, greedy=True, show_progress=False,
                        banned_first_tokens=(closing_tag,)).texts
    return [" " + text for text in texts]


def main() -> None:
    parser = base_model_arguments(__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4, help="samples per held-out problem")
    parser.add_argument("--set", dest="overrides", type=config_override, action="append", default=[],
                        metavar="FIELD=VALUE", help="change a config field (repeatable)")
    args = parser.parse_args()
    overrides = dict(args.overrides)
    nb, config, datasets, path, tokenizer, model = load_base_model(args.preset, args.cache_dir, **overrides)
    torch.manual_seed(args.seed)
    report = {"base_model": os.path.relpath(path, ROOT), "overrides": overrides, "samples_per_problem": args.samples}
    for task, split in datasets.items():
        problems = split["test"]
        prompts = [nb.prompt_for(p, config) for p in problems]
        greedy = nb.generate(model, tokenizer, prompts, config, greedy=True, show_progress=False).texts
        forced = forced_reasoning_texts(nb, model, tokenizer, prompts, config)
        sampled = nb.generate(model, tokenizer, prompts, config, greedy=False, samples_per_prompt=args.samples,
                              show_progress=False).texts
        correct = lambda texts, k: [r == 1.0 for r in nb.score(problems, texts, k, config.format_score)]
        sampled_correct, kinds = correct(sampled, args.samples), [reasons(t) for t in sampled]
        stepwise = [c for c, k in zip(sampled_correct, kinds) if k]
        direct = [c for c, k in zip(sampled_correct, kinds) if not k]
        report[task] = {
            "problems": len(problems),
            "greedy_accuracy": sum(correct(greedy, 1)) / len(problems),
            "greedy_reasoning_share": sum(map(reasons, greedy)) / len(problems),
            "forced_reasoning_greedy_accuracy": sum(correct(forced, 1)) / len(problems),
            "forced_reasoning_without_answer": sum("</answer>" not in t for t in forced) / len(problems),
            "forced_reasoning_repeats_an_attempt": sum(map(repeats_an_attempt, forced)) / len(problems),
            "sampled_reasoning_share": len(stepwise) / len(sampled),
            "sampled_reasoning_accuracy": sum(stepwise) / max(1, len(stepwise)),
            "sampled_direct_accuracy": sum(direct) / max(1, len(direct)),
            "correct_mass_reasoning": sum(stepwise) / len(sampled),
            "correct_mass_direct": sum(direct) / len(sampled),
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
