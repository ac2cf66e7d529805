"""The tools in tools/ run on a tiny base model and report consistent figures."""
import importlib.util
import json
import pathlib
import random
import subprocess
import sys
import types

import pytest
import torch

TOOL = pathlib.Path(__file__).resolve().parent.parent / "tools" / "base_model_modes.py"


def test_base_model_modes_reports_each_task(tmp_path):
    result = subprocess.run([sys.executable, str(TOOL), "--preset", "cpu-tiny", "--samples", "2",
                             "--cache-dir", str(tmp_path), "--set", "base_pretrain_steps=20"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["overrides"] == {"base_pretrain_steps": 20}
    with open(TOOL.parent.parent / report["base_model"] / "stage0.json") as f:
        assert json.load(f)["steps"] == 20  # the override shaped the base model that was measured
    for task in ("countdown", "multiplication"):
        figures = report[task]
        assert figures["problems"] == 16
        for name, value in figures.items():
            assert 0.0 <= value <= 1.0 or name == "problems"
        sampled_accuracy = figures["correct_mass_reasoning"] + figures["correct_mass_direct"]
        mixed = (figures["sampled_reasoning_share"] * figures["sampled_reasoning_accuracy"]
                 + (1 - figures["sampled_reasoning_share"]) * figures["sampled_direct_accuracy"])
        assert abs(sampled_accuracy - mixed) < 1e-9


def load_tool(name: str = "base_model_modes"):
    sys.path.insert(0, str(TOOL.parent))  # as when run as a script: the tools import their shared module
    spec = importlib.util.spec_from_file_location(name, TOOL.parent / f"{name}.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_repeated_attempts_are_detected():
    tool = load_tool()
    assert tool.repeats_an_attempt(" (7-1)+1: 7-1=6, 6+1=7 vs 8 no. (7-1)+1: 7-1=6, 6+1=7 vs 8 no. (7-1")
    assert not tool.repeats_an_attempt(" (7-1)+1: 7-1=6, 6+1=7 vs 8 no. (7+1)*1: 7+1=8, 8*1=8 vs 8 yes. "
                                       "</think> <answer> (7+1)*1 </answer>")
    assert not tool.repeats_an_attempt(" 20*4=80, 3*4=12, 80+12=92 </think> <answer> 92 </answer>")
    assert not tool.repeats_an_attempt(" </think> <answer> 7 </answer>. 7. 7.")  # only the reasoning counts


def test_overrides_are_read_as_literals_and_bad_ones_are_named(tmp_path):
    tool = load_tool()
    assert tool.config_override("base_think_fraction=0.3") == ("base_think_fraction", 0.3)
    assert tool.config_override("base_countdown_levels=('3x9',)") == ("base_countdown_levels", ("3x9",))
    assert tool.config_override("prompt_template=compact") == ("prompt_template", "compact")
    with pytest.raises(Exception, match="FIELD=VALUE"):
        tool.config_override("base_think_fraction")
    result = subprocess.run([sys.executable, str(TOOL), "--preset", "cpu-tiny", "--cache-dir", str(tmp_path),
                             "--set", "base_thinking=0.3"], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "base_thinking" in result.stderr


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """One cache of stage 0 models for the tools below: the cpu-tiny base model is built once."""
    return tmp_path_factory.mktemp("tiny-cache")


def test_generation_benchmark_reports_every_sampler_and_the_limits(tiny_cache):
    """tools/bench_generation.py runs end to end; its ratios are measurements, so only their form is checked."""
    bench = TOOL.parent / "bench_generation.py"
    result = subprocess.run([sys.executable, str(bench), "--preset", "cpu-tiny", "--prompts", "4", "--with-generate",
                             "--stage1-rounds", "2", "--cache-dir", str(tiny_cache)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["responses"] == 2 * 4 * 4  # two tasks, 4 prompts each, cpu-tiny's N = 4 samples
    others = ["batch_by_batch", "previous_79e8044", "transformers_generate"]
    for name in ["refill"] + others:
        assert report[name]["seconds"] > 0
        assert 1 <= report[name]["mean_response_tokens"] <= report["max_new_tokens"]
    assert report["refill"]["decode_steps"] <= report["batch_by_batch"]["decode_steps"]
    for name in others:
        assert report["speedup_over"][name] == pytest.approx(report[name]["seconds"] / report["refill"]["seconds"],
                                                             rel=0.05)
    assert 0 < report["limits"]["share_of_best_matmul_throughput"] and report["limits"]["flops_per_token"] > 0
    assert report["attention_share"]["attention_calls"] >= report["refill"]["decode_steps"]  # every layer's, timed
    stage1 = report["stage1"]  # stage 1 whole: N samples for every prompt then and now, and the preset's way
    for name in ("previous_79e8044_full", "now_full"):
        assert stage1[name]["samples"] == report["responses"]
        assert len(stage1[name]["rounds"]) == 2 and stage1[name]["seconds"] == max(stage1[name]["rounds"])
    assert stage1["now_preset"]["samples"] <= report["responses"]
    assert stage1["speedup_over_previous"]["now_full"] == pytest.approx(
        stage1["previous_79e8044_full"]["seconds"] / stage1["now_full"]["seconds"], rel=0.05)


def test_episode_benchmark_times_both_revisions_on_the_same_episodes(tiny_cache, tmp_path):
    """tools/bench_episodes.py runs end to end on FrozenLake: both revisions play every kind of work on the same
    lakes; the ratios are measurements, so only their form is checked."""
    output = tmp_path / "bench_episodes.json"
    result = subprocess.run([sys.executable, str(TOOL.parent / "bench_episodes.py"), "--preset", "cpu-tiny", "--lakes",
                             "2", "--rounds", "1", "--cache-dir", str(tiny_cache), "--output", str(output)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(output.read_text())
    for kind, episodes in (("greedy", 2), ("reference", 1 * 4), ("stage2_batch", 8)):  # cpu-tiny: N = 4, 8 a step
        now, previous = report[kind]["now"], report[kind]["previous_3f41027"]
        assert now["episodes"] == previous["episodes"] == episodes
        assert now["policy_tokens"] > 0 and len(now["rounds"]) == 1 and now["seconds"] > 0
        assert report[kind]["speedup"] == pytest.approx(previous["seconds"] / now["seconds"], rel=0.05)


def test_vstar_error_compares_cheaper_stage_1_estimates_with_the_full_one(tiny_cache):
    """tools/vstar_error.py at cpu-tiny: each estimate's samples follow from its rule; the full estimate of
    sampling seed 0 is the reference, so its own change is 0."""
    result = subprocess.run([sys.executable, str(TOOL.parent / "vstar_error.py"), "--preset", "cpu-tiny", "--prompts",
                             "3", "--floor-seeds", "1", "--cache-dir", str(tiny_cache)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    prompts, estimates = report["prompts"], report["estimates"]
    full = [name for name in estimates if name.startswith("N=") and "seed" in name]
    n = int(full[0].split("=")[1].split(",")[0])
    assert len(full) == 2 and estimates[full[0]]["mean_abs_change"] == 0.0
    assert estimates[full[1]]["samples"] == prompts * n and estimates[f"N={n // 2}"]["samples"] == prompts * n // 2
    adaptive = [e for name, e in estimates.items() if name.startswith("adaptive")]
    assert adaptive and all(prompts * 2 <= e["samples"] <= prompts * n for e in adaptive)
    assert all(0.0 <= e["mean_vstar"] <= 1.0 and e["seconds"] > 0 for e in estimates.values())


def test_stage1_accuracy_tabulates_each_variant_over_its_seeds():
    tool = load_tool("stage1_accuracy")
    def curve(seed, last):
        points = [{"tokens": 100, "accuracy": {"countdown": 0.3, "multiplication": 0.2}},
                  {"tokens": 200, "accuracy": {"countdown": 0.6, "multiplication": 0.5}},
                  {"tokens": 300, "accuracy": {"countdown": last, "multiplication": 0.4}}]
        return {"seed": seed, "stage1_seconds": 10.0 + seed, "points": points}
    rows = [tool.outcome(curve(0, 0.5)), tool.outcome(curve(1, 0.7))]
    assert rows[0] == {"seed": 0, "stage1_seconds": 10.0, "stage1_tokens": 100,
                       "last": {"countdown": 0.5, "multiplication": 0.4},
                       "best": {"countdown": 0.6, "multiplication": 0.5}}
    lines = tool.table({tool.FULL: rows}).splitlines()
    assert lines[0].startswith("| stage 1 | seeds | stage 1 seconds | countdown last | countdown best |")
    assert lines[2] == (f"| {tool.FULL} | 0, 1 | 10.5 | 0.600 (0.500-0.700) | 0.650 (0.600-0.700) | "
                        "0.400 (0.400-0.400) | 0.500 (0.500-0.500) |")


def test_stage1_accuracy_needs_the_benchmarks_runs_and_says_so(tmp_path):
    result = subprocess.run([sys.executable, str(TOOL.parent / "stage1_accuracy.py"), "--size", "cpu-tiny",
                             "--benchmark", str(tmp_path / "none"), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "no finished apo-lr0.0003 run for seeds [0]" in result.stderr
    assert "run_benchmarks.py --size cpu-tiny" in result.stderr
    assert not (tmp_path / "out").exists()  # nothing is run before the check


class EchoModel(torch.nn.Module):
    """Guesses each next token from the sequence itself (a perfect reader), or always `fixed` when given."""

    def __init__(self, vocab_size: int, fixed: int | None = None):
        super().__init__()
        self.vocab_size, self.fixed = vocab_size, fixed

    def forward(self, ids):
        following = torch.cat([ids[:, 1:], ids[:, -1:]], dim=1) if self.fixed is None else torch.full_like(ids, self.fixed)
        return types.SimpleNamespace(logits=torch.nn.functional.one_hot(following, self.vocab_size).float())


@pytest.mark.parametrize("reasoning", ["checks", "neighbours"])
def test_the_frozenlake_probe_scores_each_token_that_needs_the_lake(nb, reasoning):
    probe = load_tool("frozenlake_probe")
    config = nb.make_config("cpu-tiny", tasks=["frozenlake"], base_frozenlake_reasoning=reasoning)
    tokenizer = nb.build_char_tokenizer()
    lakes = nb.build_datasets(config)["frozenlake"]["by_level"]["6x6"][:6]
    perfect = [answer for lake in lakes for answer in probe.probe_lake(nb, EchoModel(len(tokenizer)), tokenizer, lake, config)]
    assert {asked for asked, _ in perfect} >= {"position", "Down _", "Right _", "Up _", "Left _"} - \
        ({"Up _", "Left _"} if reasoning == "checks" else set())  # 6x6 goals lie down and right
    assert sum(asked == "position" for asked, _ in perfect) == 6 and all(right for _, right in perfect)
    assert any(asked.endswith(" O") for asked, _ in perfect)  # holes are asked about
    if reasoning == "neighbours":  # the position, four tiles and the move made, on every lake
        assert len(perfect) == 6 * 6
    ice = tokenizer.convert_tokens_to_ids("_")
    always_ice = [answer for lake in lakes for answer in probe.probe_lake(nb, EchoModel(len(tokenizer), ice), tokenizer, lake, config)]
    assert all(right == asked.endswith(" _") for asked, right in always_ice)
    neighbours = nb.dataclasses.replace(config, base_frozenlake_reasoning="neighbours")
    chances = [c for lake in lakes for c in probe.hole_probabilities(nb, EchoModel(len(tokenizer)), tokenizer, lake, neighbours)]
    assert {truth for truth, _ in chances} == {"_", "O"}
    assert min(c for truth, c in chances if truth == "O") > max(c for truth, c in chances if truth == "_")
    blind = [c for lake in lakes for c in probe.hole_probabilities(nb, EchoModel(len(tokenizer), ice), tokenizer, lake,
                                                                     neighbours)]
    assert len({chance for _, chance in blind}) == 1  # a model that does not read the lake: the same everywhere


def test_the_frozenlake_probe_reports_every_level(tiny_cache):
    result = subprocess.run([sys.executable, str(TOOL.parent / "frozenlake_probe.py"), "--preset", "cpu-tiny", "--lakes",
                             "3", "--cache-dir", str(tiny_cache)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert sorted(report["levels"]) == ["4x4", "4x4-slippery", "6x6"]
    for figures in report["levels"].values():
        assert figures["lakes"] == 3 and figures["count"]["position"] == 3
        assert sum(n for asked, n in figures["count"].items() if asked != "position") == 5 * 3  # four tiles, a move
        assert all(0.0 <= value <= 1.0 for value in figures["accuracy"].values())
        assert all(0.0 <= value <= 1.0 for value in figures["hole_probability"].values())
    saved = TOOL.parent.parent / report["model"]  # the same model given as a saved folder: the same figures
    again = subprocess.run([sys.executable, str(TOOL.parent / "frozenlake_probe.py"), "--preset", "cpu-tiny", "--lakes",
                            "3", "--model", str(saved)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["levels"] == report["levels"]


def test_a_lookup_drill_is_one_worked_turn_on_the_problems_lake_or_a_fresh_one(nb):
    trial = load_tool("frozenlake_lookup_trial")
    config = nb.make_config("cpu-tiny", tasks=["frozenlake"])
    problems = nb.build_datasets(config)["frozenlake"]["by_level"]["4x4"][:8]
    for problem in problems:
        own = trial.drill(nb, problem, config, random.Random(0), None, set())
        assert own.startswith(nb.format_prompt(problem, config.prompt_template))
        assert own.count("<think>") == own.count("</answer>") == 1  # one turn, no observation after it
        fresh = trial.drill(nb, problem, config, random.Random(1), 0.6, set())
        grid = fresh.split("\n")[1:5]
        assert len(grid) == 4 and all(len(row) == 4 for row in grid) and sum(row.count("P") for row in grid) == 1
        assert fresh != own
    drills = [trial.drill(nb, problems[0], config, random.Random(seed), 0.5, set()) for seed in range(60)]
    grids = [text.split("Assistant")[0] for text in drills if text is not None]  # None: no route from the start
    assert len(grids) >= 20
    holes = sum(grid.count("O") for grid in grids)
    assert 0.3 < holes / (16 * len(grids)) < 0.7  # tiles are holes with about the chance asked
    first = next(text for text in drills if text is not None)
    seed = drills.index(first)
    grid = first.split("\n")[1:5]
    key = ("frozenlake", tuple(row.replace("P", "S").replace("_", "F").replace("O", "H") for row in grid))
    assert trial.drill(nb, problems[0], config, random.Random(seed), 0.5, {key}) != first  # held out: drawn again


def test_lookup_drills_take_an_episodes_place_or_follow_it(nb, monkeypatch):
    trial = load_tool("frozenlake_lookup_trial")
    config = nb.make_config("cpu-tiny", tasks=["frozenlake"])
    problem = nb.build_datasets(config)["frozenlake"]["by_level"]["4x4"][0]
    played = nb.frozenlake_document
    drill = trial.drill(nb, problem, config, random.Random(0), None, set())  # on its own lake: draws nothing
    rng = random.Random(0)
    rng.random()  # the draw that chose a drill
    episode = played(problem, config, rng)
    monkeypatch.setattr(nb, "tiny_qwen2_config", nb.tiny_qwen2_config)  # put back after the test
    for beside in (False, True):
        monkeypatch.setattr(nb, "frozenlake_document", played)  # each trial patches the notebook's own
        trial.patched_recipe(nb, 1.0, None, None, set(), beside=beside)
        text = nb.frozenlake_document(problem, config, random.Random(0))
        assert text == (episode + nb.EOS_TOKEN + drill if beside else drill)  # EOS between, as between documents
    assert episode.count("</answer>") > 1 and drill.count("</answer>") == 1


def test_a_lookup_weight_weighs_only_the_tiles_a_worked_turn_reads(nb):
    trial = load_tool("frozenlake_lookup_trial")
    tokenizer = nb.build_char_tokenizer()
    text = ("User: ____\n_P__\n_O__\n_O_G\nAssistant: <think> at 1,1 goal 3,3 Down O Right _ Up G Left edge so Right "
            "</think> <answer> Right, Down </answer>")
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    config = nb.make_config("cpu-tiny", tasks=["frozenlake"])
    torch.manual_seed(0)
    model = nb.Qwen2ForCausalLM(nb.tiny_qwen2_config(config, tokenizer))
    weighted = trial.LookupWeighted(model, tokenizer, 10.0)
    marked = weighted.lookups(ids)[0]
    assert [tokenizer.decode([token]) for token in ids[0][marked].tolist()] == ["O", "_", "G", "e"]
    assert torch.allclose(trial.LookupWeighted(model, tokenizer, 1.0)(input_ids=ids, labels=ids).loss,
                          model(input_ids=ids, labels=ids).loss)  # weight 1: the notebook's own loss
    logits = model(input_ids=ids).logits[0, :-1]
    losses = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
    weights = torch.where(marked[1:], 10.0, 1.0)
    assert torch.allclose(weighted(input_ids=ids, labels=ids).loss, (losses * weights).sum() / weights.sum())


def test_a_lookup_trial_builds_outside_the_cache_and_probes_every_level(tmp_path):
    out = tmp_path / "trial"
    result = subprocess.run([sys.executable, str(TOOL.parent / "frozenlake_lookup_trial.py"), "--preset", "cpu-tiny",
                             "--out", str(out), "--drills", "0.5", "--drill-ice", "0.6", "--rope-theta", "100",
                             "--lookup-weight", "3", "--lakes", "2", "--cache-dir", str(tmp_path / "cache")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert sorted(report["levels"]) == ["4x4", "4x4-slippery", "6x6"] and report["build"]["steps"] == 30
    assert report["trial"]["lookup_weight"] == 3.0
    assert json.loads((out / "config.json").read_text())["rope_parameters"]["rope_theta"] == 100.0
    assert not (tmp_path / "cache" / "base_model").exists()  # the trial's model never enters the cache
    bad = subprocess.run([sys.executable, str(TOOL.parent / "frozenlake_lookup_trial.py"), "--preset", "cpu-tiny",
                          "--out", str(tmp_path / "x"), "--drills", "1.5"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--drills 1.5" in bad.stderr


def test_the_pretraining_benchmark_times_the_notebooks_step_against_other_kernels():
    result = subprocess.run([sys.executable, str(TOOL.parent / "bench_pretraining.py"), "--preset", "cpu-tiny",
                             "--steps", "1", "--rounds", "2", "--variants", "eager,sdpa"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["block_shape"] == [2, 512] and report["build_steps"] == 30  # FrozenLake's blocks of 512
    assert report["notebook_variant"] == "sdpa" and report["speed_over_notebook"]["sdpa"] == 1.0
    assert all(len(values) == 2 and min(values) > 0 for values in report["ms_per_step"].values())
    bad = subprocess.run([sys.executable, str(TOOL.parent / "bench_pretraining.py"), "--variants", "sdpa,flash"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "unknown flash" in bad.stderr


def test_the_search_weight_is_chosen_on_training_prompts(tiny_cache):
    result = subprocess.run([sys.executable, str(TOOL.parent / "search_weight.py"), "--preset", "cpu-tiny", "--weights",
                             "0", "4", "--budget", "2", "--fit-prompts", "8", "--prompts", "3", "--cache-dir",
                             str(tiny_cache)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert set(report["tasks"]) == {"countdown", "multiplication"} and report["best_weight"] in (0.0, 4.0)
    for task in report["tasks"].values():
        assert task["problems"] == 3 and set(task["accuracy"]) == {"0.0", "4.0"}
        assert task["value_head"]["examples"] > 0 and task["budget_tokens"] >= 1


def test_the_frozenlake_bounds_report_each_way_of_moving_on_the_heldout_lakes():
    bounds = load_tool("frozenlake_bounds")
    from tinyzero import frozenlake as fl
    rng = random.Random(4)
    problems = [types.SimpleNamespace(lake=fl.generate_lake(rng, "4x4-slippery")) for _ in range(6)]
    report = bounds.bounds(problems, max_turns=4, actions_per_turn=2)
    assert report["lakes"] == 6
    assert report["one_move_a_turn"] <= report["up_to_2_moves_a_turn"] <= report["every_move_seen"]
    assert report["one_move_a_turn"] == round(sum(fl.optimal_success(p.lake, 4) for p in problems) / 6, 4)
    solid = fl.Lake("4x4", ("SFFF", "FHFH", "FFFH", "HFFG"), False, 0)
    down, right = fl.ACTIONS["down"], fl.ACTIONS["right"]
    assert len(bounds.routes((0, 0), (3, 3))) == 20 and bounds.routes((3, 1), (3, 3)) == [(right, right)]
    assert bounds.avoids_holes(solid.rows, (0, 0), (down, down, right, right, down, right))
    assert not bounds.avoids_holes(solid.rows, (0, 0), (right, down, down, down, right, right))
    chosen = bounds.hole_blind_routes("4x4", lakes=300)
    assert all(route in bounds.routes(start, (3, 3)) for start, route in chosen.items())
    assert bounds.hole_blind_success([types.SimpleNamespace(lake=solid)], {(0, 0): (down, down, right, right, down, right)}) == 1.0
    result = subprocess.run([sys.executable, str(TOOL.parent / "frozenlake_bounds.py"), "--preset", "cpu-tiny",
                             "--route-lakes", "300"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    levels = json.loads(result.stdout)["levels"]
    assert sorted(levels) == ["4x4", "4x4-slippery", "6x6"] and levels["4x4"]["every_move_seen"] == 1.0
    assert 0.0 < levels["4x4"]["hole_blind_route"] < 1.0 and "hole_blind_route" not in levels["4x4-slippery"]
