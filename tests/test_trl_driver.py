"""benchmarks/trl_driver.py runs TRL's A2PO and GRPO on a tiny notebook setup and reports consistent figures."""
import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("trl")

DRIVER = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "trl_driver.py"
OVERRIDES = {"train_steps": 3, "eval_every": 2}


def load_driver():
    spec = importlib.util.spec_from_file_location("trl_driver", DRIVER)
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    return driver


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Both trainers' reports at cpu-tiny, sharing one cache so the base model is built once."""
    folder = tmp_path_factory.mktemp("trl")
    reports = {}
    for trainer in ("a2po", "grpo"):
        out = folder / f"{trainer}.json"
        result = subprocess.run([sys.executable, str(DRIVER), "--trainer", trainer, "--preset", "cpu-tiny",
                                 "--cache-dir", str(folder / "cache"), "--overrides", json.dumps(OVERRIDES),
                                 "--num-generations", "2", "--out", str(out)],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        reports[trainer] = json.loads(out.read_text())
    return reports


@pytest.mark.parametrize("trainer", ["a2po", "grpo"])
def test_driver_reports_steps_evaluations_and_memory(reports, trainer):
    report = reports[trainer]
    assert report["trainer"] == trainer and report["preset"] == "cpu-tiny" and report["overrides"] == OVERRIDES
    assert report["settings"]["max_steps"] == 3 and report["unmatched"]
    assert [s["step"] for s in report["steps"]] == [1, 2, 3]
    for step in report["steps"]:
        assert step["seconds"] > 0 and 0.0 <= step["reward"] <= 1.0
        assert 1 <= step["response_tokens"] <= 48  # cpu-tiny's max_new_tokens
        phases = step["phases"]
        assert phases["generation"] > 0 and phases["scoring"] > 0 and phases["rest"] > 0
        assert sum(phases.values()) == pytest.approx(step["seconds"])
        assert ("reference" in phases) == (trainer == "a2po")  # GRPO with beta 0 has no reference pass
    if trainer == "a2po":
        assert report["stage1_seconds"] > 0 and "num_generations" not in report
        assert report["settings"]["per_device_train_batch_size"] == 8  # cpu-tiny's prompts_per_step
    else:
        assert report["stage1_seconds"] is None and report["num_generations"] == 2
        assert report["settings"]["per_device_train_batch_size"] == 8 * 2  # TRL counts completions
    assert [e["step"] for e in report["evals"]] == [2, 3]  # every eval_every steps, and at the last
    seconds = [e["train_seconds"] for e in report["evals"]]
    assert 0 < seconds[0] < seconds[1]
    assert seconds[1] == pytest.approx((report["stage1_seconds"] or 0.0) + sum(s["seconds"] for s in report["steps"]))
    for evaluation in report["evals"]:
        assert set(evaluation["accuracy"]) == {"countdown", "multiplication"}
        assert all(0.0 <= a <= 1.0 for a in evaluation["accuracy"].values())
    assert report["peak_memory_mb"] > 0 and report["total_seconds"] > seconds[1]
    assert report["vllm_imported"] is False  # TRL would import it (installed for the notebook), unused, into its memory


def test_reward_is_the_notebooks_and_prompts_stay_raw_text(nb):
    from trl.data_utils import maybe_apply_chat_template

    driver = load_driver()
    config = nb.make_config("cpu-tiny")
    splits = nb.build_datasets(config)
    problems = [splits["countdown"]["train"][0], splits["multiplication"]["train"][0]]
    countdown, multiplication = problems
    a, b = multiplication.numbers
    completions = [(0, f" ok </think> <answer> {countdown.solution} </answer>"),  # correct
                   (0, f" </think> <answer> {'+'.join(map(str, countdown.numbers))}+1 </answer>"),  # well-formed, wrong
                   (1, f" </think> <answer> {a * b} </answer>"), (1, f" </think> <answer> {a * b + 1} </answer>"),
                   (1, " </think> no answer here")]  # malformed
    reward = driver.make_reward_function(nb.reward_for, problems, config.format_score)
    indices, texts = zip(*completions)
    rewards = reward(prompts=[""] * len(texts), completions=list(texts), problem_index=list(indices), trainer_state=None)
    assert rewards == [nb.reward_for(problems[i], text, config.format_score) for i, text in completions]
    assert rewards == [1.0, config.format_score, 1.0, config.format_score, 0.0]

    tokenizer = nb.build_char_tokenizer()
    dataset = driver.training_dataset(nb.prompt_for, problems, config)
    for row, problem in zip(dataset, problems):
        assert row["prompt"] == nb.prompt_for(problem, config)
        assert maybe_apply_chat_template(row, tokenizer)["prompt"] == row["prompt"]  # no chat template applied
