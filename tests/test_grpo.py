"""The GRPO baseline: group advantages, the clipped token-level loss, and one step of it through the loop."""
import pytest
import torch

from test_apo import one_sgd_step, tiny_model_and_tokenizer


def test_group_advantages_by_hand(nb):
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.1, 0.1, 0.1, 0.1])  # two groups of 4
    scaled = nb.group_advantages(rewards, 4, scale=True)
    std = torch.tensor([1.0, 0.0, 0.0, 0.0]).std().item()
    assert scaled[:4].tolist() == pytest.approx([0.75 / (std + 1e-4), -0.25 / (std + 1e-4)] + [-0.25 / (std + 1e-4)] * 2)
    assert scaled[4:].tolist() == [0.0] * 4, "a group with equal rewards teaches nothing"
    assert nb.group_advantages(rewards, 4, scale=False)[:4].tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])
    assert nb.group_advantages(rewards, 2, scale=False).tolist() == pytest.approx([0.5, -0.5, 0, 0, 0, 0, 0, 0])


def test_grpo_loss_gradient_is_the_policy_gradient_and_clips(nb):
    policy = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.7, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages = torch.tensor([2.0, -1.0])
    loss = nb.grpo_loss(policy, policy.detach(), advantages, mask, epsilon=0.2, normaliser=5.0)
    loss.backward()  # at ratio 1 the gradient is -A / T per kept token
    assert loss.item() == pytest.approx(-(3 * 2.0 - 2 * 1.0) / 5)
    assert policy.grad.flatten().tolist() == pytest.approx([-0.4] * 3 + [0.2, 0.2, 0.0])
    moved = torch.tensor([[-1.0], [-1.0]], requires_grad=True)
    old = torch.tensor([[-1.5], [-0.5]])  # ratios e^0.5 > 1.2 (A > 0: clipped) and e^-0.5 < 0.8 (A < 0: clipped)
    nb.grpo_loss(moved, old, torch.tensor([1.0, -1.0]), torch.ones(2, 1), 0.2, 1.0).backward()
    assert moved.grad.tolist() == [[0.0], [0.0]]
    unclipped = torch.tensor([[-1.0], [-1.0]], requires_grad=True)
    nb.grpo_loss(unclipped, old, torch.tensor([-1.0, 1.0]), torch.ones(2, 1), 0.2, 1.0).backward()
    assert unclipped.grad.flatten().tolist() == pytest.approx([torch.e ** 0.5, -torch.e ** -0.5], rel=1e-5)


def test_grpo_kl_term_is_k3_and_vanishes_at_the_reference(nb):
    policy = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    mask, zero = torch.ones(1, 2), torch.zeros(1)
    at_reference = nb.grpo_loss(policy, policy.detach(), zero, mask, 0.2, 1.0, policy.detach() + 0.0, beta=0.5)
    assert at_reference.item() == 0.0
    reference = torch.tensor([[-1.5, -1.0]])
    delta = reference - policy.detach()
    expected = 0.5 * (torch.exp(delta) - delta - 1).sum().item()
    assert nb.grpo_loss(policy, policy.detach(), zero, mask, 0.2, 1.0, reference, beta=0.5).item() == pytest.approx(expected)


def grpo_config(nb, **overrides):
    return nb.make_config("cpu-tiny", max_new_tokens=24, algorithm="grpo", num_generations=4, prompts_per_step=4,
                          **overrides)


@pytest.mark.parametrize("scale", [True, False])
def test_grpo_step_loss_and_update_do_not_depend_on_micro_batches(nb, scale):
    """A GRPO step over 4 prompts x 4 responses gives the loss computed by hand over all rollouts, and the same
    parameters after an SGD step whether the 16 responses go through in one micro-batch or in eight."""
    config = grpo_config(nb, grpo_scale_rewards=scale, grpo_beta=0.1, micro_batch_size=16)
    datasets = nb.build_datasets(config)
    problems = datasets["multiplication"]["train"][:2] + datasets["countdown"]["train"][:2]

    def models():
        return tiny_model_and_tokenizer(nb, seed=3) + (tiny_model_and_tokenizer(nb, seed=4)[0],)

    policy, tokenizer, reference = models()
    torch.manual_seed(0)
    rollouts = nb.generate(policy, tokenizer, [nb.prompt_for(p, config) for p in problems], config, greedy=False,
                           samples_per_prompt=4, show_progress=False)
    rewards = torch.tensor(nb.score(problems, rollouts.texts, 4, config.format_score))
    batch = nb.build_rollout_batch(rollouts.prompt_ids, rollouts.response_ids, {tokenizer.eos_token_id},
                                   tokenizer.pad_token_id)
    tokens = batch.response_mask.sum().item()
    with torch.no_grad():
        policy_tokens = nb.response_token_logprobs(policy, batch)[0]
        expected = nb.grpo_loss(policy_tokens, policy_tokens, nb.group_advantages(rewards, 4, scale), batch.response_mask,
                                0.2, tokens if scale else 16 * config.max_new_tokens,
                                nb.response_token_logprobs(reference, batch)[0], 0.1).item()

    whole, whole_parameters = one_sgd_step(nb, models, problems, None, config, micro_batch_size=16)
    grouped, grouped_parameters = one_sgd_step(nb, models, problems, None, config, micro_batch_size=2)
    for record in (whole, grouped):
        assert record["loss"] == pytest.approx(expected, rel=1e-4, abs=1e-7)
        assert record["responses"] == 16 and record["sampled_tokens"] == sum(map(len, rollouts.response_ids))
        assert record["reward"] == pytest.approx(rewards.mean().item())
        assert 0.0 <= record["zero_advantage_groups"] <= 1.0 and record["kl"] is not None
    for a, b in zip(whole_parameters, grouped_parameters):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(whole_parameters, models()[0].parameters()))


def test_grpo_without_kl_never_runs_the_reference(nb):
    config = grpo_config(nb, micro_batch_size=4)
    policy, tokenizer = tiny_model_and_tokenizer(nb, seed=3)
    reference, _ = tiny_model_and_tokenizer(nb, seed=4)
    calls = []
    reference.register_forward_hook(lambda *args: calls.append(1))
    problems = nb.build_datasets(config)["multiplication"]["train"][:4]
    record = nb.stage2_step(policy, reference, tokenizer, problems, None, torch.optim.SGD(policy.parameters(), lr=0.1),
                            config, torch.device("cpu"), step=1, world_size=1)
    assert calls == [] and record["kl"] is None and record["responses"] == 16
