"""The whole notebook on FrozenLake at the cpu-tiny size, a kill and resume in the middle of it, and a GRPO step on
episodes."""
import json
import math

import nbformat
import pytest
import torch

from notebook_runs import kill_after_steps, papermill_command, run_checked
from test_apo import tiny_model_and_tokenizer
from test_frozenlake_task import ScriptedPolicy, answer, lake_problem

TRAIN_STEPS = 4
OVERRIDES = dict(eval_every=2, max_turns=4, max_turn_tokens=24)


def frozenlake_command(root, name: str) -> list[str]:
    return papermill_command(str(root / f"{name}.ipynb"), str(root / name), str(root / "cache"), TRAIN_STEPS,
                             **OVERRIDES) + ["-p", "tasks", "frozenlake"]  # as text, the way a user passes it


@pytest.fixture(scope="module")
def lake_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("frozenlake")
    run_checked(frozenlake_command(root, "finished"))
    return root


def test_frozenlake_run_records_episodes(lake_run):
    notebook = nbformat.read(str(lake_run / "finished.ipynb"), as_version=4)
    assert not [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    records = [json.loads(line) for line in (lake_run / "finished" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, TRAIN_STEPS + 1))
    for record in records:
        assert 1.0 <= record["turns"] <= OVERRIDES["max_turns"] and 0.0 <= record["invalid_action_rate"] <= 1.0
        assert 0.0 <= record["accuracy/frozenlake"] <= 1.0 and math.isfinite(record["loss"])
    assert "eval_greedy_accuracy/frozenlake" in records[1]
    summary = json.loads((lake_run / "finished" / "tiny" / "summary.json").read_text())
    trained = summary["trained"]["frozenlake"]  # the last step's point is the final evaluation
    assert records[-1]["eval_greedy_accuracy/frozenlake"] == trained["greedy_accuracy"]
    assert records[-1]["eval_greedy_accuracy/frozenlake/6x6"] == trained["by_level"]["6x6"]
    for when in ("base", "trained"):
        report = summary[when]["frozenlake"]
        assert set(report["by_level"]) == {"4x4", "4x4-slippery", "6x6"}
        assert 1.0 <= report["greedy_turns"] <= OVERRIDES["max_turns"] and 0.0 <= report["invalid_action_rate"] <= 1.0
        assert 0.0 <= report["pass@1"] <= report["pass@2"] <= 1.0


def test_frozenlake_run_killed_mid_way_resumes_exactly(lake_run):
    metrics = lake_run / "killed" / "tiny" / "metrics.jsonl"
    command = frozenlake_command(lake_run, "killed")
    steps_before = kill_after_steps(command, metrics, 2)
    assert 2 <= steps_before < TRAIN_STEPS
    run_checked(command)
    resumed = [json.loads(line) for line in metrics.read_text().splitlines()]
    finished = [json.loads(line) for line in (lake_run / "finished" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == list(range(1, TRAIN_STEPS + 1))
    for a, b in zip(resumed, finished):  # the same episodes and the same updates
        assert a["reward"] == b["reward"] and a["turns"] == b["turns"] and a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def test_grpo_step_on_episodes(nb, monkeypatch):
    """GRPO trains on episodes too: groups of 4 episodes per lake, half of them reaching the goal, give
    trajectory-level advantages, and the step moves the policy."""
    model, tokenizer = tiny_model_and_tokenizer(nb)
    config = nb.make_config("cpu-tiny", tasks=["frozenlake"], algorithm="grpo", num_generations=4, prompts_per_step=2,
                            micro_batch_size=4, max_turns=3, learning_rate=1e-3)
    path = ["Down, Down", "Right, Right", "Down, Right"]
    ScriptedPolicy(nb, tokenizer, lambda turn, episode, context: answer(path[turn - 1] if episode % 2 == 0 else "Up")
                   ).install(monkeypatch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    before = [p.detach().clone() for p in model.parameters()]
    record = nb.stage2_step(model, model, tokenizer, [lake_problem(nb)] * 2, None, optimizer, config,
                            torch.device("cpu"), 1, 1)
    assert record["responses"] == 8 and record["accuracy"] == 0.5 and record["turns"] == 3
    assert record["zero_advantage_groups"] == 0.0 and record["kl"] is None and math.isfinite(record["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
