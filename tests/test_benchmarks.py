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


def curve(name, base, points, stage1=None, per_step=1.0, memory=100.0, family="x", seed=0):
    """A hand-made curve: points are (seconds, tokens, countdown, multiplication)."""
    first = {"step": 0, "seconds": stage1 or 0.0, "tokens": 0, "accuracy": base}
    return {"name": f"{name}-seed{seed}", "setting": name, "family": family, "seed": seed, "kind": "x", "base": base,
            "stage1_seconds": stage1, "seconds_per_step": per_step, "peak_memory_mb": memory, "response_tokens": 10.0,
            "step_phases": {"generation": 0.5, "policy": 0.2},
            "points": [first] + [{"step": i + 1, "seconds": s, "tokens": t,
                                  "accuracy": {"countdown": c, "multiplication": m}}
                                 for i, (s, t, c, m) in enumerate(points)]}


BASE = {"countdown": 0.1, "multiplication": 0.3}


def test_time_to_target_needs_every_task_at_once_and_interpolates_the_crossing(bench):
    run = curve("a", BASE, [(10, 100, 0.35, 0.4), (20, 200, 0.2, 0.6), (30, 300, 0.3, 0.5), (40, 400, 0.5, 0.9)])
    assert bench.time_to_target(run) == 30  # 0.3 >= 0.1 + 0.2 and 0.5 >= 0.3 + 0.2, first at 30 s
    assert bench.time_to_target(run, "tokens") == 300
    assert bench.time_to_target(curve("b", BASE, [(10, 1, 0.9, 0.49)])) is None
    # countdown from 0.1 (base, at the end of a 10 s stage 1) to 0.5 at 30 s: 0.3 is crossed halfway, at 20 s
    rising = curve("c", BASE, [(30, 3, 0.5, 0.3)], stage1=10.0)
    assert bench.crossing(rising, ("countdown",), 0.2) == pytest.approx(20.0)
    assert bench.crossing(rising, ("countdown",), 0.1) == pytest.approx(15.0)
    assert bench.crossing(rising, ("countdown", "multiplication"), 0.1) is None
    # both tasks: the later of the two crossings between the same two evaluations
    both = curve("d", BASE, [(10, 1, 0.2, 0.4), (20, 2, 0.4, 0.8)])
    assert bench.crossing(both, bench.TASKS, 0.2) == pytest.approx(15.0)  # countdown at 15 s, multiplication at 12.5 s


def test_frontier_picks_each_familys_setting_per_target_and_reports_every_seed(bench):
    fast_then_falls = [(5, 1, 0.4, 0.3), (10, 2, 0.15, 0.3)]  # reaches +0.30 at once, holds only +0.05
    slow_and_holds = [(20, 1, 0.3, 0.3), (40, 2, 0.45, 0.3)]
    curves = [curve("g-fast", BASE, fast_then_falls, family="GRPO"),
              curve("g-slow", BASE, [(15, 1, 0.3, 0.3), (30, 2, 0.3, 0.3)], family="GRPO"),
              curve("apo", BASE, slow_and_holds, stage1=10.0, family="A*PO"),
              curve("apo", BASE, [(30, 1, 0.2, 0.3), (60, 2, 0.3, 0.3)], stage1=10.0, family="A*PO", seed=1)]
    assert bench.targets(curves, ("countdown",)) == [0.1, 0.15, 0.2, 0.25, 0.3, 0.35]  # 0.45 - 0.1
    assert bench.targets(curves, bench.TASKS) == [], "multiplication never moves"
    assert bench.pick(curves[:2], "GRPO", ("countdown",), 0.1) == "g-slow", "g-fast does not hold +0.10"
    rows = {row["gain"]: row for row in bench.frontier(curves, 0, [0, 1]) if row["view"] == "countdown"}
    assert rows[0.2]["target"] == {"countdown": 0.3}
    apo = rows[0.2]["families"]["A*PO"]
    assert apo["setting"] == "apo" and apo["seeds"] == [0, 1] and apo["seconds"] == [pytest.approx(20.0), 60.0]
    assert apo["spread"]["mean"] == pytest.approx(40.0)
    assert rows[0.3]["families"]["A*PO"]["seconds"] == [pytest.approx(20 + 20 * 2 / 3), None]  # 0.3 -> 0.45
    grpo = rows[0.3]["families"]["GRPO"]
    assert grpo["setting"] is None and grpo["reached_by_any"], "g-fast reached +0.30 and fell back"
    table = bench.frontier_markdown(list(rows.values()))
    assert "reached, not held" in table and "1 of 2 seeds never" in table


def test_settings_table_gives_each_setting_over_its_seeds(bench):
    curves = [curve("apo", BASE, [(20, 1, 0.3, 0.5)], stage1=10.0, seed=0),
              curve("apo", BASE, [(40, 1, 0.5, 0.45)], stage1=20.0, seed=1)]
    row = next(line for line in bench.settings_markdown(curves).splitlines() if line.startswith("| apo |"))
    cells = [cell.strip() for cell in row.split("|")[1:-1]]
    assert cells[1] == "2" and cells[2] == "15.00 (10.00-20.00, n=2)" and cells[4].startswith("0.40 (0.30-0.50")
    assert cells[6] == "20.00 (20.00-20.00, n=1) (1 of 2)", "seed 0 reaches both at 20 s, seed 1 never multiplication"


def test_accuracy_at_equal_clock_is_the_last_evaluation_before_it(bench):
    run = curve("a", BASE, [(10, 1, 0.2, 0.4), (20, 2, 0.3, 0.5)], stage1=5.0)
    assert bench.accuracy_at(run, 19.9) == {"countdown": 0.2, "multiplication": 0.4}
    assert bench.accuracy_at(run, 20.0) == {"countdown": 0.3, "multiplication": 0.5}
    assert bench.accuracy_at(run, 1.0) == BASE, "before stage 1 ends it is the base model"


def test_compare_and_summary_give_ratios_per_seed(bench):
    curves = []
    for seed, (apo_end, grpo_end) in enumerate(((20, 40), (30, 40))):
        curves.append(curve("apo", BASE, [(apo_end, 1, 0.5, 0.9)], stage1=5.0, per_step=2.0, memory=90.0, seed=seed))
        curves.append(curve("grpo", BASE, [(grpo_end / 2, 1, 0.2, 0.5), (grpo_end, 2, 0.5, 0.9)], seed=seed))
    summary = bench.summarise(curves, [0, 1], ("apo", "grpo"))
    ratios = summary["apo_over_grpo"]
    # A*PO crosses countdown 0.3 at 5 + (apo_end - 5) * 0.2 / 0.4 s; GRPO at grpo_end / 2 + grpo_end / 2 * 0.1 / 0.3
    apo_times = [5 + (end - 5) / 2 for end in (20, 30)]
    grpo_time = 20 + 20 / 3
    assert ratios["time_to_target_ratio"]["mean"] == pytest.approx(sum(apo_times) / 2 / grpo_time)
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
    assert names[:3] == ["apo-lr0.0003-seed0", "grpo-lr0.0003-p4-g2-seed0", "grpo-lr0.0003-p8-g2-seed0"]
    apo, grpo, same_prompts = report["curves"][:3]
    assert apo["kind"] == "A*PO" and grpo["kind"] == same_prompts["kind"] == "GRPO (G=2)"
    assert apo["stage1_seconds"] > 0 and apo["stage1_cached"] is False, "stage 1 is measured, not read from cache"
    assert grpo["stage1_seconds"] == 0.0 and grpo["responses_per_step"] == 8 and apo["responses_per_step"] == 8
    assert same_prompts["responses_per_step"] == 16, "A*PO's 8 prompts, 2 responses each"
    for c in (apo, grpo, same_prompts):
        seconds = [p["seconds"] for p in c["points"]]
        assert [p["step"] for p in c["points"]] == [0, 2, 4] and seconds == sorted(seconds)
        assert {"generation", "policy", "optimizer"} <= set(c["step_phases"])
    assert apo["step_phases"]["reference"] > 0 and grpo["step_phases"]["reference"] == 0.0
    assert apo["points"][0]["tokens"] > 0 and grpo["points"][0]["tokens"] == 0, "stage 1's samples are counted"
    assert report["summary"]["pairs"][0]["apo"] == "apo-lr0.0003-seed0"
    views = {row["view"] for row in report["frontier"]}
    assert views <= {"countdown", "multiplication", "both"}
    for row in report["frontier"]:
        assert set(row["families"]) == {"A*PO", "GRPO, same responses per step", "GRPO, same prompts per step"}
    assert (out / "frontier.md").read_text().strip() in printed
    for name in ("accuracy_vs_time.png", "accuracy_vs_tokens.png", "frontier.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "report.md").read_text().strip() in printed


def test_smoke_grpo_run_is_the_notebook_without_stage_1(smoke):
    out, _ = smoke
    run = out / "runs" / "grpo-lr0.0003-p4-g2-seed0"
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


def test_trl_ratio_tool_tabulates_the_smoke_runs_without_running_them_again(smoke):
    """tools/trl_ratio.py (the benchmark's TRL part alone) on the smoke benchmark's folder: its four runs are there
    already, so it runs nothing and reports TRL's stage 1 and seconds per step over the notebook's."""
    pytest.importorskip("trl")
    out, _ = smoke
    tool = SCRIPT.parent.parent / "tools" / "trl_ratio.py"
    result = subprocess.run([sys.executable, str(tool), "--size", "cpu-tiny", "--out", str(out), "--artifacts",
                             str(out / "artifacts")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    report = json.loads((out / "trl_ratio.json").read_text())
    assert set(report["runs"]) == {"apo-lr0.0003-seed0", "grpo-lr0.0003-p4-g2-seed0", "trl-a2po-seed0",
                                   "trl-grpo-seed0"}
    assert "] apo-lr0.0003-seed0:" not in result.stdout and "] trl-a2po-seed0:" not in result.stdout, "nothing reruns"
    a2po = report["trl_over_notebook"]["trl-a2po-seed0"]
    assert a2po["trl_over_notebook_stage1"] > 0 and a2po["trl_over_notebook_seconds_per_step"] > 0
    assert report["trl_over_notebook"]["trl-grpo-seed0"]["trl_over_notebook_seconds_per_step"] > 0


def test_trl_runs_turn_off_what_trl_has_no_counterpart_for(bench, tmp_path, monkeypatch):
    """The `cpu` preset draws stage 1 adaptively, which the TRL driver refuses: its TRL runs ask for plain N. The
    driver is asked in a subprocess: importing trl here would import trackio before tests/test_trackers.py sets its
    folder."""
    pytest.importorskip("trl")
    commands = []
    monkeypatch.setattr(bench, "run_logged", lambda name, command, out: commands.append(command))
    size = bench.SIZES["cpu"]
    bench.run_trl("a2po", size, 0, {"learning_rate": 1e-4}, tmp_path, tmp_path / "cache")
    overrides = json.loads(commands[0][commands[0].index("--overrides") + 1])
    assert overrides["learning_rate"] == 1e-4
    check = ("import json, sys; sys.path[:0] = ['benchmarks', 'tests']; from trl_driver import unsupported_settings; "
             "from notebook_module import load_notebook_module; nb = load_notebook_module(); "
             f"print(json.dumps([unsupported_settings(nb.make_config({size['preset']!r}, **o)) "
             f"for o in ({{}}, json.loads(sys.argv[1]))]))")
    result = subprocess.run([sys.executable, "-c", check, json.dumps(overrides)], cwd=SCRIPT.parent.parent,
                            capture_output=True, text=True, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [["adaptive_min_samples"], []]
