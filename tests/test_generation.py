"""The notebook's sampler (tinyzero/torch_sampler.py) against transformers' `generate`, and its continuous
batching against decoding batch by batch."""
import math

import pytest
import torch
from transformers import GenerationConfig

from tinyzero import torch_sampler


def tiny_float64_model(nb, seed=0):
    torch.manual_seed(seed)
    tokenizer = nb.build_char_tokenizer()
    tokenizer.padding_side = "left"
    model = nb.Qwen2ForCausalLM(nb.tiny_qwen2_config(nb.make_config("cpu-tiny"), tokenizer)).double().eval()
    model.config._attn_implementation = "sdpa"
    return model, tokenizer


def sharp_float64_model(nb, seed):
    """A random model whose weights are drawn wide enough that its greedy responses differ from prompt to prompt
    (at the usual initialisation every row repeats one token), and token 256 ends them at many lengths."""
    model, tokenizer = tiny_float64_model(nb, seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 1.2)
    return model, tokenizer, 256


PROMPTS = ["Assistant: 12*3", "User: 7 8 9 -> 24 <think>", "x", "<answer> 5 </answer> and then some more text"]


def greedy_by_generate(nb, model, tokenizer, prompts, eos_id, max_new_tokens):
    """Greedy responses from transformers' `generate`, cut after the first EOS."""
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    output = model.generate(**encoded, generation_config=GenerationConfig(
        do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=[eos_id], pad_token_id=tokenizer.pad_token_id))
    return [nb.trim_at_eos(row, {eos_id}) for row in output[:, encoded["input_ids"].shape[1]:].tolist()]


def sampled(nb, model, tokenizer, prompts, eos_id, max_new_tokens, slots, **options):
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    return nb.sample_with_model(model, prompt_ids, options.pop("samples", 1), options.pop("greedy", True), 1.0,
                                max_new_tokens, {eos_id}, tokenizer.pad_token_id, slots, **options)


@pytest.mark.parametrize("early_eos", [False, True])
def test_greedy_decoding_matches_transformers_generate(nb, early_eos):
    """Left padding, position ids, rows ending and others taking their slots: the same tokens as `generate`.
    With an EOS that one row emits after a few tokens, rows end at different steps."""
    model, tokenizer = tiny_float64_model(nb)
    eos_id = tokenizer.eos_token_id
    if early_eos:
        eos_id = greedy_by_generate(nb, model, tokenizer, PROMPTS, eos_id, 40)[0][5]
    expected = greedy_by_generate(nb, model, tokenizer, PROMPTS, eos_id, 40)
    for slots in (4, 2, 1):
        got, _ = sampled(nb, model, tokenizer, PROMPTS, eos_id, 40, slots)
        assert got == expected, f"slots={slots}"
    if early_eos:
        lengths = [len(row) for row in expected]
        assert min(lengths) <= 6 and max(lengths) > min(lengths)  # one row ended early while others went on


def test_slot_groups_cover_every_slot_once_and_none_is_empty():
    for slots in range(0, 40):
        for groups in range(1, 9):
            bounds = torch_sampler.slot_group_bounds(slots, groups)
            sizes = [b - a for a, b in zip(bounds, bounds[1:])]
            assert bounds[0] == 0 and bounds[-1] == slots and sum(sizes) == slots, (slots, groups)
            assert all(size > 0 for size in sizes) and len(sizes) == min(slots, groups), (slots, groups)
            assert not sizes or max(sizes) - min(sizes) <= 1, (slots, groups)  # near-equal


@pytest.mark.parametrize("groups", [3, 1])
def test_refill_sorting_and_dropped_columns_keep_every_response_exact(nb, monkeypatch, groups):
    """Many prompts through few slots, sorted by age every few steps, groups of slots with their own attention
    windows, and the KV cache's unread columns dropped often: still `generate`'s tokens, row for row. With one
    group (what a GPU runs) nothing is sorted."""
    model, tokenizer, eos_id = sharp_float64_model(nb, seed=2)
    prompts = [f"User: {i * 7 % 23} {'and more ' * (i % 4)}then" for i in range(20)]
    expected = greedy_by_generate(nb, model, tokenizer, prompts, eos_id, 30)
    assert len({len(row) for row in expected}) > 3  # responses of many lengths end at many steps
    monkeypatch.setattr(torch_sampler, "SORT_EVERY", 3)
    monkeypatch.setattr(torch_sampler, "DROP_COLUMNS_AT", 2)
    monkeypatch.setattr(torch_sampler, "DROP_SHARE", 0.0)
    monkeypatch.setattr(torch_sampler, "SLOT_GROUPS", groups)
    got, stats = sampled(nb, model, tokenizer, prompts, eos_id, 30, slots=6)
    assert got == expected
    assert stats.prefills > 3 and stats.busy_slot_steps == sum(map(len, expected)) - len(expected)


def poison_unwritten_columns(monkeypatch):
    """Fill every KV-cache column from the cache's `length` on with NaN as the sampler makes its cache: a column read
    before the sampler writes it (even masked, at zero attention weight) then turns its row's logits into NaN."""
    made = torch_sampler.SlotLayer.__init__

    def poisoned(layer, cache, *args, **kwargs):
        made(layer, cache, *args, **kwargs)
        layer.key_buffer[:, :, cache.length:] = math.nan
        layer.value_buffer[:, :, cache.length:] = math.nan
    monkeypatch.setattr(torch_sampler.SlotLayer, "__init__", poisoned)


def test_no_column_is_read_before_it_is_written(nb, monkeypatch):
    """The cache's columns past `length` start empty: refills, sorting, dropped columns, slots shrinking to the live
    ones, and episodes going on in their slots never read one before writing it (NaN there would show), and the
    kept slots' columns that shrinking does not move hold only finite values."""
    model, tokenizer, eos_id = sharp_float64_model(nb, seed=2)
    prompts = [f"User: {i * 7 % 23} {'and more ' * (i % 4)}then" for i in range(20)]
    expected = greedy_by_generate(nb, model, tokenizer, prompts, eos_id, 30)
    poison_unwritten_columns(monkeypatch)
    monkeypatch.setattr(torch_sampler, "SORT_EVERY", 3)
    monkeypatch.setattr(torch_sampler, "DROP_COLUMNS_AT", 2)
    monkeypatch.setattr(torch_sampler, "DROP_SHARE", 0.0)
    for slots in (6, 20):  # 20: every prompt at once, then the tail shrinks to its live slots
        got, _ = sampled(nb, model, tokenizer, prompts, eos_id, 30, slots=slots)
        assert got == expected, f"slots={slots}"
    observation = tokenizer(" then ", add_special_tokens=False)["input_ids"]
    starts = tokenizer([f"User: {i * 5 % 17} go" for i in range(6)], add_special_tokens=False)["input_ids"]
    contexts = list(starts)

    def follow_up(row, response):  # three turns, each going on in its slot over the cached context
        if row >= 2 * len(starts):
            return None
        contexts.append(contexts[row] + response + observation)
        return contexts[-1]
    responses, stats = nb.sample_with_model(model, starts, 1, True, 1.0, 12, {eos_id}, tokenizer.pad_token_id, 6,
                                            follow_up=follow_up, max_prompt_tokens=200)
    assert stats.continued == 2 * len(starts)
    ids, mask = torch_sampler.left_padded(contexts, tokenizer.pad_token_id, "cpu")
    output = model.generate(input_ids=ids, attention_mask=mask, generation_config=GenerationConfig(
        do_sample=False, max_new_tokens=12, eos_token_id=[eos_id], pad_token_id=tokenizer.pad_token_id))
    assert responses == [nb.trim_at_eos(row, {eos_id}) for row in output[:, ids.shape[1]:].tolist()]


def test_refill_takes_fewer_steps_than_batch_by_batch(nb):
    model, tokenizer, eos_id = sharp_float64_model(nb, seed=2)
    prompts = [f"User: {i * 7 % 23} {'and more ' * (i % 4)}then" for i in range(16)]
    batches, batch_stats = sampled(nb, model, tokenizer, prompts, eos_id, 30, slots=4, refill=False)
    refilled, refill_stats = sampled(nb, model, tokenizer, prompts, eos_id, 30, slots=4)
    assert refilled == batches
    assert refill_stats.decode_steps < batch_stats.decode_steps


def test_refill_samples_the_same_distribution_as_batch_by_batch(nb):
    """V* (beta1 0.5) and pass@8 of a reward on sampled responses, over 48 prompts x 8 samples each way: the means
    agree within 4 standard errors of their difference (the responses themselves differ: the random numbers are
    drawn in another order)."""
    model, tokenizer, eos_id = sharp_float64_model(nb, seed=2)
    prompts = [f"User: {i * 7 % 23} {'and more ' * (i % 4)}then" for i in range(48)]

    def vstar_and_pass(refill, seed):
        torch.manual_seed(seed)
        responses, _ = sampled(nb, model, tokenizer, prompts, eos_id, 16, slots=32, samples=8, greedy=False,
                               refill=refill)
        rewards = torch.tensor([float(len(r) <= 8) for r in responses]).view(len(prompts), 8)  # ended early
        return nb.optimal_value(rewards, 0.5), rewards.max(-1).values

    for first, second in zip(vstar_and_pass(True, 0), vstar_and_pass(False, 1)):
        difference = first.mean() - second.mean()
        standard_error = math.sqrt((first.var() + second.var()) / len(first))
        assert 0.05 < first.mean() < 0.95  # the reward separates responses
        assert abs(difference) < 4 * standard_error + 1e-9, (first.mean(), second.mean())


def test_draw_tokens_follows_the_softmax_and_never_draws_a_banned_token():
    torch.manual_seed(0)
    logits = torch.tensor([[0.0, math.log(3.0), -torch.inf, 0.0]]).repeat(40_000, 1)
    counts = torch.bincount(torch_sampler.draw_tokens(logits, greedy=False, temperature=1.0), minlength=4)
    assert counts[2] == 0
    assert torch.allclose(counts / counts.sum(), torch.tensor([0.2, 0.6, 0.0, 0.2], dtype=torch.float), atol=0.01)
    assert torch_sampler.draw_tokens(logits[:2], greedy=True, temperature=1.0).tolist() == [1, 1]


def test_generate_keeps_prompt_order_samples_and_first_eos(nb):
    model, tokenizer = tiny_float64_model(nb, seed=1)
    config = nb.make_config("cpu-tiny", max_new_tokens=12, generation_batch_size=4)
    torch.manual_seed(0)
    result = nb.generate(model, tokenizer, PROMPTS, config, greedy=False, samples_per_prompt=2, show_progress=False)
    assert len(result.response_ids) == len(result.texts) == 2 * len(PROMPTS)
    for i, (prompt_ids, response) in enumerate(zip(result.prompt_ids, result.response_ids)):
        assert prompt_ids == tokenizer(PROMPTS[i // 2], add_special_tokens=False)["input_ids"]
        assert 1 <= len(response) <= 12
        assert tokenizer.eos_token_id not in response[:-1]  # nothing after the first EOS


def test_banned_first_token_is_never_first(nb):
    model, tokenizer = tiny_float64_model(nb)
    free, _ = sampled(nb, model, tokenizer, PROMPTS, tokenizer.eos_token_id, 3, slots=2)
    banned = tuple({row[0] for row in free})
    held, _ = sampled(nb, model, tokenizer, PROMPTS, tokenizer.eos_token_id, 3, slots=2, banned_first_tokens=banned)
    assert not {row[0] for row in held} & set(banned)


def test_a_sampled_pad_token_at_the_cap_stays_in_the_response(nb):
    """When pad is not EOS, a response that runs to the cap keeps a pad token it chose to write: lengths, not
    padding, mark where a response ends (the reward scores what the model wrote)."""
    model, tokenizer = tiny_float64_model(nb)
    config = nb.make_config("cpu-tiny", max_new_tokens=6)
    free = nb.generate(model, tokenizer, PROMPTS, config, greedy=True, show_progress=False)
    row = next(i for i, r in enumerate(free.response_ids) if len(r) == 6 and tokenizer.eos_token_id not in r)
    last = free.response_ids[row][-1]
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(last)  # the token the row ends on is now the pad token
    assert tokenizer.pad_token_id == last != tokenizer.eos_token_id
    held = nb.generate(model, tokenizer, PROMPTS, config, greedy=True, show_progress=False)
    assert held.response_ids[row] == free.response_ids[row]


@pytest.mark.parametrize("extends", [True, False])
def test_follow_up_prompts_join_as_their_turns_end_and_stay_exact(nb, monkeypatch, extends):
    """Episodes through the sampler: when a response ends, `follow_up` may bring a longer prompt. One that extends the
    context so far (the context, the response, an observation) goes on in its slot with only the observation fed;
    any other joins a free slot while other rows still decode. Either way every turn's greedy response is
    `generate`'s for that prompt, whatever the slots, sorting and dropped columns, and a banned first token stays
    banned on every turn. Observations of several lengths: episodes whose turns end at the same step (all of them,
    at a short cap) go on together in one forward, the shorter ones padded."""
    model, tokenizer, eos_id = sharp_float64_model(nb, seed=3)
    monkeypatch.setattr(torch_sampler, "SORT_EVERY", 3)
    monkeypatch.setattr(torch_sampler, "DROP_COLUMNS_AT", 2)
    monkeypatch.setattr(torch_sampler, "DROP_SHARE", 0.0)
    observations = tokenizer([" then ", " and so on, then ", "!"], add_special_tokens=False)["input_ids"]
    starts = tokenizer([f"User: {i * 5 % 17} go" for i in range(6)], add_special_tokens=False)["input_ids"]
    turns = 3
    banned = ()
    for slots, cap in ((6, 12), (2, 12), (3, 12), (6, 3)):
        prompts, turn_of = list(starts), [1] * len(starts)  # row -> its prompt and its turn

        def follow_up(row, response):
            if turn_of[row] == turns:
                return None
            context = prompts[row] + response
            observation = observations[row % len(observations)]
            prompts.append(context + observation if extends else observation + context)
            turn_of.append(turn_of[row] + 1)
            return prompts[-1]
        responses, stats = nb.sample_with_model(model, starts, 1, True, 1.0, cap, {eos_id}, tokenizer.pad_token_id,
                                                slots, follow_up=follow_up, max_prompt_tokens=200,
                                                banned_first_tokens=banned)
        assert len(responses) == len(prompts) == len(starts) * turns
        assert stats.continued == (len(starts) * (turns - 1) if extends else 0)
        assert stats.prefills <= len(starts) if extends else stats.prefills > 2  # extending: first prompts only
        if extends and cap == 3:
            assert stats.extensions < stats.continued  # several episodes went on in one forward
        ids, mask = torch_sampler.left_padded(prompts, tokenizer.pad_token_id, "cpu")
        output = model.generate(input_ids=ids, attention_mask=mask, generation_config=GenerationConfig(
            do_sample=False, max_new_tokens=cap, eos_token_id=[eos_id], pad_token_id=tokenizer.pad_token_id,
            begin_suppress_tokens=list(banned) or None))
        assert responses == [nb.trim_at_eos(row, {eos_id}) for row in output[:, ids.shape[1]:].tolist()], \
            f"slots={slots}, cap={cap}"
        if banned:
            assert not {response[0] for response in responses} & set(banned)
        else:  # the rounds after the first ban the first tokens that its later turns chose
            banned = tuple({response[0] for response in responses[len(starts):]})
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        nb.sample_with_model(model, starts, 1, True, 1.0, 12, {eos_id}, tokenizer.pad_token_id, 2,
                             follow_up=lambda row, response: starts[0] * 40, max_prompt_tokens=50)


def grouped_query_float64_model(nb, seed):
    """A sharp float64 Qwen2 model whose 4 query heads share 2 key/value heads, as Qwen2.5's do."""
    torch.manual_seed(seed)
    tokenizer = nb.build_char_tokenizer()
    model_config = nb.tiny_qwen2_config(nb.make_config("cpu-tiny", base_hidden_size=32, base_heads=4), tokenizer)
    model_config.num_key_value_heads = 2
    model = nb.Qwen2ForCausalLM(model_config).double().eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 1.2)
    return model, tokenizer


@pytest.mark.parametrize("grouped_query", [False, True])
def test_fused_step_samples_what_the_model_forward_samples(nb, monkeypatch, grouped_query):
    """The fused decoding step against the model's own forward, with refills, sorting and dropped columns: in
    float64 the same logits, so the same tokens, greedy and sampled from the same seed."""
    prompts = [f"User: {i * 7 % 23} {'and more ' * (i % 4)}then" for i in range(12)]
    if grouped_query:
        model, tokenizer = grouped_query_float64_model(nb, seed=4)
        eos_id = greedy_by_generate(nb, model, tokenizer, prompts, tokenizer.eos_token_id, 8)[0][3]  # ends rows early
    else:
        model, tokenizer, eos_id = sharp_float64_model(nb, seed=2)
    assert torch_sampler.FusedDecodingStep.supports(model)
    monkeypatch.setattr(torch_sampler, "SORT_EVERY", 3)
    monkeypatch.setattr(torch_sampler, "DROP_COLUMNS_AT", 2)
    monkeypatch.setattr(torch_sampler, "DROP_SHARE", 0.0)
    for greedy in (True, False):
        responses = {}
        for fused in (True, False):
            torch.manual_seed(0)
            responses[fused], _ = sampled(nb, model, tokenizer, prompts, eos_id, 20, slots=5, samples=2,
                                          greedy=greedy, fused=fused)
        assert responses[True] == responses[False], f"greedy={greedy}"
        assert len({len(r) for r in responses[True]}) > 2  # rows ended at several steps


def test_sharded_parameters_decode_with_the_model_forward_and_gathered_ones_with_the_fused_step(nb):
    """FSDP's sharded parameters (outside `gathered_for_generation`) are left to the model's forward; inside the
    context the fused step decodes the gathered policy. Both give the same tokens."""
    from test_gpu_path import wrapped_policy
    policy, tokenizer = wrapped_policy(nb)
    prompt_ids = tokenizer(PROMPTS, add_special_tokens=False)["input_ids"]

    def greedy(model):
        return nb.sample_with_model(model, prompt_ids, 1, True, 1.0, 10, {tokenizer.eos_token_id},
                                    tokenizer.pad_token_id, 2)[0]
    assert not torch_sampler.FusedDecodingStep.supports(policy)
    sharded = greedy(policy)
    with nb.gathered_for_generation(policy):
        assert torch_sampler.FusedDecodingStep.supports(policy)
        assert greedy(policy) == sharded


def test_sampling_runs_in_inference_mode_unless_parameters_are_sharded_and_the_policy_trains_after(nb):
    """Sampling keeps no autograd records (inference mode) except where FSDP gathers sharded parameters inside the
    forward; a policy that sampled inside `gathered_for_generation` still trains (no inference tensor is left in it)."""
    from test_gpu_path import wrapped_policy
    policy, tokenizer = wrapped_policy(nb)
    prompt_ids = tokenizer(PROMPTS, add_special_tokens=False)["input_ids"]
    modes = []
    policy.model.embed_tokens.register_forward_hook(lambda *_: modes.append(torch.is_inference_mode_enabled()))

    def sample_modes(model):
        modes.clear()
        nb.sample_with_model(model, prompt_ids, 2, False, 1.0, 6, {tokenizer.eos_token_id}, tokenizer.pad_token_id, 3)
        return set(modes)
    assert sample_modes(policy) == {False}
    with nb.gathered_for_generation(policy):
        assert sample_modes(policy) == {True}
    assert not torch.is_inference_mode_enabled()
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    policy(**batch).logits.float().pow(2).mean().backward()
    gradients = [p.grad for p in policy.parameters()]
    assert all(g is not None and torch.isfinite(g.full_tensor()).all() for g in gradients)
    assert any(g.full_tensor().abs().sum() > 0 for g in gradients)
