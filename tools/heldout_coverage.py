"""How big each difficulty level is, and how much of it stage 0's corpus and the training prompts cover.

For each level that the CPU default trains or evaluates on: the number of distinct problems (a countdown puzzle
is its multiset of numbers and its target; a product its unordered pair of factors), how many are held out, and
the share of the level that the stage 0 corpus and the training prompts hold. Counting by the notebook's own
`problem_key`, and reading the corpus back from its text, it also checks that no held-out problem is in either.

    .venv/bin/python tools/heldout_coverage.py > results/heldout_coverage.json

Exact counts for 3-number countdown levels (every multiset, every target its numbers reach with positive
whole intermediate results, as the generator makes them) and every multiplication level; 4-number countdown
levels are too large to enumerate this way and are left out.
"""
import itertools
import json
import re

from stage0_tools import base_model_arguments, load_notebook_module


def countdown_space(nb, level: str) -> set:
    """Every distinct puzzle key of a 3-number countdown level."""
    spec = nb.COUNTDOWN_LEVELS[level]
    if spec.count != 3:
        raise ValueError(f"level {level!r} has {spec.count} numbers; only 3-number levels are enumerated")
    keys = set()
    for numbers in itertools.combinations_with_replacement(range(1, spec.max_number + 1), spec.count):
        for target in {path[2] for path in nb.countdown_paths(numbers)}:
            if 1 <= target <= spec.max_target:
                keys.add(("countdown", numbers, target))
    return keys


def multiplication_space_size(level: str) -> int:
    """How many unordered factor pairs a multiplication level has (a has the first digit count, b the second)."""
    digits_a, digits_b = map(int, level.split("x"))
    count = lambda digits: 9 * 10 ** (digits - 1)
    return count(digits_a) * (count(digits_a) + 1) // 2 if digits_a == digits_b else count(digits_a) * count(digits_b)


def document_key(nb, document: str) -> tuple:
    """The notebook's `problem_key` of a compact-template corpus document, its problem read back from its text."""
    prompt = document.split("<think>", 1)[0]
    if match := re.search(r"make (\d+) from \[([\d, ]+)\]", prompt):
        numbers, target = tuple(int(n) for n in match.group(2).split(",")), int(match.group(1))
        return nb.problem_key(nb.Problem("countdown", "", numbers, target, ""))
    a, b = map(int, re.search(r"(\d+)\*(\d+)=\?", prompt).groups())
    return nb.problem_key(nb.Problem("multiplication", "", (a, b), a * b, ""))


def multiplication_level(key: tuple) -> str:
    a, b = key[1]
    return f"{max(len(str(a)), len(str(b)))}x{min(len(str(a)), len(str(b)))}"


def main() -> None:
    parser = base_model_arguments(__doc__.splitlines()[0])
    args = parser.parse_args()
    nb = load_notebook_module()
    config = nb.make_config(args.preset, seed=args.seed)
    datasets = nb.build_datasets(config)
    heldout = nb.heldout_keys(datasets)
    documents = nb.stage0_corpus(config, heldout, nb.build_char_tokenizer())
    corpus = {document_key(nb, d) for d in documents}
    training = {nb.problem_key(p) for split in datasets.values() for p in split["train"]}
    assert not (corpus | training) & heldout, "a held-out problem is in the corpus or the training prompts"
    rows = []
    for task in config.tasks:
        levels = dict.fromkeys(nb.task_eval_levels(config, task) + tuple(level for level, _ in nb.training_levels(config, task)))
        for level in levels:
            if task == "countdown":
                if nb.COUNTDOWN_LEVELS[level].count != 3:
                    continue
                space = countdown_space(nb, level)
                size, within = len(space), space.__contains__
            else:
                size = multiplication_space_size(level)
                within = lambda key, level=level: key[0] == "multiplication" and multiplication_level(key) == level
            rows.append({"task": task, "level": level, "distinct_problems": size,
                         "held_out": sum(1 for key in heldout if key[0] == task and within(key)),
                         "in_corpus": sum(1 for key in corpus if key[0] == task and within(key)),
                         "in_training": sum(1 for key in training if key[0] == task and within(key))})
    for row in rows:
        row.update({name.replace("in_", "share_in_"): round(row[name] / row["distinct_problems"], 3)
                    for name in ("in_corpus", "in_training")})
    print(json.dumps({"preset": args.preset, "seed": args.seed, "corpus_documents": len(documents), "held_out_problems": len(heldout), "levels": rows}, indent=1))


if __name__ == "__main__":
    main()
