"""benchmarks/run_benchmarks.py: its arithmetic on hand-made curves, and the smoke version of every path CI runs
(this notebook's A*PO and GRPO, and TRL's two trainers when trl is installed) at the cpu-tiny size."""
import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "run_benchmarks.py"
SMOKE_ARGUMENTS = ["--size", "cpu-tiny"]  # README's benchmark command at its smallest size (tests/test_readme.py)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("run_benchmarks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def curve(name, base, points, stage1=None, per_step=1.0, memory=100.0):
    """A hand-made curve: points are (seconds, tokens, countdown, multiplication)."""
    first = {"step": 0, "seconds": stage1 or 0.0, "tokens": 0, "accuracy": base}
    return {"name": name, "kind": "x", "base": base, "stage1_seconds": stage1, "seconds_per_step": per_step,
            "peak_memory_mb": memory, "response_tokens": 10.0, "step_phases": {"generation": 0.5, "policy": 0.2},
            "points": [first] + [{"step": i + 1, "seconds": s, "tokens": t,
                                  "accuracy": {"countdown": c, "multiplication": m}}
                                 for i, (s, t, c, m) in enumerate(points)]}


BASE = {"countdown": 0.1, "multiplication": 0.3}


def test_time_to_target_needs_every_task_at_once(bench):
    run = curve("a", BASE, [(10, 100, 0.35, 0.4), (20, 200, 0.2, 0.6), (30, 300, 0.3, 0.5), (40, 400, 0.5, 0.9)])
    assert bench.time_to_target(run) == 30  # 0.3 >= 0.1 + 0.2 and 0.5 >= 0.3 + 0.2, first at 30 s
    assert bench.time_to_target(run, "tokens") == 300
    assert bench.time_to_target(curve("b", BASE, [(10, 1, 0.9, 0.49)])) is None


def test_accuracy_at_equal_clock_is_the_last_evaluation_before_it(bench):
    run = curve("a", BASE, [(10, 1, 0.2, 0.4), (20, 2, 0.3, 0.5)], stage1=5.0)
    assert bench.accuracy_at(run, 19.9) == {"countdown": 0.2, "multiplication": 0.4}
    assert bench.accuracy_at(run, 20.0) == {"countdown": 0.3, "multiplication": 0.5}
    assert bench.accuracy_at(run, 1.0) == BASE, "before stage 1 ends it is the base model"


def test_compare_and_summary_give_ratios_per_seed(bench):
    curves = []
    for seed, (apo_end, grpo_end) in enumerate(((20, 40), (30, 40))):
        curves.append(curve(f"apo-seed{seed}", BASE, [(apo_end, 1, 0.5, 0.9)], stage1=5.0, per_step=2.0, memory=90.0))
        curves.append(curve(f"grpo-seed{seed}", BASE, [(grpo_end / 2, 1, 0.2, 0.5), (grpo_end, 2, 0.5, 0.9)]))
    summary = bench.summarise(curves, [0, 1])
    ratios = summary["apo_over_grpo"]
    assert ratios["time_to_target_ratio"] == {"mean": 0.625, "min": 0.5, "max": 0.75, "n": 2}
    assert ratios["peak_memory_ratio"]["mean"] == pytest.approx(0.9)
    assert ratios["seconds_per_step_ratio"]["mean"] == 2.0
    first = summary["pairs"][0]
    assert first["equal_clock_seconds"] == 20
    assert first["apo_accuracy_at_equal_clock"]["countdown"] == 0.5
    assert first["other_accuracy_at_equal_clock"]["countdown"] == 0.2
    assert "| apo-seed0 |" in bench.markdown(curves, summary)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    command = [sys.executable, str(SCRIPT), *SMOKE_ARGUMENTS, "--out", str(out), "--artifacts", str(out / "artifacts")]
    if importlib.util.find_spec("trl") is None:
        command.append("--skip-trl")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return out, result.stdout


def test_smoke_benchmark_writes_report_and_figures(smoke):
    out, printed = smoke
    report = json.loads((out / "benchmark.json").read_text())
    names = [c["name"] for c in report["curves"]]
    assert names[:2] == ["apo-seed0", "grpo-seed0"]
    apo, grpo = report["curves"][:2]
    assert apo["kind"] == "A*PO" and grpo["kind"] == "GRPO (G=2)"
    assert apo["stage1_seconds"] > 0 and apo["stage1_cached"] is False, "stage 1 is measured, not read from cache"
    assert grpo["stage1_seconds"] == 0.0 and grpo["responses_per_step"] == 8 and apo["responses_per_step"] == 8
    for c in (apo, grpo):
        seconds = [p["seconds"] for p in c["points"]]
        assert [p["step"] for p in c["points"]] == [0, 2, 4] and seconds == sorted(seconds)
        assert {"generation", "policy", "optimizer"} <= set(c["step_phases"])
    assert apo["step_phases"]["reference"] > 0 and grpo["step_phases"]["reference"] == 0.0
    assert apo["points"][0]["tokens"] > 0 and grpo["points"][0]["tokens"] == 0, "stage 1's samples are counted"
    assert report["summary"]["pairs"][0]["apo"] == "apo-seed0"
    for name in ("accuracy_vs_time.png", "accuracy_vs_tokens.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "report.md").read_text().strip() in printed


def test_smoke_grpo_run_is_the_notebook_without_stage_1(smoke):
    out, _ = smoke
    run = out / "runs" / "grpo-seed0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["algorithm"] == "GRPO (G=2)" and summary["config"]["algorithm"] == "grpo"
    assert summary["stage1"] is None and "stage1_vstar" not in summary["stage_peak_memory_mb"]
    assert not (run / "vstar_histogram.png").exists() and (run / "training_curves.png").exists()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["kl"] is None and 0.0 <= r["zero_advantage_groups"] <= 1.0 for r in records)
    assert (run / "final_model" / "config.json").exists()


def test_smoke_trl_runs_compare_with_the_notebook(smoke):
    pytest.importorskip("trl")
    out, _ = smoke
    report = json.loads((out / "benchmark.json").read_text())
    trl = report["summary"]["trl"]
    assert set(trl) == {"trl-a2po-seed0", "trl-grpo-seed0"}
    assert trl["trl-a2po-seed0"]["trl_over_notebook_stage1"] > 0
    assert trl["trl-grpo-seed0"]["trl_over_notebook_seconds_per_step"] > 0
