"""Stage 0: tokenizer, reasoning traces, corpus hygiene, and the base model's save/load round trip."""
import json
import pathlib
import random
import re

import torch


def test_tokenizer_round_trips_text_and_keeps_tags_whole(nb):
    tokenizer = nb.build_char_tokenizer()
    text = "User: 347*8=?\nAssistant: <think> 300*8=2400 </think> <answer> 2776 </answer>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.convert_tokens_to_ids("<answer>") in ids
    assert len(ids) < len(text)  # tags are single tokens
    assert [tokenizer.decode([i]) for i in tokenizer("2776", add_special_tokens=False)["input_ids"]] == list("2776")


def test_multiplication_trace_arithmetic_is_right(nb):
    rng = random.Random(0)
    for level in ("1x1", "2x1", "3x1", "2x2", "3x3"):
        for _ in range(50):
            problem = nb.generate_multiplication_problem(rng, level)
            trace = nb.multiplication_trace(*problem.numbers)
            for step in trace.split(", "):
                left, right = step.split("=")
                x, op, y = (left.partition("*") if "*" in left else left.partition("+"))
                assert (int(x) * int(y) if op == "*" else int(x) + int(y)) == int(right)
            assert trace.split("=")[-1] == str(problem.target)


def test_countdown_search_checks_each_try_once_and_stops_at_the_first_hit(nb):
    rng = random.Random(1)
    found = 0
    for _ in range(300):
        problem = nb.generate_countdown_problem(rng, rng.choice(["3x9", "3x20"]))
        result = nb.countdown_trace(problem.numbers, problem.target)
        if result is None:
            continue
        found += 1
        trace, equation = result
        assert trace.endswith(f"={problem.target} vs {problem.target} yes.") and trace.count("yes") == 1
        assert nb.countdown_reward(f"<answer> {equation} </answer>", list(problem.numbers), problem.target) == 1.0
        lines = trace.split(". ")
        if len(set(problem.numbers)) == 3:
            assert len(lines) == len(set(lines))  # distinct numbers: never the same try twice
        for line in lines:
            first, *checks = line.rstrip(".").split(" ")
            text, value = first.split("=")
            assert nb.evaluate_equation(text) == int(value)
            for move, vs, target, verdict in zip(*[iter(checks)] * 4):  # e.g. "+5=22 vs 22 yes"
                step, result = move.split("=")
                assert vs == "vs" and target == str(problem.target)
                assert nb.evaluate_equation(f"{value}{step}") == int(result)
                assert verdict == ("yes" if int(result) == problem.target else "no")
    assert found >= 0.95 * 300  # the fixed order solves nearly every 3-number puzzle


def test_countdown_search_example_from_the_notebook(nb):
    assert nb.countdown_trace((5, 9, 8), 22) == ("9*8=72 -5=67 vs 22 no. 9+8=17 +5=22 vs 22 yes.", "(9+8)+5")
    assert nb.countdown_trace((2, 3, 4, 5), 14) is None  # the search covers 3-number puzzles


def test_corpus_never_contains_heldout_problems(nb):
    config = nb.make_config("cpu-tiny", test_prompts_per_task=200)
    datasets = nb.build_datasets(config)
    heldout = {nb.problem_key(p) for split in datasets.values() for p in split["test"]}
    prompts = {nb.format_prompt(p, config.prompt_template) for split in datasets.values() for p in split["test"]}
    corpus = nb.build_corpus(config, heldout, 3000, random.Random(0))
    assert not any(doc.split("<think>")[0] + "<think>" in prompts for doc in corpus)
    thinking = sum(not doc.split("<think>")[1].startswith(" </think>") for doc in corpus) / len(corpus)
    assert abs(thinking - config.base_think_fraction) < 0.05


def corpus_rewards(nb, document):
    """(is a direct answer, its reward) of a compact-template corpus document."""
    prompt, completion = document.split("<think>", 1)
    if match := re.search(r"make (\d+) from \[([\d, ]+)\]", prompt):
        numbers = [int(n) for n in match.group(2).split(",")]
        reward = nb.countdown_reward(completion, numbers, int(match.group(1)))
    else:
        a, b = re.search(r"(\d+)\*(\d+)=\?", prompt).groups()
        reward = nb.multiplication_reward(completion, int(a), int(b))
    return completion.startswith(" </think>"), reward


def test_corpus_direct_answers_are_wrong_at_the_configured_share_and_worked_ones_right(nb):
    config = nb.make_config("cpu-tiny", base_countdown_levels=("3x9", "3x20"), base_wrong_direct_fraction=0.4)
    scored = [corpus_rewards(nb, doc) for doc in nb.build_corpus(config, set(), 3000, random.Random(1))]
    direct = [reward for is_direct, reward in scored if is_direct]
    assert set(direct) <= {0.1, 1.0}  # wrong answers are still well formed
    assert abs(direct.count(0.1) / len(direct) - 0.4) < 0.05
    assert all(reward == 1.0 for is_direct, reward in scored if not is_direct)


def test_wrong_direct_answers_look_like_answers(nb):
    rng = random.Random(2)
    for _ in range(300):
        problem = nb.generate_multiplication_problem(rng, "3x1")
        wrong = nb.direct_answer(problem, wrong=True, rng=rng)
        assert wrong != problem.solution and len(wrong) == len(problem.solution)
        assert sum(x != y for x, y in zip(wrong, problem.solution)) == 1  # one digit off
        problem = nb.generate_countdown_problem(rng, "3x9")
        equation = nb.direct_answer(problem, wrong=True, rng=rng)
        assert nb.countdown_reward(f"<answer>{equation}</answer>", list(problem.numbers), problem.target) == 0.1
        equation = nb.direct_answer(problem, wrong=False, rng=rng)
        assert nb.countdown_reward(f"<answer>{equation}</answer>", list(problem.numbers), problem.target) == 1.0


def test_datasets_are_disjoint_and_reproducible(nb):
    config = nb.make_config("cpu-tiny", train_prompts_per_task=300, test_prompts_per_task=100)
    first, second = nb.build_datasets(config), nb.build_datasets(config)
    for task, split in first.items():
        assert split == second[task]
        assert not {nb.problem_key(p) for p in split["train"]} & {nb.problem_key(p) for p in split["test"]}
    other_seed = nb.build_datasets(nb.make_config("cpu-tiny", seed=1, train_prompts_per_task=300, test_prompts_per_task=100))
    assert other_seed["countdown"]["test"] == first["countdown"]["test"]  # same held-out set for every seed
    assert other_seed["countdown"]["train"] != first["countdown"]["train"]


def test_base_model_saves_and_loads_through_from_pretrained(nb, tmp_path):
    config = nb.make_config("cpu-tiny", cache_dir=str(tmp_path), base_pretrain_steps=3)
    heldout = {nb.problem_key(p) for split in nb.build_datasets(config).values() for p in split["test"]}
    path = nb.ensure_base_model(config, heldout)
    folder = pathlib.Path(path)
    assert folder.parent == tmp_path / "base_model"
    mtime = (folder / "model.safetensors").stat().st_mtime
    assert nb.ensure_base_model(config, heldout) == path  # cached: not rebuilt
    assert (folder / "model.safetensors").stat().st_mtime == mtime
    facts = json.loads((folder / "stage0.json").read_text())
    assert facts["machine"] == nb.machine_description(torch.device("cpu"))  # the processor its floats came from
    tokenizer = nb.load_tokenizer(path)
    model = nb.load_causal_lm(path, config, torch.device("cpu"))
    assert type(model).__name__ == "Qwen2ForCausalLM"
    rebuilt = nb.build_char_tokenizer()
    assert tokenizer.get_vocab() == rebuilt.get_vocab() and tokenizer.eos_token == "<|endoftext|>"
    text = "User: make 22 from [3, 5, 7]\nAssistant: <think> 3*5=15, 15+7=22 yes. </think> <answer> (3*5)+7 </answer>"
    assert tokenizer(text)["input_ids"] == rebuilt(text)["input_ids"]  # reloaded through AutoTokenizer
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    ids = tokenizer(["User: 12*3=?\nAssistant: <think>"], return_tensors="pt")
    with torch.no_grad():
        again = nb.load_causal_lm(path, config, torch.device("cpu"))
        assert torch.equal(model(**ids).logits, again(**ids).logits)
    changed = nb.make_config("cpu-tiny", cache_dir=str(tmp_path), base_pretrain_steps=4)
    assert nb.base_model_path(changed, heldout) != path
    assert nb.base_model_path(nb.make_config("cpu-tiny", cache_dir=str(tmp_path), stage0_seed=1), heldout) != path
    assert nb.base_model_path(config, heldout - {next(iter(heldout))}) != path, "the held-out set shapes the corpus"


def test_stage0_seed_decides_the_corpus(nb):
    tokenizer = nb.build_char_tokenizer()
    measure = lambda seed: nb.corpus_tokens_per_document(nb.make_config("cpu-tiny", stage0_seed=seed), set(), tokenizer)
    assert measure(0) == measure(0) != measure(1)


def test_corpus_is_sized_by_the_measured_document_length(nb):
    tokenizer = nb.build_char_tokenizer()
    config = nb.make_config("cpu")
    measured = nb.corpus_tokens_per_document(config, set(), tokenizer)
    sample = nb.build_corpus(config, set(), num_documents=3000, rng=random.Random(7))
    mean = sum(len(ids) + 1 for ids in tokenizer(sample, add_special_tokens=False)["input_ids"]) / len(sample)
    assert abs(measured - mean) < 0.05 * mean
    more_countdown = nb.make_config("cpu", base_countdown_share=0.9)
    assert nb.corpus_tokens_per_document(more_countdown, set(), tokenizer) > 1.2 * measured  # worked searches are long
