"""The notebook's decoding loop against transformers' `generate`, and its early exit of finished rows."""
import pytest
import torch
from transformers import GenerationConfig


def tiny_float64_model(nb, seed=0):
    torch.manual_seed(seed)
    tokenizer = nb.build_char_tokenizer()
    tokenizer.padding_side = "left"
    model = nb.Qwen2ForCausalLM(nb.tiny_qwen2_config(nb.make_config("cpu-tiny"), tokenizer)).double().eval()
    model.config._attn_implementation = "sdpa"
    return model, tokenizer


PROMPTS = ["Assistant: 12*3", "User: 7 8 9 -> 24 <think>", "x", "<answer> 5 </answer> and then some more text"]


def greedy_by_generate(nb, model, tokenizer, encoded, eos_id, max_new_tokens):
    """Greedy responses from transformers' `generate`, cut after the first EOS."""
    output = model.generate(**encoded, generation_config=GenerationConfig(
        do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=[eos_id], pad_token_id=tokenizer.pad_token_id))
    return [nb.trim_at_eos(row, {eos_id}) for row in output[:, encoded["input_ids"].shape[1]:].tolist()]


@pytest.mark.parametrize("early_eos", [False, True])
def test_greedy_decoding_matches_transformers_generate(nb, early_eos):
    """Left padding, position ids and rows leaving the batch: the same tokens as `generate`. With an EOS
    that one row emits after a few tokens, rows end at different steps, so the early exit is exercised."""
    model, tokenizer = tiny_float64_model(nb)
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    eos_id = tokenizer.eos_token_id
    if early_eos:
        eos_id = greedy_by_generate(nb, model, tokenizer, encoded, eos_id, 40)[0][5]
    expected = greedy_by_generate(nb, model, tokenizer, encoded, eos_id, 40)
    got, lengths = nb.decode(model, encoded["input_ids"], encoded["attention_mask"], 40, greedy=True,
                             temperature=1.0, eos_ids={eos_id}, pad_id=tokenizer.pad_token_id)
    assert [nb.trim_at_eos(row, {eos_id}) for row in got.tolist()] == expected
    got = [row[:length] for row, length in zip(got.tolist(), lengths.tolist())]
    assert got == expected
    if early_eos:
        lengths = [len(row) for row in got]
        assert min(lengths) <= 6 and max(lengths) > min(lengths)  # one row ended early while others went on


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
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    free, _ = nb.decode(model, encoded["input_ids"], encoded["attention_mask"], 3, greedy=True, temperature=1.0,
                        eos_ids={tokenizer.eos_token_id}, pad_id=tokenizer.pad_token_id)
    banned = tuple(set(free[:, 0].tolist()))
    held, _ = nb.decode(model, encoded["input_ids"], encoded["attention_mask"], 3, greedy=True, temperature=1.0,
                        eos_ids={tokenizer.eos_token_id}, pad_id=tokenizer.pad_token_id, banned_first_tokens=banned)
    assert not set(held[:, 0].tolist()) & set(banned)


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
