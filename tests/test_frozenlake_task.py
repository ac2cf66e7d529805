"""FrozenLake as a notebook task: episodes, policy masks, V* for episodes, and the arithmetic tasks unchanged."""
import hashlib
import math
import random

import pytest
import torch

from test_apo import tiny_model_and_tokenizer


def lake_problem(nb, rows=("SFFF", "FHFH", "FFFH", "HFFG"), slippery=False, seed=0):
    return nb.Problem("frozenlake", "4x4-slippery" if slippery else "4x4", (), 0, "",
                      nb.Lake("4x4-slippery" if slippery else "4x4", rows, slippery, seed))


class ScriptedPolicy:
    """Stands in for the sampler: the response to a context is `script(turn, episode, context text)` and EOS, where
    `turn` counts the turns so far (1 for the prompt) and `episode` is the index of the episode's first response.
    As `sample_with_model`, it hands each response to `follow_up` and answers what comes back; as `generate` (the
    path of a rollout engine), it answers a list of contexts."""

    def __init__(self, nb, tokenizer, script):
        self.nb, self.tokenizer, self.script, self.contexts = nb, tokenizer, script, []

    def respond(self, context: list[int], episode: int) -> list[int]:
        self.contexts.append(list(context))
        text = self.tokenizer.decode(context)
        reply = self.script(text.count("User:"), episode, text)
        return self.tokenizer(reply, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]

    def sample_with_model(self, model, prompt_ids, samples_per_prompt, greedy, temperature, max_new_tokens, eos_ids,
                          pad_id, slots, follow_up=None, max_prompt_tokens=0, **options):
        queue = [(list(prompt), row) for row, prompt in enumerate(p for p in prompt_ids for _ in range(samples_per_prompt))]
        responses, episode_of = [], []
        while queue:
            context, episode = queue.pop(0)
            responses.append(self.respond(context, episode))
            episode_of.append(episode)
            following = follow_up(len(responses) - 1, responses[-1]) if follow_up else None
            if following is not None:
                assert len(following) <= max_prompt_tokens
                queue.append((following, episode))
        return responses, None

    def generate(self, model, tokenizer, prompts, config, greedy, samples_per_prompt=1, desc="", show_progress=True,
                 banned_first_tokens=(), engine=None, max_new_tokens=None):
        prompts = self.nb.prompt_token_ids(tokenizer, prompts)
        ids = [self.respond(p, i) for i, p in enumerate(prompts) for _ in range(samples_per_prompt)]
        return self.nb.Generations([p for p in prompts for _ in range(samples_per_prompt)], ids,
                                   self.tokenizer.batch_decode(ids, skip_special_tokens=True), samples_per_prompt)

    def install(self, monkeypatch):
        monkeypatch.setattr(self.nb, "sample_with_model", self.sample_with_model)
        monkeypatch.setattr(self.nb, "generate", self.generate)
        return self


class FakeModel:
    """What the notebook reads of a model that a scripted policy stands in for."""

    def __init__(self, tokenizer):
        self.generation_config = type("GenerationConfig", (), {"eos_token_id": tokenizer.eos_token_id})()


def answer(moves):
    return f" </think> <answer> {moves} </answer>"


@pytest.fixture
def tokenizer(nb):
    return nb.build_char_tokenizer()


def test_episodes_alternate_policy_and_environment_tokens(nb, tokenizer, monkeypatch):
    # three episodes through two slots: the sampler runs them in one call, each next turn joining when it can
    config = nb.make_config("cpu-tiny", tasks=["frozenlake"], max_turns=5, actions_per_turn=2, generation_batch_size=2)
    path = ["Down, Down", "Right, Right", "Down, Right"]  # the lake's shortest path, two moves a turn
    policy = ScriptedPolicy(nb, tokenizer, lambda turn, index, context: answer(path[turn - 1])).install(monkeypatch)
    problem = lake_problem(nb)
    generations, rewards, episodes = nb.rollouts(FakeModel(tokenizer), tokenizer, [problem] * 3, config, greedy=True)
    assert rewards == [1.0] * 3 and episodes == [{"turns": 3, "invalid_turns": 0}] * 3
    ids, mask = generations.response_ids[0], generations.policy_masks[0]
    assert len(ids) == len(mask)
    runs, start = [], 0  # maximal runs of equal mask values: policy, environment, policy, ...
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            runs.append((mask[start], tokenizer.decode(ids[start:i])))
            start = i
    assert [kind for kind, _ in runs] == [1, 0, 1, 0, 1]
    assert [text for kind, text in runs if kind == 1] == [answer(moves) + nb.EOS_TOKEN for moves in path]
    assert runs[1][1] == "\nUser: ____\n_O_O\nP__O\nO__G\nAssistant: <think>"  # the lake after Down, Down
    # the next turn decodes from the whole sequence so far: prompt, responses and observations
    prompt = tokenizer(nb.prompt_for(problem, config), add_special_tokens=False)["input_ids"]
    assert policy.contexts[6] == prompt + ids[:len(ids) - len(tokenizer(answer(path[2]), add_special_tokens=False)["input_ids"]) - 1]
    # a rollout engine (vLLM) plays the same episodes a turn at a time
    engine_generations, engine_rewards, engine_episodes = nb.rollouts(FakeModel(tokenizer), tokenizer, [problem] * 3,
                                                                      config, greedy=True, engine=object())
    assert (engine_generations.response_ids, engine_generations.policy_masks, engine_rewards, engine_episodes) == \
        (generations.response_ids, generations.policy_masks, rewards, episodes)


def test_episode_ends_in_a_hole_out_of_turns_and_on_unreadable_answers(nb, tokenizer, monkeypatch):
    config = nb.make_config("cpu-tiny", tasks=["frozenlake"], max_turns=3, actions_per_turn=2)
    scripts = {"hole": lambda turn, index, context: answer("Right, Down"), "stuck": lambda turn, index, context: answer("Up"),
               "unreadable": lambda turn, index, context: answer("north")}
    outcomes = {}
    for name, script in scripts.items():
        ScriptedPolicy(nb, tokenizer, script).install(monkeypatch)
        _, rewards, episodes = nb.rollouts(FakeModel(tokenizer), tokenizer, [lake_problem(nb)], config, greedy=True)
        outcomes[name] = (rewards[0], episodes[0])
    assert outcomes["hole"] == (0.0, {"turns": 1, "invalid_turns": 0})
    assert outcomes["stuck"] == (0.0, {"turns": 3, "invalid_turns": 0})
    assert outcomes["unreadable"] == (0.0, {"turns": 3, "invalid_turns": 3})


def test_vstar_of_episodes_comes_from_n_reference_episodes(nb, tokenizer, monkeypatch):
    """k of N = 8 episodes reach the goal: V* is the paper's value for k correct samples."""
    config = nb.make_config("cpu-tiny", tasks=["frozenlake"], num_ref_samples=8, max_turns=4, beta1=0.5,
                            generation_batch_size=4)
    path = ["Down, Down", "Right, Right", "Down, Right"]

    def script(turn, index, context):  # the first three episodes walk the shortest path, the others stand still
        return answer(path[turn - 1] if index < 3 and turn <= len(path) else "Up")
    ScriptedPolicy(nb, tokenizer, script).install(monkeypatch)
    rewards, tokens = nb.sample_reference_rewards(FakeModel(tokenizer), tokenizer, [lake_problem(nb)], config, show_progress=False)
    assert sorted(rewards[0]) == [0.0] * 5 + [1.0] * 3 and tokens > 0
    assert nb.optimal_value(torch.tensor(rewards[0]), config.beta1).item() == pytest.approx(0.6113, abs=1e-4)


def test_mixed_tasks_keep_their_order(nb, tokenizer, monkeypatch):
    config = nb.make_config("cpu-tiny", tasks=["countdown", "frozenlake"], max_turns=2)
    countdown = nb.Problem("countdown", "3x9", (7, 4, 2), 15, "(4*2)+7")
    ScriptedPolicy(nb, tokenizer, lambda turn, index, context: answer("(4*2)+7" if "make" in context else "Down")
                   ).install(monkeypatch)
    generations, rewards, episodes = nb.rollouts(FakeModel(tokenizer), tokenizer, [lake_problem(nb), countdown], config, greedy=False,
                                                 samples_per_prompt=2)
    assert rewards == [0.0, 0.0, 1.0, 1.0]
    assert [e is None for e in episodes] == [False, False, True, True]
    assert generations.policy_masks[2] == [1] * len(generations.response_ids[2])
    assert "make 15" in tokenizer.decode(generations.prompt_ids[3])


def test_observation_tokens_get_no_gradient(nb):
    """The loss's gradient reaches the logits at policy tokens only; with the observation unmasked, it would not."""
    model, tokenizer = tiny_model_and_tokenizer(nb)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    response = [20, 21, eos, 40, 41, 42, 22, eos]  # a turn, an observation (40-42), a turn
    policy_mask = [1, 1, 1, 0, 0, 0, 1, 1]
    captured = {}

    def keep_logits(module, inputs, output):
        output.retain_grad()
        captured["logits"] = output
    model.lm_head.register_forward_hook(keep_logits)

    def logit_grads(mask):
        batch = nb.build_rollout_batch([[5, 6, 7]], [response], {eos}, pad, [mask])
        model.zero_grad()
        policy, _ = nb.response_logprobs(model, batch)
        nb.apo_loss(policy, policy.detach() - 3.0, torch.tensor([1.0]), torch.tensor([0.2]), beta2=0.1).backward()
        # logits[:, j] predict response token j (the first kept column predicts the first response token)
        return captured["logits"].grad[0, :-1].abs().sum(-1)

    grads = logit_grads(policy_mask)
    assert all((g == 0) == (m == 0) for g, m in zip(grads.tolist(), policy_mask))
    unmasked = logit_grads([1] * len(response))
    assert all(g > 0 for g in unmasked.tolist())


def test_one_turn_rollouts_are_generate_and_score(nb):
    """Without a task that acts, `rollouts` samples exactly what `generate` does, and scores it with the reward."""
    model, tokenizer = tiny_model_and_tokenizer(nb)
    config = nb.make_config("cpu-tiny", max_new_tokens=12)
    problems = nb.build_datasets(config)["countdown"]["test"][:3] + nb.build_datasets(config)["multiplication"]["test"][:3]
    torch.manual_seed(3)
    generations, rewards, episodes = nb.rollouts(model, tokenizer, problems, config, greedy=False, samples_per_prompt=2,
                                                 show_progress=False)
    torch.manual_seed(3)
    direct = nb.generate(model, tokenizer, [nb.prompt_for(p, config) for p in problems], config, greedy=False,
                         samples_per_prompt=2, show_progress=False)
    assert generations.response_ids == direct.response_ids and generations.policy_masks is None
    assert rewards == nb.score(problems, direct.texts, 2, config.format_score) and episodes == [None] * 12


# The stage 0 corpus of the arithmetic tasks, as the notebook wrote it before FrozenLake existed (400 documents
# from random.Random(7), no held-out keys): adding a task must not move the base model of README's first command.
ARITHMETIC_CORPUS_DIGESTS = {"cpu": "58926fc3b5499a86", "cpu-tiny": "e54232fba9915d9d"}


@pytest.mark.parametrize("preset", sorted(ARITHMETIC_CORPUS_DIGESTS))
def test_arithmetic_corpus_is_unchanged(nb, preset):
    config = nb.make_config(preset, base_frozenlake_share=0.9, max_turns=3)  # FrozenLake fields set, task absent
    documents = nb.build_corpus(config, set(), 400, random.Random(7))
    assert hashlib.sha256("\x00".join(documents).encode()).hexdigest()[:16] == ARITHMETIC_CORPUS_DIGESTS[preset]


def test_base_model_key_follows_the_corpus(nb):
    arithmetic = nb.make_config("cpu-tiny")
    path = nb.base_model_path(arithmetic, set())
    assert nb.base_model_path(nb.make_config("cpu-tiny", base_frozenlake_share=0.9, max_turns=3), set()) == path
    with_lake = nb.make_config("cpu-tiny", tasks=["countdown", "multiplication", "frozenlake"])
    assert nb.base_model_path(with_lake, set()) != path
    assert nb.base_model_path(nb.make_config("cpu-tiny", tasks=["countdown", "multiplication", "frozenlake"],
                                             max_turns=3), set()) != nb.base_model_path(with_lake, set())
    for field, value in (("base_frozenlake_reasoning", "checks"), ("base_frozenlake_seq_len", 256)):
        changed = nb.make_config("cpu-tiny", tasks=["countdown", "multiplication", "frozenlake"], **{field: value})
        assert nb.base_model_path(changed, set()) != nb.base_model_path(with_lake, set()), field
    assert nb.base_model_path(nb.make_config("cpu-tiny", base_frozenlake_seq_len=1024), set()) == path


@pytest.mark.parametrize("preset", ["cpu", "cpu-tiny"])
def test_frozenlake_corpus_is_packed_in_longer_blocks_with_the_same_tokens_a_step(nb, preset):
    arithmetic = nb.make_config(preset)
    assert nb.stage0_block_shape(arithmetic) == (arithmetic.base_batch_size, arithmetic.base_seq_len)
    lake = nb.make_config(preset, tasks=["frozenlake"])
    batch_size, block_length = nb.stage0_block_shape(lake)
    assert block_length == lake.base_frozenlake_seq_len == 512 > lake.base_seq_len
    assert batch_size * block_length == lake.base_batch_size * lake.base_seq_len
    assert nb.tiny_qwen2_config(nb.make_config(preset, tasks=["frozenlake"], base_frozenlake_seq_len=1024),
                                nb.build_char_tokenizer()).max_position_embeddings == 1024
    shorter = nb.make_config(preset, tasks=["frozenlake"], base_frozenlake_seq_len=64)  # never shorter than the rest
    assert nb.stage0_block_shape(shorter) == (shorter.base_batch_size, shorter.base_seq_len)


@pytest.mark.parametrize("share", [0.2, 0.5])
def test_frozenlake_shares_the_corpus_by_characters_and_stage0_grows_to_make_room(nb, share):
    tasks = ["countdown", "multiplication", "frozenlake"]
    config = nb.make_config("cpu-tiny", tasks=tasks, base_frozenlake_share=share)
    documents = nb.build_corpus(config, set(), 400, random.Random(0))
    episodes = [d for d in documents if d.startswith("User: reach G")]
    assert 0 < len(episodes) < share * len(documents)  # an episode is longer than an arithmetic document
    assert sum(map(len, episodes)) / sum(map(len, documents)) == pytest.approx(share, abs=0.03)
    assert nb.stage0_steps(config) == round(config.base_pretrain_steps / (1 - share))
    assert nb.stage0_steps(nb.make_config("cpu-tiny", tasks=["frozenlake"], base_frozenlake_share=share)) == \
        nb.stage0_steps(nb.make_config("cpu-tiny")) == config.base_pretrain_steps


@pytest.mark.parametrize("reasoning, marker", [("checks", " no "), ("neighbours", " so ")])
def test_corpus_episodes_play_the_format(nb, reasoning, marker):
    config = nb.make_config("cpu-tiny", tasks=["frozenlake"], base_frozenlake_reasoning=reasoning)
    documents = nb.build_corpus(config, set(), 60, random.Random(0))
    assert all(d.startswith("User: reach G\n") for d in documents)
    worked = [d for d in documents if " goal " in d]
    assert worked and len(worked) < len(documents) and any(marker in d for d in worked)
    for document in documents:  # every turn's answer is readable, and the turns are separated by EOS
        turns = document.split(nb.EOS_TOKEN)
        assert len(turns) <= config.max_turns
        assert all(nb.parse_actions(nb.extract_answer(turn), config.actions_per_turn) for turn in turns)


def test_held_out_lakes_are_unseen(nb):
    config = nb.make_config("cpu-tiny", tasks=["frozenlake"], train_prompts_per_task=64)
    datasets = nb.build_datasets(config)
    heldout = nb.heldout_keys(datasets)
    assert set(datasets["frozenlake"]["by_level"]) == {"4x4", "4x4-slippery", "6x6"}
    assert not {nb.problem_key(p) for p in datasets["frozenlake"]["train"]} & heldout
    for problem in datasets["frozenlake"]["train"]:
        assert nb.shortest_path(problem.lake.rows, problem.lake.start) is not None


@pytest.mark.parametrize("overrides, message", [
    (dict(frozenlake_level="5x5"), "frozenlake_level"),
    (dict(frozenlake_eval_levels=("4x4", "8x8")), "frozenlake_eval_levels"),
    (dict(max_turns=0), "max_turns"),
    (dict(actions_per_turn=1.5), "actions_per_turn"),
    (dict(max_turn_tokens=0), "max_turn_tokens"),
    (dict(base_frozenlake_reasoning="both"), "base_frozenlake_reasoning"),
    (dict(base_frozenlake_seq_len=0), "base_frozenlake_seq_len"),
    (dict(base_frozenlake_share=1.5), "base_frozenlake_share"),
    (dict(base_frozenlake_share=1.0), "base_frozenlake_share"),
    (dict(base_frozenlake_share=0.0), "base_frozenlake_share"),
    (dict(base_frozenlake_levels=("4x4", "lake")), "base_frozenlake_levels"),
])
def test_bad_frozenlake_fields_name_the_field(nb, overrides, message):
    with pytest.raises(ValueError, match=message):
        nb.make_config("cpu-tiny", tasks=["frozenlake"], **overrides)


def test_tasks_from_papermill_text_and_preset_curricula(nb):
    assert nb.make_config("cpu", tasks='["frozenlake"]').tasks == ("frozenlake",)
    assert nb.make_config("cpu", tasks="countdown, frozenlake").tasks == ("countdown", "frozenlake")
    assert set(nb.make_config("cpu", tasks=["countdown", "frozenlake"]).curriculum) == {"countdown"}
    every = '["countdown", "multiplication", "frozenlake"]'  # as papermill's -p passes it: text
    assert nb.make_config("cpu", tasks=every).curriculum == nb.make_config("cpu").curriculum != {}
    assert set(nb.make_config("cpu", tasks="countdown,frozenlake").curriculum) == {"countdown"}
    with pytest.raises(ValueError, match="tasks"):
        nb.make_config("cpu", tasks="chess")


def test_a_single_response_to_a_lake_has_no_reward(nb):
    with pytest.raises(ValueError, match="several turns"):
        nb.reward_for(lake_problem(nb), answer("Down"))
    assert math.isclose(nb.reward_for(nb.Problem("countdown", "3x9", (7, 4, 2), 15, ""), answer("(4*2)+7")), 1.0)


def test_training_curves_name_each_tasks_own_level(nb):
    records = [{"step": step, "reward": 0.5, "accuracy": 0.5, "response_tokens": 90.0, "loss": 0.2, "kl": 0.0,
                "eval_greedy_accuracy/frozenlake": 0.5, "eval_greedy_accuracy/frozenlake/6x6": 0.25} for step in (1, 2)]
    base_eval = {"frozenlake": {"greedy_accuracy": 0.0, "by_level": {"4x4": 0.0, "6x6": 0.0}}}
    figure = nb.plot_training_curves(records, base_eval, "run", own_levels={"frozenlake": "4x4"})
    held_out = figure.axes[2]
    assert [line.get_label() for line in held_out.get_legend().get_lines()] == ["frozenlake/4x4", "frozenlake/6x6"]
    figure = nb.plot_training_curves(records, base_eval, "run")  # without the levels: the task's name
    assert [line.get_label() for line in figure.axes[2].get_legend().get_lines()] == ["frozenlake", "frozenlake/6x6"]
    nb.plt.close("all")
