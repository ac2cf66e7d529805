"""Held-out means unseen: no held-out problem, with its numbers in any order, is in stage 0's corpus or in a
training set; and what each cache key and checkpoint guard is derived from."""
import dataclasses
import pathlib
import random
import sys

import pytest
import torch

from tinyzero import checkpoints, torch_sampler

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tools"))
from heldout_coverage import countdown_space, document_key, multiplication_space_size  # noqa: E402


def test_the_key_ignores_the_order_of_the_numbers(nb):
    countdown = nb.Problem("countdown", "3x9", (3, 2, 6), 5, "(3-2)*6")
    assert nb.problem_key(countdown) == nb.problem_key(nb.Problem("countdown", "3x9", (2, 3, 6), 5, "(3-2)*6"))
    assert nb.problem_key(countdown) != nb.problem_key(nb.Problem("countdown", "3x9", (2, 3, 6), 6, "2*6/(3-2)"))
    assert nb.problem_key(countdown) != nb.problem_key(nb.Problem("countdown", "3x9", (2, 3, 3, 6), 5, "x"))
    product = nb.Problem("multiplication", "2x2", (12, 34), 408, "408")
    assert nb.problem_key(product) == nb.problem_key(nb.Problem("multiplication", "2x2", (34, 12), 408, "408"))
    assert nb.problem_key(product) != nb.problem_key(nb.Problem("countdown", "3x9", (12, 34), 408, "x"))


def test_the_cpu_default_corpus_and_training_sets_hold_no_held_out_problem(nb):
    """The real `cpu` corpus (every document stage 0 pretrains on) and training prompts, read back from their
    text, against every held-out problem of every level, in any order of its numbers."""
    config = nb.make_config("cpu")
    datasets = nb.build_datasets(config)
    heldout = nb.heldout_keys(datasets)
    assert len(heldout) == 5 * 256  # countdown 3x9 and 3x20, multiplication 2x1, 3x1 and 2x2
    corpus = nb.stage0_corpus(config, heldout, nb.build_char_tokenizer())
    assert len(corpus) > 30_000
    corpus_keys = {document_key(nb, document) for document in corpus}
    assert not corpus_keys & heldout
    training_keys = {nb.problem_key(p) for split in datasets.values() for p in split["train"]}
    assert not training_keys & heldout
    levels = {(task, p.level) for task, split in datasets.items() for p in split["train"]}
    assert levels == {("countdown", "3x9"), ("countdown", "3x20"), ("multiplication", "2x1"), ("multiplication", "3x1")}


def test_reordered_held_out_puzzles_are_kept_out(nb):
    """A held-out key given with the numbers in another order is still avoided by the corpus and training."""
    config = nb.make_config("cpu-tiny", train_prompts_per_task=200)
    rng = random.Random(0)
    corpus = nb.build_corpus(config, set(), 400, rng)
    keys = {document_key(nb, d) for d in corpus}
    some = set(list(keys)[:50])
    again = nb.build_corpus(config, some, 400, random.Random(0))
    assert not {document_key(nb, d) for d in again} & some
    train = nb.generate_problems("countdown", "3x9", 200, random.Random(1), exclude=some)
    assert not {nb.problem_key(p) for p in train} & some


def test_puzzle_space_counts_match_a_brute_force_count(nb):
    """The level sizes README quotes: 3-number countdown puzzles counted from their reachable targets, checked
    here against drawing puzzles until no new one appears for a small level."""
    nb.COUNTDOWN_LEVELS["3x3"] = nb.CountdownLevel(3, 3, 10)
    try:
        space = countdown_space(nb, "3x3")
        rng, drawn = random.Random(0), set()
        for _ in range(20_000):
            drawn.add(nb.problem_key(nb.generate_countdown_problem(rng, "3x3")))
        assert space == drawn
    finally:
        del nb.COUNTDOWN_LEVELS["3x3"]
    assert multiplication_space_size("2x1") == 90 * 9
    assert multiplication_space_size("2x2") == 90 * 91 // 2


# ---- what the base model's folder, V* and a resume are keyed by ----

def test_editing_any_helper_of_the_reward_changes_the_v_star_fingerprint(nb, monkeypatch):
    """Every function the sampler and reward reach, and every constant they read, is in the fingerprint."""
    roots = [nb.sample_reference_rewards, nb.optimal_value]
    before = nb.code_fingerprint(roots)
    assert nb.code_fingerprint(roots) == before
    for name in ("parse_equation", "equation_node_numbers", "evaluate_equation_node", "passes_equation_prechecks",
                 "extract_answer", "parse_integer_answer"):
        original = getattr(nb, name)
        monkeypatch.setitem(nb.__dict__, name, lambda *args, **kwargs: None)
        assert nb.code_fingerprint(roots) != before, f"{name} is not in the fingerprint"
        monkeypatch.setitem(nb.__dict__, name, original)
    sampler_roots = roots  # the key estimate_vstar uses: the sampler in tinyzero/ is reached through generate
    with_sampler = nb.code_fingerprint(sampler_roots)
    for name, value in (("draw_tokens", lambda *args: None), ("windowed_attention", lambda *args: None),
                        ("SLOT_GROUPS", 5), ("FusedDecodingStep", type("Other", (), {}))):
        monkeypatch.setattr(torch_sampler, name, value)
        assert nb.code_fingerprint(sampler_roots) != with_sampler, f"torch_sampler.{name} is not in the fingerprint"
        monkeypatch.undo()
    for name, value in (("MAX_EQUATION_CHARS", 201), ("MAX_PAREN_DEPTH", 19), ("INTEGER_CHARS", frozenset("0123")),
                        ("EQUATION_OPERATORS", (nb.ast.Add,))):
        original = getattr(nb, name)
        monkeypatch.setitem(nb.__dict__, name, value)
        assert nb.code_fingerprint(roots) != before, f"{name} is not in the fingerprint"
        monkeypatch.setitem(nb.__dict__, name, original)
    assert nb.code_fingerprint(roots) == before


def test_a_broken_equation_checker_is_not_read_from_a_stale_v_star_cache(nb, monkeypatch):
    """The case that went wrong: parse_equation replaced so that a correct answer scores the format score."""
    problem = nb.Problem("countdown", "3x9", (3, 2, 6), 6, "(3-2)*6")
    config = nb.make_config("cpu-tiny")
    key = lambda: nb.vstar_cache_key("model", ["p"], config, nb.code_fingerprint([nb.sample_reference_rewards]))
    before = key()
    assert nb.reward_for(problem, "<answer> (3-2)*6 </answer>") == 1.0
    monkeypatch.setitem(nb.__dict__, "parse_equation", lambda equation: None)
    assert nb.reward_for(problem, "<answer> (3-2)*6 </answer>") == 0.1
    assert key() != before


def test_v_star_key_holds_the_dtype_and_the_hub_revision(nb):
    config = nb.make_config("cpu-tiny")
    key = lambda c, model: nb.vstar_cache_key(model, ["p"], c, "code")
    assert key(config, "m") != key(dataclasses.replace(config, dtype="bfloat16"), "m")
    assert nb.model_identity("Qwen/Qwen2.5-0.5B", "abc") != nb.model_identity("Qwen/Qwen2.5-0.5B", "def")
    assert nb.model_identity("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B@main"


def test_base_model_folder_follows_its_code(nb, monkeypatch):
    config = nb.make_config("cpu-tiny")
    heldout = nb.heldout_keys(nb.build_datasets(config))
    before = nb.base_model_path(config, heldout)
    monkeypatch.setitem(nb.__dict__, "multiplication_trace", lambda a, b: "")
    assert nb.base_model_path(config, heldout) != before


def test_base_model_folder_follows_the_project_package_and_not_libraries(nb, monkeypatch):
    """Corpus code in tinyzero/ (a FrozenLake worked turn, say) is the project's: editing it makes a new base model."""
    from tinyzero import frozenlake
    config = nb.make_config("cpu-tiny", tasks=["frozenlake"])
    heldout = nb.heldout_keys(nb.build_datasets(config))
    before = nb.base_model_path(config, heldout)
    monkeypatch.setattr(frozenlake, "TOWARD_GOAL_ORDER", (2, 1, 3, 0))
    assert nb.base_model_path(config, heldout) != before
    monkeypatch.undo()
    assert nb.is_project_code(frozenlake.checks_turn, "__main__") and not nb.is_project_code(torch.tensor, "__main__")


def another_value(nb, name: str, value):
    """A different allowed value of Config field `name` (for the fields a resume may change)."""
    if isinstance(value, str):
        return {"preset": "cpu-tiny" if value != "cpu-tiny" else "cpu", "device": "cpu"}.get(name, value + "-other")
    if name == "micro_batch_size":
        return value // 2
    if isinstance(value, tuple):  # search_budgets
        return value + (2,)
    if isinstance(value, bool):
        return not value
    if name == "vllm_memory_fraction":
        return value / 2
    return value * 2 if name == "generation_batch_size" else value + 3


@pytest.mark.parametrize("preset", ["cpu", "cpu-tiny", "qwen2.5-0.5b"])
def test_every_field_a_resume_may_change_feeds_no_base_model_problem_or_v_star(nb, preset):
    """For each field a resume accepts: the base model's folder, every problem and V*'s key stay as they are.
    (Checked per field, not from a list of what each field is believed to feed.)"""
    config = nb.make_config(preset, micro_batch_size=8)
    datasets = nb.build_datasets(config)
    heldout = nb.heldout_keys(datasets)
    prompts = [nb.prompt_for(p, config) for split in datasets.values() for p in split["train"]]
    derived = lambda c, d: (nb.base_model_path(dataclasses.replace(c, cache_dir="x"), nb.heldout_keys(d)),
                            nb.problems_digest(d), nb.vstar_cache_key("m", [nb.prompt_for(p, c) for s in d.values()
                                                                           for p in s["train"]], c, "code"))
    expected = derived(config, datasets)
    assert expected[0] == nb.base_model_path(dataclasses.replace(config, cache_dir="x"), heldout) and prompts
    for name in sorted(checkpoints.resumable_fields(config)):
        if name == "report_to":
            changed = dataclasses.replace(config, report_to=())  # no tracker install needed
        else:
            changed = nb.Config(**{**dataclasses.asdict(config), name: another_value(nb, name, getattr(config, name))})
        assert checkpoints.config_differences(nb.json.loads(nb.json.dumps(dataclasses.asdict(config))), changed) == []
        assert derived(changed, nb.build_datasets(changed)) == expected, f"{name} changes what the run trains on"


def test_changing_eval_prompts_per_task_is_refused_on_resume(nb):
    """It feeds the held-out sets that training prompts avoid, so it changes the training prompts."""
    config = nb.make_config("cpu")
    changed = dataclasses.replace(config, eval_prompts_per_task=128)
    assert nb.problems_digest(nb.build_datasets(config)) != nb.problems_digest(nb.build_datasets(changed))
    saved = nb.json.loads(nb.json.dumps(dataclasses.asdict(config)))
    assert checkpoints.config_differences(saved, changed) == ["eval_prompts_per_task"]


def test_train_steps_sets_a_sequential_curriculum_and_is_then_not_resumable(nb):
    curriculum = {"multiplication": [("2x1", 0.5), ("3x1", 0.5)]}
    config = nb.make_config("cpu-tiny", curriculum=curriculum, curriculum_schedule="sequential")
    saved = nb.json.loads(nb.json.dumps(dataclasses.asdict(config)))
    assert checkpoints.config_differences(saved, dataclasses.replace(config, train_steps=8)) == ["train_steps"]
    mixed = dataclasses.replace(config, curriculum_schedule="mixed")
    saved = nb.json.loads(nb.json.dumps(dataclasses.asdict(mixed)))
    assert checkpoints.config_differences(saved, dataclasses.replace(mixed, train_steps=8)) == []


def checkpoint_state(nb, config, world_size=1, inputs=None):
    return {"config": nb.json.loads(nb.json.dumps(dataclasses.asdict(config))), "rng": [{}] * world_size,
            "world_size": world_size, "inputs": inputs or {"problems": "a"}}


def test_resume_refuses_another_world_size_and_other_inputs(nb):
    config = nb.make_config("cpu-tiny")
    state = checkpoint_state(nb, config, world_size=2)
    assert "written by 2 processes" in checkpoints.resume_refusal(state, "run/checkpoint.pt", config, {"problems": "a"}, 1)
    assert checkpoints.resume_refusal(state, "run/checkpoint.pt", config, {"problems": "a"}, 2) is None
    state = checkpoint_state(nb, config)
    refusal = checkpoints.resume_refusal(state, "run/checkpoint.pt", dataclasses.replace(config, eval_every=5),
                                {"problems": "b"}, 1)
    assert "other problems" in refusal and "eval_every" in refusal
    assert "the code or the model" in checkpoints.resume_refusal(state, "run/checkpoint.pt", config, {"problems": "b"}, 1)
    assert "learning_rate" in checkpoints.resume_refusal(state, "run/checkpoint.pt",
                                                dataclasses.replace(config, learning_rate=1.0), {"problems": "a"}, 1)


def test_float16_is_refused_with_the_reason(nb):
    with pytest.raises(ValueError, match="Config.dtype='float16'.*loss scaling"):
        nb.make_config("cpu-tiny", dtype="float16")


def test_temperature_applies_to_the_loss_log_probabilities(nb):
    """Responses drawn from softmax(logits / T) are scored under that same distribution by the loss."""
    torch.manual_seed(0)
    tokenizer = nb.build_char_tokenizer()
    model = nb.Qwen2ForCausalLM(nb.tiny_qwen2_config(nb.make_config("cpu-tiny"), tokenizer)).eval()
    batch = nb.build_rollout_batch([[5, 6, 7]], [[8, 9, 1]], {1}, 0)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[0, 2:5]
        expected = torch.log_softmax(logits / 0.7, -1).gather(-1, torch.tensor([[8], [9], [1]])).sum()
        got = nb.response_logprobs(model, batch, temperature=0.7)[0]
    torch.testing.assert_close(got, expected.reshape(1), rtol=1e-5, atol=1e-5)


def test_extending_a_finished_run_makes_the_refresh_its_last_step_skipped(nb, tmp_path):
    """A run's last step makes no refresh; extended, the resumed run makes it, so it matches a longer run from the
    start step for step."""
    from test_apo import TinyTraining
    settings = dict(reference_refresh_every=2, cache_dir=str(tmp_path / "cache"))
    (tmp_path / "extended").mkdir()
    (tmp_path / "fresh").mkdir()
    extended = TinyTraining(nb, tmp_path / "extended")
    assert "refresh_seconds" not in extended.train(train_steps=2, **settings)[-1]
    records = extended.train(train_steps=4, **settings)
    fresh = TinyTraining(nb, tmp_path / "fresh").train(train_steps=4, **settings)
    assert [r["step"] for r in fresh if "refresh_seconds" in r] == [2]
    assert (tmp_path / "extended" / "reference-step2").is_dir()
    for a, b in zip(records, fresh):
        assert a["reward"] == b["reward"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)
