"""tinyzero/search.py: the value head, step boundaries and best-first search, with a scripted policy."""
import heapq
import random

import pytest
import torch

from tinyzero import search

EOS = 0


class ScriptedPolicy:
    """`sample` draws continuations of random length from `rng` (tokens 1..9, EOS with chance `stop`), counting every
    token it hands out; `score` rates a response by a fixed rule and logs the responses it was asked about."""

    def __init__(self, rng: random.Random, stop: float = 0.2, value=lambda response: min(1.0, len(response) / 20)):
        self.rng, self.stop, self.value = rng, stop, value
        self.drawn, self.expanded, self.calls = 0, [], []

    def sample(self, contexts, k, max_new_tokens):
        self.calls.append((len(contexts), k, max_new_tokens))
        out = []
        for context in contexts:
            self.expanded.append(tuple(context))
            continuations = []
            for _ in range(k):
                length = self.rng.randint(1, max_new_tokens)
                tokens = [self.rng.randint(1, 9) for _ in range(length)]
                if self.rng.random() < self.stop:
                    tokens[-1] = EOS
                self.drawn += len(tokens)
                continuations.append(tokens)
            out.append(continuations)
        return out

    def score(self, prompt_indices, responses):
        return [-0.5 * len(r) for r in responses], [self.value(r) for r in responses]


@pytest.mark.parametrize("budget, k, width", [(1, 1, 1), (7, 2, 1), (50, 3, 2), (200, 4, 1), (333, 5, 3)])
def test_the_budget_is_never_exceeded_and_every_sampled_token_is_counted(budget, k, width):
    policy = ScriptedPolicy(random.Random(budget))
    results = search.value_guided_search([[1, 2], [3]], policy.sample, policy.score, budget=budget, k=k, weight=1.0,
                                         max_response_tokens=40, eos_ids={EOS}, expand_per_round=width)
    assert sum(r.sampled_tokens for r in results) == policy.drawn
    assert all(r.sampled_tokens <= budget for r in results)
    assert all(r.response_ids or r.sampled_tokens == 0 for r in results)
    # the search stops only when another expansion would not fit: what is left is below one token per continuation
    assert all(budget - r.sampled_tokens < k * width or r.finished for r in results)


def test_nodes_are_expanded_in_order_of_f():
    # every expansion makes k one-token children with distinct tokens and random values, and g = 0, so f = 1 - value:
    # each node expanded must be the best of those made and not yet expanded
    rng, values, expanded = random.Random(0), {}, []

    def sample(contexts, k, max_new_tokens):
        expanded.extend(tuple(context[1:]) for context in contexts)
        return [[[token] for token in range(1, k + 1)] for _ in contexts]

    def score(prompt_indices, responses):
        return [0.0] * len(responses), [values.setdefault(tuple(r), rng.random()) for r in responses]

    search.value_guided_search([[5]], sample, score, budget=30, k=3, weight=1.0, max_response_tokens=50,
                               eos_ids={EOS}, branch_share=1.0)  # branching throughout: pure best-first
    assert len(expanded) == 10
    open_nodes = {(): values[()]}
    for node in expanded:
        assert open_nodes[node] == max(open_nodes.values())
        del open_nodes[node]
        open_nodes.update({node + (token,): values[node + (token,)] for token in (1, 2, 3)})


def test_after_branching_the_search_commits_to_its_best_node_and_finishes_it():
    # one-token steps, EOS only at a response's 8th token: branching alone spends 40 tokens on short prefixes and
    # finishes nothing; with half the budget for branching, the second half continues the best node to its end
    def sample(contexts, k, max_new_tokens):
        calls.append((k, [tuple(c[1:]) for c in contexts]))
        return [[[EOS if len(context) == 8 else token] for token in range(1, k + 1)] for context in contexts]

    def score(prompt_indices, responses):
        return [-0.1 * len(r) for r in responses], [0.5 + 0.05 * sum(r) / (1 + len(r)) for r in responses]

    calls = []
    [branching_only] = search.value_guided_search([[5]], sample, score, budget=40, k=4, weight=1.0,
                                                  max_response_tokens=20, eos_ids={EOS}, branch_share=1.0)
    assert branching_only.finished == 0 and branching_only.sampled_tokens == 40
    calls = []
    [result] = search.value_guided_search([[5]], sample, score, budget=40, k=4, weight=1.0, max_response_tokens=20,
                                          eos_ids={EOS}, branch_share=0.5)
    assert result.finished >= 1 and result.response_ids[-1] == EOS and len(result.response_ids) == 8
    assert result.sampled_tokens <= 40
    committing = [contexts for k, contexts in calls if k == 1]
    assert [k for k, _ in calls] == [4] * (len(calls) - len(committing)) + [1] * len(committing)
    chain = [context for [context] in committing]
    first_end = next(i for i, context in enumerate(chain) if len(context) == 7)
    # each committed step continues the previous one until its response ends
    assert all(chain[i + 1][:-1] == chain[i] for i in range(first_end))


def test_a_budget_of_one_response_is_not_spent_on_branches():
    policy = ScriptedPolicy(random.Random(5), stop=0.3)
    search.value_guided_search([[1]], policy.sample, policy.score, budget=20, k=4, weight=1.0, max_response_tokens=20,
                               eos_ids={EOS}, finish_tokens=20)
    assert policy.calls and all(k == 1 for _, k, _ in policy.calls)  # one continuation at a time from the start
    policy = ScriptedPolicy(random.Random(5), stop=0.3)
    search.value_guided_search([[1]], policy.sample, policy.score, budget=80, k=4, weight=1.0, max_response_tokens=20,
                               eos_ids={EOS}, finish_tokens=20)
    assert policy.calls[0][1] == 4  # room for branches and a response after them


def test_frontier_pops_lowest_f_first_and_breaks_ties_by_age():
    nodes = [search.Node(search.priority(lp, v, 2.0), i, (i,), lp, v, False)
             for i, (lp, v) in enumerate([(-1.0, 0.5), (-0.2, 0.1), (-1.0, 0.5), (-3.0, 1.0), (0.0, 0.0)])]
    heap = list(nodes)
    heapq.heapify(heap)
    order = [heapq.heappop(heap).order for _ in nodes]
    assert order == sorted(range(len(nodes)), key=lambda i: (nodes[i].priority, i))
    assert search.priority(-1.0, 0.5, 2.0) == pytest.approx(2.0)


def test_the_best_finished_response_by_value_is_returned():
    policy = ScriptedPolicy(random.Random(3), stop=0.5, value=lambda r: 1.0 if r and r[-1] == EOS and 7 in r else 0.2)
    [result] = search.value_guided_search([[1]], policy.sample, policy.score, budget=400, k=4, weight=5.0,
                                          max_response_tokens=12, eos_ids={EOS})
    assert result.finished > 0 and result.response_ids[-1] == EOS or len(result.response_ids) == 12
    assert result.value == pytest.approx(policy.value(result.response_ids))


def test_bad_search_settings_are_named():
    policy = ScriptedPolicy(random.Random(0))
    with pytest.raises(ValueError, match="budget"):
        search.value_guided_search([[1]], policy.sample, policy.score, budget=0, k=2, weight=1.0,
                                   max_response_tokens=8, eos_ids={EOS})


def test_step_ends_are_boundaries_and_the_last_token():
    assert search.step_ends([5, 1, 5, 5, 1, 7], {1}) == [1, 4, 5]
    assert search.step_ends([5, 1], {1}) == [1]
    assert search.step_ends([5, 5, 5, 5, 5], set(), stride=2) == [1, 3, 4]
    assert search.step_ends([], {1}) == []


def test_boundary_tokens_of_a_character_tokenizer(nb):
    tokenizer = nb.build_char_tokenizer()
    ids = search.boundary_token_ids(tokenizer)
    assert {tokenizer.decode([i]) for i in ids} == {".", ","}


def test_a_value_head_learns_a_prefix_to_reward_rule():
    # a prefix's features carry the chance p that its response will be right; the reward is drawn with chance p
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(4000, 16, generator=generator)
    chance = torch.sigmoid(3 * (features[:, 0] + 0.5 * features[:, 3]))
    rewards = torch.bernoulli(chance, generator=generator)
    head, losses = search.fit_value_head(features[:3000], rewards[:3000], epochs=25, batch_size=512)
    with torch.no_grad():
        predicted = head(features[3000:])
    held_out_mse = torch.nn.functional.mse_loss(predicted, rewards[3000:]).item()
    floor = (chance[3000:] * (1 - chance[3000:])).mean().item()  # the error of knowing p exactly
    assert losses[-1] < losses[0]
    assert held_out_mse < floor + 0.02 < rewards[3000:].var().item()
    bins = search.calibration(predicted, rewards[3000:], bins=5)
    assert sum(count for _, _, count in bins) == 1000
    assert all(abs(mean_predicted - mean_actual) < 0.1 for mean_predicted, mean_actual, count in bins if count >= 100)


def test_log_probs_and_states_of_a_padded_batch_are_each_response_alone(nb):
    from test_apo import summed_logprob_alone, tiny_model_and_tokenizer
    model, tokenizer = tiny_model_and_tokenizer(nb)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
    prompts = [encode("User: 3 4 5 make 17\nAssistant: <think>"), encode("User: 12*3\nAssistant: <think>")]
    responses = [encode(" 3*4=12 +5=17 vs 17 yes. </think>"), []]
    states, log_probs = search.hidden_states_and_log_probs(model, prompts, responses, tokenizer.pad_token_id)
    assert log_probs[0] == pytest.approx(summed_logprob_alone(model, prompts[0], responses[0]), abs=1e-4)
    assert log_probs[1] == 0.0
    assert states[0].shape == (len(responses[0]), model.config.hidden_size) and states[1].shape[0] == 1
    alone, _ = search.hidden_states_and_log_probs(model, prompts[:1], responses[:1], tokenizer.pad_token_id)
    assert torch.allclose(alone[0], states[0], atol=1e-5)

    features, targets = search.value_examples(model, prompts, responses, [1.0, 0.1],
                                              search.boundary_token_ids(tokenizer), tokenizer.pad_token_id)
    assert features.shape == (3, model.config.hidden_size)  # "." and the last token, then the prompt's last
    assert targets.tolist() == pytest.approx([1.0, 1.0, 0.1])
    head = search.ValueHead(model.config.hidden_size)
    log_probs_again, values = search.model_scorer(model, head, prompts, tokenizer.pad_token_id)([0, 1], responses)
    assert log_probs_again == pytest.approx(log_probs) and all(0 < v < 1 for v in values)


def test_the_notebook_search_never_reads_a_reward(nb, monkeypatch):
    from test_apo import tiny_model_and_tokenizer
    model, tokenizer = tiny_model_and_tokenizer(nb)
    config = nb.make_config("cpu-tiny", search_k=2, max_new_tokens=24)
    problems = nb.build_datasets(config)["countdown"]["test"][:3]
    head = search.ValueHead(model.config.hidden_size)

    def no_reward(*args, **kwargs):
        raise AssertionError("the search read a reward")
    for name in ("reward_for", "score", "countdown_reward", "multiplication_reward", "countdown_problem_reward",
                 "multiplication_problem_reward"):
        monkeypatch.setattr(nb, name, no_reward)
    with pytest.raises(AssertionError, match="read a reward"):  # the guard is live: a reward read is caught
        nb.reward_for(problems[0], "")
    results = nb.searched_responses(model, tokenizer, head, problems, config, budget=40)
    assert len(results) == 3 and all(0 < r.sampled_tokens <= 40 for r in results)


@pytest.mark.parametrize("overrides, message", [(dict(search_budgets=(1, 0)), "search_budgets"),
                                                (dict(search_k=0), "search_k"), (dict(search_weight=-1), "search_weight"),
                                                (dict(search_value_samples=1.5), "search_value_samples")])
def test_bad_search_fields_name_the_field(nb, overrides, message):
    with pytest.raises(ValueError, match=message):
        nb.make_config("cpu-tiny", **overrides)
