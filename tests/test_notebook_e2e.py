"""The whole notebook, headless, at the cpu-tiny size: artefacts, and resuming after a kill."""
import json
import math

import nbformat
import pytest
import torch

from notebook_runs import kill_after_steps, papermill_command, run_checked

TRAIN_STEPS = 8
REFRESH_EVERY = 3  # the reference is refreshed at steps 3 and 6, so the killed run below resumes past a refresh
SEARCH = dict(search_budgets=[1, 2], search_k=2)  # tiny test-time search (cpu-tiny: 4 problems a level)
METRIC_KEYS = {"step", "reward", "accuracy", "loss", "advantage", "kl", "entropy", "response_tokens", "step_seconds",
               "tokens_per_second", "peak_memory_mb", "grad_norm", "lr"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    executed = str(root / "executed.ipynb")
    run_checked(papermill_command(executed, str(root / "results"), str(root / "cache"), TRAIN_STEPS,
                                  reference_refresh_every=REFRESH_EVERY, **SEARCH))
    return {"root": root, "run_dir": root / "results" / "tiny", "executed": executed}


def test_whole_notebook_runs_headless(finished_run):  # its time is no test's business: these machines are noisy
    notebook = nbformat.read(finished_run["executed"], as_version=4)
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in notebook.cells)


def test_metrics_are_complete_and_finite(finished_run):
    lines = (finished_run["run_dir"] / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == list(range(1, TRAIN_STEPS + 1))
    assert [r["step"] for r in records if "refresh_seconds" in r] == [3, 6]
    for record in records:
        assert METRIC_KEYS <= record.keys()
        assert all(math.isfinite(v) for v in record.values() if isinstance(v, float))
        assert 0.0 <= record["accuracy"] <= record["reward"] + 1e-9 or record["accuracy"] == 0.0
        for task in ("countdown", "multiplication"):
            accuracy, length = record[f"accuracy/{task}"], record[f"response_tokens/{task}"]
            assert (accuracy is None) == (length is None)
            assert accuracy is None or (0.0 <= accuracy <= 1.0 and 1.0 <= length <= 48.0)
    assert all(f"eval_greedy_accuracy/{t}" in records[3] for t in ("countdown", "multiplication"))


def test_summary_plots_and_model_are_well_formed(finished_run):
    run_dir = finished_run["run_dir"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["preset"] == "cpu-tiny" and summary["seed"] == 0 and summary["steps"] == TRAIN_STEPS
    assert set(summary["stage_seconds"]) == {"stage0_build", "base_eval", "stage1_vstar", "stage2_train",
                                             "reference_refresh"}
    assert summary["reference_refreshes"] == [3, 6] and summary["stage_seconds"]["reference_refresh"] > 0
    assert sorted(p.name for p in run_dir.glob("reference-step*")) == ["reference-step6"], "older ones pruned"
    assert summary["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # what its floats ran on
    assert summary["machine"]["cpu"] and summary["machine"]["gpu"] is None
    peaks = summary["stage_peak_memory_mb"]
    assert list(peaks) == ["stage0_build", "base_eval", "stage1_vstar", "stage2_train", "final_eval"]
    assert all(peak > 0 for peak in peaks.values()) and summary["peak_memory_mb"] == max(peaks.values())
    for when in ("base", "trained"):
        for task in ("countdown", "multiplication"):
            report = summary[when][task]
            assert 0.0 <= report["greedy_accuracy"] <= 1.0 and 0.0 <= report["pass@1"] <= report["pass@2"] <= 1.0
            assert set(report["by_level"]) >= {"3x9"} or set(report["by_level"]) >= {"3x1"}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval_greedy_accuracy/countdown" in r] == [4, 8]
    assert "eval_seconds" in records[3] and "eval_seconds" not in records[-1], "the last step is evaluated once, after"
    for task in ("countdown", "multiplication"):
        assert records[-1][f"eval_greedy_accuracy/{task}"] == summary["trained"][task]["greedy_accuracy"]
    for name in ("training_curves.png", "vstar_histogram.png"):
        data = (run_dir / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(run_dir / "final_model")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "final_model")
    assert model.config.model_type == "qwen2" and tokenizer.eos_token == "<|endoftext|>"


def test_killed_run_resumes_without_lost_or_repeated_steps(finished_run):
    root = finished_run["root"]
    output_dir, executed = str(root / "killed"), str(root / "killed.ipynb")
    metrics = root / "killed" / "tiny" / "metrics.jsonl"
    command = papermill_command(executed, output_dir, str(root / "cache"), TRAIN_STEPS,  # stage 0, V* from the cache
                                reference_refresh_every=REFRESH_EVERY)
    steps_before = kill_after_steps(command, metrics, 5)
    assert 5 <= steps_before < TRAIN_STEPS, "the kill should land after the first refresh, before the end"
    import torch
    checkpoint = torch.load(root / "killed" / "tiny" / "checkpoint.pt", weights_only=False, mmap=True)
    latest_refresh = checkpoint["step"] // REFRESH_EVERY * REFRESH_EVERY
    assert checkpoint["step"] >= 4 and checkpoint["reference"]["dir"] == f"reference-step{latest_refresh}"
    assert len(checkpoint["reference"]["vstar"]) == 32  # V* of the refreshed reference, one per training prompt

    run_checked(command)
    notebook = nbformat.read(executed, as_version=4)
    printed = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "resuming from step" in printed
    resumed = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in resumed] == list(range(1, TRAIN_STEPS + 1))
    reference = [json.loads(line) for line in (finished_run["run_dir"] / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(resumed, reference):  # exact resume: same data, same samples, same updates
        assert a["reward"] == pytest.approx(b["reward"]) and a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def test_search_compares_every_method_at_every_budget(finished_run):
    run_dir = finished_run["run_dir"]
    report = json.loads((run_dir / "search.json").read_text())
    assert set(report) == {"countdown 3x9", "countdown 3x20", "multiplication 2x1", "multiplication 3x1",
                           "multiplication 2x2"}  # every level of the accuracy-by-difficulty table
    for panel, by_model in report.items():
        assert set(by_model) == {"base", "trained"}
        for result in by_model.values():
            head = result["value_head"]
            assert head["examples"] > 0 and math.isfinite(head["held_out_mse"]) and head["mean_response_tokens"] > 0
            rows = {(r["method"], r["budget_multiple"]): r for r in result["rows"]}
            assert set(rows) == {("greedy", 1), ("one sample", 1)} | {
                (method, multiple) for method in ("best-of-n by value", "oracle pass@n", "A* search") for multiple in (1, 2)}
            for multiple in (1, 2):
                assert rows[("A* search", multiple)]["mean_sampled_tokens"] <= round(multiple * head["mean_response_tokens"])
                assert rows[("oracle pass@n", multiple)]["accuracy"] >= rows[("best-of-n by value", multiple)]["accuracy"]
    for name in ("search.png", "search_calibration.png"):
        data = (run_dir / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
