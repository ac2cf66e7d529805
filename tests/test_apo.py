"""A*PO stage 1 and stage 2 maths, masking, data order, and the non-finite guard."""
import dataclasses
import json
import math
import os

import pytest
import torch

PAPER_VSTAR = [0.0, 0.2935, 0.4772, 0.6113, 0.7169, 0.8040, 0.8782, 0.9428, 1.0]


@pytest.mark.parametrize("correct", range(9))
def test_vstar_matches_the_paper_vectors(nb, correct):
    rewards = torch.tensor([1.0] * correct + [0.0] * (8 - correct))
    assert nb.optimal_value(rewards, beta1=0.5).item() == pytest.approx(PAPER_VSTAR[correct], abs=5e-5)


def test_vstar_is_batched_and_stable(nb):
    rewards = torch.tensor([[1.0] * k + [0.0] * (8 - k) for k in range(9)])
    values = nb.optimal_value(rewards, beta1=0.5)
    assert values.shape == (9,)
    assert values.tolist() == pytest.approx(PAPER_VSTAR, abs=5e-5)
    assert torch.isfinite(nb.optimal_value(torch.full((2, 8), 1.0), beta1=1e-4)).all()  # logsumexp: no overflow
    assert nb.optimal_value(torch.full((8,), 0.1), beta1=0.5).item() == pytest.approx(0.1)


def test_loss_and_gradient_by_hand(nb):
    policy = torch.tensor([-2.0, -5.0], requires_grad=True)
    reference = torch.tensor([-3.0, -4.0])
    rewards, vstar, beta2 = torch.tensor([1.0, 0.0]), torch.tensor([0.4772, 0.2935]), 0.1
    residuals = [0.1 * 1.0 - (1.0 - 0.4772), 0.1 * -1.0 - (0.0 - 0.2935)]
    loss = nb.apo_loss(policy, reference, rewards, vstar, beta2)
    assert loss.item() == pytest.approx((residuals[0] ** 2 + residuals[1] ** 2) / 2)
    loss.backward()
    assert policy.grad.tolist() == pytest.approx([2 * r * beta2 / 2 for r in residuals])


def tiny_model_and_tokenizer(nb, seed=0):
    torch.manual_seed(seed)
    tokenizer = nb.build_char_tokenizer()
    config = nb.make_config("cpu-tiny")
    model = nb.Qwen2ForCausalLM(nb.tiny_qwen2_config(config, tokenizer)).eval()
    model.config._attn_implementation = "eager"
    return model, tokenizer


def summed_logprob_alone(model, prompt, response):
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    targets = ids[0, 1:]
    picked = logprobs.gather(-1, targets[:, None])[:, 0]
    return picked[len(prompt) - 1:].sum().item()


def test_response_mask_stops_at_first_eos_and_ignores_padding(nb):
    model, tokenizer = tiny_model_and_tokenizer(nb)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12]]
    responses = [[20, 21, eos, 30, 31, 32], [22, eos]]  # tokens after the first EOS must not count
    batch = nb.build_rollout_batch(prompts, responses, {eos}, pad)
    assert batch.response_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    with torch.no_grad():
        summed, entropy = nb.response_logprobs(model, batch)
    assert summed.shape == entropy.shape == (2,)
    expected = [summed_logprob_alone(model, prompts[0], [20, 21, eos]), summed_logprob_alone(model, prompts[1], [22, eos])]
    assert summed.tolist() == pytest.approx(expected, abs=1e-4)  # left padding and positions handled
    other = nb.build_rollout_batch(prompts, [[20, 21, eos, 40, 41, 42, 43], [22, eos, 50]], {eos}, pad)
    with torch.no_grad():
        assert nb.response_logprobs(model, other)[0].tolist() == pytest.approx(summed.tolist(), abs=1e-5)


def test_gradient_flows_only_through_kept_tokens(nb):
    model, tokenizer = tiny_model_and_tokenizer(nb)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    batch = nb.build_rollout_batch([[5, 6, 7]], [[20, eos]], {eos}, pad)
    padded = nb.build_rollout_batch([[5, 6, 7], [8, 9, 10, 11, 12, 13]], [[20, eos], [21, 22, 23, 24, eos]], {eos}, pad)
    grads = []
    for rollout, rows in ((batch, 1), (padded, 2)):
        model.zero_grad()
        nb.response_logprobs(model, rollout)[0][0].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_step_prompt_indices_split_ranks_and_cover_epochs(nb):
    count, per_step = 10, 4
    seen = []
    for step in range(1, 6):
        both = nb.step_prompt_indices(step, count, per_step, seed=3)
        ranks = [nb.step_prompt_indices(step, count, per_step, seed=3, rank=r, world_size=2) for r in range(2)]
        assert sorted(ranks[0] + ranks[1]) == sorted(both) and not set(ranks[0]) & set(ranks[1])
        seen += both
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert nb.step_prompt_indices(4, count, per_step, seed=3) == nb.step_prompt_indices(4, count, per_step, seed=3)


def test_per_group_metrics_split_accuracy_and_length_by_task(nb):
    metrics = nb.per_group_metrics(["countdown", "multiplication"], [4.0, 1.0, 100.0, 0.0, 0.0, 0.0])
    assert metrics == {"accuracy/countdown": 0.25, "response_tokens/countdown": 25.0,
                       "accuracy/multiplication": None, "response_tokens/multiplication": None}
    config = nb.make_config("cpu-tiny", curriculum={"multiplication": [("2x1", 0.5), ("3x1", 0.5)]})
    assert nb.metric_groups(config) == ["countdown", "multiplication", "multiplication/2x1", "multiplication/3x1"]


CURRICULUM = {"multiplication": [("2x1", 0.3), ("3x1", 0.7)], "countdown": [("3x9", 0.5), ("3x20", 0.5)]}


def test_curriculum_splits_training_prompts_by_share_and_keeps_held_out_apart(nb):
    config = nb.make_config("cpu", curriculum=CURRICULUM, train_prompts_per_task=100)
    assert nb.make_config("cpu").curriculum == nb.make_config("cpu", curriculum=CURRICULUM).curriculum  # the default
    datasets = nb.build_datasets(config)
    levels = lambda task: [p.level for p in datasets[task]["train"]]
    assert levels("multiplication") == ["2x1"] * 30 + ["3x1"] * 70
    assert levels("countdown") == ["3x9"] * 50 + ["3x20"] * 50
    heldout = nb.heldout_keys(datasets)
    assert not heldout & {nb.problem_key(p) for split in datasets.values() for p in split["train"]}
    plain = nb.build_datasets(nb.make_config("cpu", train_prompts_per_task=100, curriculum={}))
    assert nb.heldout_keys(plain) == heldout, "a curriculum of evaluated levels leaves the held-out sets as they are"
    assert plain["multiplication"]["train"] == [p for p in nb.build_datasets(nb.make_config(
        "cpu", train_prompts_per_task=100, curriculum={"multiplication": [("3x1", 1.0)]}))["multiplication"]["train"]]


def test_sequential_curriculum_gives_each_level_its_share_of_steps(nb):
    config = nb.make_config("cpu-tiny", curriculum=CURRICULUM, train_steps=10, train_prompts_per_task=20)
    problems = [p for split in nb.build_datasets(config).values() for p in split["train"]]
    active = [nb.active_level(step, 10, CURRICULUM["multiplication"]) for step in range(1, 11)]
    assert active == ["2x1"] * 3 + ["3x1"] * 7
    for step in range(1, 11):
        pool = nb.step_pool(step, problems, config)
        assert {problems[i].level for i in pool} == {nb.active_level(step, 10, CURRICULUM["countdown"]),
                                                     active[step - 1]}
        assert pool == nb.step_pool(step, problems, config), "a pure function of the step"
    mixed = nb.dataclasses.replace(config, curriculum_schedule="mixed")
    assert nb.step_pool(1, problems, mixed) == list(range(len(problems))) == nb.step_pool(9, problems, mixed)


@pytest.mark.parametrize("curriculum, message", [
    ({"multiplication": [("2x1", 0.3), ("3x1", 0.6)]}, "sum to 0.9"),
    ({"multiplication": [("2x1", 0.5), ("2x1", 0.5)]}, "twice"),
    ({"multiplication": [("3x3", 1.0)]}, "level"),
    ({"multiplication": [("4x4", 1.0)]}, "level"),
    ({"multiplication": [("2x1", -0.5), ("3x1", 1.5)]}, "share"),
    ({"sorting": [("2x1", 1.0)]}, "sorting"),
    ({"multiplication": []}, "empty"),
])
def test_bad_curricula_name_the_field(nb, curriculum, message):
    with pytest.raises(ValueError, match=rf"Config\.curriculum.*{message}|{message}.*Config\.curriculum"):
        nb.make_config("cpu", curriculum=curriculum)
    with pytest.raises(ValueError, match="curriculum_schedule"):
        nb.make_config("cpu", curriculum_schedule="interleaved")


class TinyTraining:
    """A tiny FSDP-wrapped policy, its reference and data, ready for `train_stage2` in `run_dir`."""

    def __init__(self, nb, run_dir):
        self.nb, self.run_dir, self.device = nb, str(run_dir), torch.device("cpu")
        nb.init_distributed(self.device)
        policy, self.tokenizer = tiny_model_and_tokenizer(nb)
        self.reference, _ = tiny_model_and_tokenizer(nb)
        config = nb.make_config("cpu-tiny")
        self.policy = nb.wrap_fsdp(policy, self.device, config, world_size=1)
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=1e-3)
        self.problems = nb.build_datasets(config)["multiplication"]["train"]

    def train(self, **overrides):
        config = self.nb.make_config("cpu-tiny", checkpoint_every=1, eval_every=0, **overrides)
        return self.nb.train_stage2(self.policy, self.reference, self.tokenizer, self.optimizer, self.problems,
                                 [0.5] * len(self.problems), {}, config, self.device, self.run_dir, world_size=1)


def test_non_finite_loss_stops_with_the_step_and_keeps_checkpoint(nb, tmp_path):
    run = TinyTraining(nb, tmp_path)
    run.train(train_steps=3)
    saved = (tmp_path / "checkpoint.pt").read_bytes()
    with torch.no_grad():
        next(run.reference.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="at step 4"):
        run.train(train_steps=5)
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved
    assert [r["step"] for r in nb.read_metrics(str(tmp_path / "metrics.jsonl"))] == [1, 2, 3]


def test_resume_refuses_a_checkpoint_written_under_other_settings(nb, tmp_path):
    run = TinyTraining(nb, tmp_path)
    run.train(train_steps=1)
    with pytest.raises(ValueError, match=r"\['learning_rate'\].*another run_name"):
        run.train(train_steps=2, learning_rate=1.0)


def one_sgd_step(nb, models, problems, vstar, config, micro_batch_size):
    """One stage 2 step from fresh `models()` (policy, tokenizer, reference) with SGD, which unlike Adam moves by
    the gradient's scale: the step's record and the parameters after it."""
    policy, tokenizer, reference = models()
    optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
    torch.manual_seed(0)
    record = nb.stage2_step(policy, reference, tokenizer, problems, vstar, optimizer,
                            dataclasses.replace(config, micro_batch_size=micro_batch_size), torch.device("cpu"),
                            step=1, world_size=1)
    return record, [p.detach().clone() for p in policy.parameters()]


def test_micro_batches_change_neither_loss_nor_gradient(nb):
    """Length-grouped micro-batches of 2 give the loss computed over all rollouts in prompt order (same
    seed, same rollouts), and the same parameters after an SGD step as one micro-batch of 8 (SGD, unlike
    Adam, moves by the gradient's scale)."""
    config = nb.make_config("cpu-tiny", max_new_tokens=24)
    datasets = nb.build_datasets(config)
    half = config.prompts_per_step // 2  # the two tasks' prompts differ in length, so grouping reorders rows
    problems = [p for pair in zip(datasets["multiplication"]["train"][:half], datasets["countdown"]["train"][:half])
                for p in pair]
    vstar = [0.3 + 0.05 * i for i in range(len(problems))]

    def models():
        return tiny_model_and_tokenizer(nb, seed=3) + (tiny_model_and_tokenizer(nb, seed=4)[0],)

    policy, tokenizer, reference = models()
    torch.manual_seed(0)
    rollouts = nb.generate(policy, tokenizer, [nb.prompt_for(p, config) for p in problems], config, greedy=False,
                           show_progress=False)
    batch = nb.build_rollout_batch(rollouts.prompt_ids, rollouts.response_ids, {tokenizer.eos_token_id},
                                   tokenizer.pad_token_id)
    with torch.no_grad():
        expected_loss = nb.apo_loss(nb.response_logprobs(policy, batch)[0], nb.response_logprobs(reference, batch)[0],
                                    torch.tensor(nb.score(problems, rollouts.texts, 1, config.format_score)),
                                    torch.tensor(vstar), config.beta2).item()

    whole, whole_parameters = one_sgd_step(nb, models, problems, vstar, config, micro_batch_size=8)
    grouped, grouped_parameters = one_sgd_step(nb, models, problems, vstar, config, micro_batch_size=2)
    assert whole["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert grouped["loss"] == pytest.approx(expected_loss, rel=1e-5)
    for a, b in zip(whole_parameters, grouped_parameters):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_final_evaluation_is_the_last_steps_point(nb, tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": step, "reward": 0.5}) + "\n" for step in (1, 2)))
    final_eval = {"countdown": {"greedy_accuracy": 0.25, "by_level": {"3x9": 0.25, "3x20": 0.125}}}
    groups = {"countdown": [], "countdown/3x20": []}
    assert nb.record_final_evaluation(str(tmp_path), final_eval, groups, step=3) == {}, "not the last step's record"
    values = nb.record_final_evaluation(str(tmp_path), final_eval, groups, step=2)
    assert values == {"eval_greedy_accuracy/countdown": 0.25, "eval_greedy_accuracy/countdown/3x20": 0.125}
    assert nb.read_metrics(str(path)) == [{"step": 1, "reward": 0.5}, {"step": 2, "reward": 0.5, **values}]
    assert nb.record_final_evaluation(str(tmp_path), final_eval, groups, step=2) == values  # a re-run cell: the same
    assert len(nb.read_metrics(str(path))) == 2


def test_greedy_accuracies_decode_every_group_in_one_pass(nb, monkeypatch):
    config = nb.make_config("cpu-tiny")
    datasets = nb.build_datasets(config)
    groups = {"countdown": datasets["countdown"]["test"][:6], "multiplication": datasets["multiplication"]["test"][:5],
              "multiplication/3x1": datasets["multiplication"]["test"][5:7]}
    passes = []

    def fake_rollouts(model, tokenizer, problems, config, greedy, **kwargs):  # right where the target is even
        passes.append(len(problems))
        return None, [1.0 if problem.target % 2 == 0 else 0.1 for problem in problems], [None] * len(problems)
    monkeypatch.setattr(nb, "rollouts", fake_rollouts)
    accuracies = nb.greedy_accuracies(torch.nn.Linear(1, 1), None, groups, config, rank=0, world_size=1)
    assert passes == [13], "one pass over every group's problems"
    assert accuracies == {name: sum(p.target % 2 == 0 for p in problems) / len(problems)
                          for name, problems in groups.items()}
    assert 0 < accuracies["countdown"] < 1 or 0 < accuracies["multiplication"] < 1, "the problems tell groups apart"
