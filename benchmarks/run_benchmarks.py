"""A*PO against GRPO in this notebook, and against TRL 1.16's A2POTrainer and GRPOTrainer, on the CPU default.

    .venv/bin/pip install -r requirements-bench.txt
    .venv/bin/python benchmarks/run_benchmarks.py                  # every run, then the report
    .venv/bin/python benchmarks/run_benchmarks.py --report-only    # tabulate the runs that exist

The sweep: A*PO at each learning rate, and GRPO at each learning rate in both settings the field compares in:
the same responses per step as A*PO (prompts x G = A*PO's prompts) and the same prompts per step (A*PO's
prompts x G), each at several group sizes G. Every setting runs on the first seed. For each accuracy target,
from base + 0.10 up to the best any run reaches (countdown, multiplication, and both at once), each family's
setting is picked by one rule (the fastest to the target among the runs still at or above it at their last
evaluation); the settings picked anywhere, the headline pair that TRL is compared with, and every A*PO learning
rate then run on the other seeds too. Time to a target is interpolated linearly between the two evaluations around its crossing.

Every run is a separate process, one at a time (they share the machine's cores): the notebook itself through
papermill for this notebook's A*PO and GRPO, `benchmarks/trl_driver.py` for TRL. All start from the same cached
stage 0 base model; V* is estimated afresh in each A*PO run, so stage 1's seconds are measured with the rest.
The clock of a run is its training time: stage 1 (A*PO) plus the optimizer steps, generation included;
held-out evaluations are left out. Runs land in `<out>/runs/<setting>-seed<seed>/`; a finished one is kept
(delete it to run it again), an unfinished one starts over. The report (`report.md`, `frontier.md`,
`benchmark.json`) and the figures (`frontier.png`, `accuracy_vs_time.png`, `accuracy_vs_tokens.png`) go to
`<out>`.
"""
import argparse
import json
import math
import pathlib
import shutil
import subprocess
import sys
import time

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from notebook_module import load_notebook_module  # noqa: E402

TASKS = ("countdown", "multiplication")
VIEWS = {"countdown": ("countdown",), "multiplication": ("multiplication",), "both": TASKS}
TARGET_GAIN = 0.20  # the headline target: base greedy accuracy + 20 points, on every task at once
FIRST_GAIN, GAIN_STEP = 0.10, 0.05  # the frontier's targets: base + 0.10, + 0.15, ... up to the best reached
APO, SAME_RESPONSES, SAME_PROMPTS = "A*PO", "GRPO, same responses per step", "GRPO, same prompts per step"
SIZES = {  # the benchmark at full size, and the smoke version CI runs
    # learning rate 1e-3 is left out: in the sweep before this one it collapsed both algorithms (docs/benchmarks.md)
    "cpu": {"preset": "cpu", "train_steps": 60, "eval_every": 4, "seeds": (0, 1, 2), "trl_seeds": (0,),
            "learning_rates": (1e-4, 3e-4), "group_sizes": {SAME_RESPONSES: (8, 16), SAME_PROMPTS: (4, 8)},
            "grpo": {"micro_batch_size": 16}, "headline": ("apo-lr0.0001", "grpo-lr0.0003-p8-g8")},
    "cpu-tiny": {"preset": "cpu-tiny", "train_steps": 4, "eval_every": 2, "seeds": (0,), "trl_seeds": (0,),
                 "learning_rates": (3e-4,), "group_sizes": {SAME_RESPONSES: (2,), SAME_PROMPTS: (2,)},
                 "grpo": {"micro_batch_size": 4}, "headline": ("apo-lr0.0003", "grpo-lr0.0003-p4-g2")},
}


NO_TRL_COUNTERPART = {"adaptive_min_samples": 0}  # notebook options TRL's runs leave at their plain setting


def sweep_settings(size: dict, prompts_per_step: int) -> list[dict]:
    """Every setting of the sweep: a name, its family and its Config overrides. `prompts_per_step` is A*PO's
    (the preset's), which fixes both GRPO settings: prompts x G = it, or it x G."""
    settings = [{"name": f"apo-lr{lr:g}", "family": APO, "overrides": {"learning_rate": lr}}
                for lr in size["learning_rates"]]
    for family, groups in size["group_sizes"].items():
        for lr in size["learning_rates"]:
            for group in groups:
                prompts = prompts_per_step // group if family == SAME_RESPONSES else prompts_per_step
                settings.append({"name": f"grpo-lr{lr:g}-p{prompts}-g{group}", "family": family, "overrides": {
                    "algorithm": "grpo", **size["grpo"], "learning_rate": lr, "prompts_per_step": prompts,
                    "num_generations": group}})
    return settings


def settings_by_name(nb, size: dict) -> dict:
    """The sweep's settings by name, for the size's preset (`nb`: the notebook module)."""
    return {s["name"]: s for s in sweep_settings(size, nb.make_config(size["preset"]).prompts_per_step)}


def prepare_cache(out: pathlib.Path, size: dict, artifacts: pathlib.Path) -> pathlib.Path:
    """`out/cache`, holding (a link to) the stage 0 base model of the preset, built into `artifacts` if missing."""
    nb = load_notebook_module()
    config = nb.make_config(size["preset"], cache_dir=str(artifacts))
    built = pathlib.Path(nb.ensure_base_model(config, nb.heldout_keys(nb.build_datasets(config)))).resolve()
    cache = out / "cache"
    link = cache / "base_model" / built.name
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(built, target_is_directory=True)
    return cache


def run_logged(name: str, command: list[str], out: pathlib.Path) -> None:
    """Run `command` in the repository with its output in `out/logs/<name>.log`; fail with the log's end."""
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(command)}", flush=True)
    with open(log, "w") as f:
        result = subprocess.run(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if result.returncode:
        raise SystemExit(f"{name} failed ({result.returncode}); the end of {log}:\n{log.read_text()[-3000:]}")


def run_notebook(name: str, size: dict, seed: int, overrides: dict, train_steps: int, out: pathlib.Path,
                 cache: pathlib.Path) -> pathlib.Path:
    """The whole notebook for one run, unless `out/runs/<name>/summary.json` exists; returns its folder."""
    folder = out / "runs" / name
    if (folder / "summary.json").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)  # an unfinished run starts over: one process, one clock
    folder.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(cache / "vstar", ignore_errors=True)  # stage 1 is measured in this run, never read from cache
    overrides = {"cache_dir": str(cache), "eval_every": size["eval_every"], **overrides}
    command = [sys.executable, "-m", "papermill", "TinyZero_AstarPO.ipynb", str(folder) + ".executed.ipynb",
               "-p", "preset", size["preset"], "-p", "seed", str(seed), "-p", "train_steps", str(train_steps),
               "-p", "output_dir", str(folder.parent), "-p", "run_name", name,
               "-y", "config_overrides: " + yaml.safe_dump(overrides, default_flow_style=True), "--no-progress-bar"]
    run_logged(name, command, out)
    return folder


def run_trl(trainer: str, size: dict, seed: int, overrides: dict, out: pathlib.Path, cache: pathlib.Path) -> pathlib.Path:
    """TRL's `trainer` ("a2po" or "grpo") on the notebook's setup, unless its JSON exists; returns the JSON."""
    path = out / "runs" / f"trl-{trainer}-seed{seed}.json"
    if path.exists():
        return path
    # TRL's A2PO draws N reference samples for every prompt: it has no counterpart of the adaptive stage 1
    overrides = {"eval_every": size["eval_every"], "train_steps": size["train_steps"], **overrides,
                 **NO_TRL_COUNTERPART}
    generations = overrides.get("num_generations", 8)
    command = [sys.executable, "benchmarks/trl_driver.py", "--trainer", trainer, "--preset", size["preset"],
               "--seed", str(seed), "--cache-dir", str(cache), "--overrides", json.dumps(overrides),
               "--num-generations", str(generations), "--out", str(path)]
    run_logged(path.stem, command, out)
    return path


def notebook_curve(folder: pathlib.Path, setting: dict, seed: int) -> dict:
    """Held-out greedy accuracy of a notebook run (of `setting` and `seed`) against its training clock and its
    sampled tokens."""
    summary = json.loads((folder / "summary.json").read_text())
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    stage1 = summary.get("stage1") or {}
    clock, tokens = summary["stage_seconds"]["stage1_vstar"], stage1.get("sampled_tokens") or 0
    base = {task: summary["base"][task]["greedy_accuracy"] for task in TASKS if task in summary["base"]}
    points = [{"step": 0, "seconds": clock, "tokens": tokens, "accuracy": base}]
    for record in records:
        clock += record["step_seconds"] + record.get("refresh_seconds", 0.0)
        tokens += record["sampled_tokens"]
        if f"eval_greedy_accuracy/{TASKS[0]}" in record:
            points.append({"step": record["step"], "seconds": clock, "tokens": tokens,
                           "accuracy": {task: record[f"eval_greedy_accuracy/{task}"] for task in base}})
    phases = sorted({key for record in records for key in record if key.startswith("seconds/")})
    return {"name": folder.name, "kind": summary["algorithm"], "setting": setting["name"], "family": setting["family"],
            "seed": seed, "base": base, "points": points,
            "stage1_seconds": summary["stage_seconds"]["stage1_vstar"], "stage1_cached": stage1.get("cached"),
            "seconds_per_step": sum(r["step_seconds"] for r in records) / len(records),
            "response_tokens": sum(r["response_tokens"] for r in records) / len(records),
            "responses_per_step": records[0]["responses"],
            "step_phases": {key[8:]: sum(r[key] for r in records) / len(records) for key in phases},
            "peak_memory_mb": summary["peak_memory_mb"],
            "stage2_peak_memory_mb": summary["stage_peak_memory_mb"].get("stage2_train")}


def trl_curve(path: pathlib.Path, base: dict) -> dict:
    """The same for a TRL run, from the driver's JSON; it starts from the notebook's base evaluation."""
    run = json.loads(path.read_text())
    stage1 = run["stage1_seconds"] or 0.0
    points = [{"step": 0, "seconds": stage1, "tokens": None, "accuracy": base}]
    points += [{"step": e["step"], "seconds": e["train_seconds"], "tokens": None, "accuracy": e["accuracy"]}
               for e in run["evals"]]
    steps = run["steps"]
    lengths = [s["response_tokens"] for s in steps if s.get("response_tokens") is not None]
    return {"name": path.stem, "kind": f"TRL {'A2POTrainer' if run['trainer'] == 'a2po' else 'GRPOTrainer'}",
            "base": base, "points": points, "stage1_seconds": run["stage1_seconds"],
            "seconds_per_step": sum(s["seconds"] for s in steps) / len(steps),
            "response_tokens": sum(lengths) / len(lengths) if lengths else None,
            "step_phases": {phase: sum(s["phases"].get(phase, 0.0) for s in steps) / len(steps)
                            for phase in sorted({p for s in steps for p in s["phases"]})},
            "peak_memory_mb": run["peak_memory_mb"],
            "unmatched": run["unmatched"], "settings": run["settings"]}


def reached(accuracy: dict, base: dict, tasks: tuple, gain: float) -> bool:
    """Every one of `tasks` at its base accuracy + `gain` or above."""
    return all(accuracy[t] >= base[t] + gain - 1e-9 for t in tasks)


def crossing(curve: dict, tasks: tuple, gain: float, key: str = "seconds") -> float | None:
    """The clock (or sampled tokens) at which every one of `tasks` first reaches base + `gain`, interpolated
    linearly between the evaluation before (or the end of stage 1) and the first evaluation at or above it;
    None if no evaluation is."""
    points = curve["points"]
    for before, point in zip(points, points[1:]):
        if before[key] is None or point[key] is None or not reached(point["accuracy"], curve["base"], tasks, gain):
            continue
        fraction = max(0.0, *[(curve["base"][t] + gain - before["accuracy"][t])
                              / (point["accuracy"][t] - before["accuracy"][t])
                              for t in tasks if before["accuracy"][t] < curve["base"][t] + gain - 1e-9])
        return before[key] + min(1.0, fraction) * (point[key] - before[key])
    return None


def holds(curve: dict, tasks: tuple, gain: float) -> bool:
    """Whether the run's last evaluation is still at base + `gain` or above on every one of `tasks`."""
    return reached(curve["points"][-1]["accuracy"], curve["base"], tasks, gain)


def time_to_target(curve: dict, key: str = "seconds") -> float | None:
    """The headline target: every task at base + TARGET_GAIN."""
    return crossing(curve, TASKS, TARGET_GAIN, key)


def targets(curves: list[dict], tasks: tuple) -> list[float]:
    """The gains above base the frontier asks for: FIRST_GAIN, + GAIN_STEP, ... up to the best any run reaches."""
    best = max(min(p["accuracy"][t] - c["base"][t] for t in tasks) for c in curves for p in c["points"])
    count = math.floor((best - FIRST_GAIN) / GAIN_STEP + 1e-9) + 1
    return [round(FIRST_GAIN + i * GAIN_STEP, 2) for i in range(max(0, count))]


def pick(curves: list[dict], family: str, tasks: tuple, gain: float) -> str | None:
    """The rule that picks a family's setting for a target, on the first seed's runs: the fastest to the target
    among the runs still at or above it at their last evaluation."""
    holding = [(crossing(c, tasks, gain), c["setting"]) for c in curves if c["family"] == family
               and holds(c, tasks, gain) and crossing(c, tasks, gain) is not None]
    return min(holding)[1] if holding else None


def frontier(curves: list[dict], first_seed: int, seeds: list[int]) -> list[dict]:
    """For each view (countdown, multiplication, both) and target: each family's pick and its seconds on
    every seed (None where that seed never reaches the target)."""
    first = [c for c in curves if c["seed"] == first_seed]
    rows = []
    for view, tasks in VIEWS.items():
        for gain in targets(curves, tasks):
            families = {}
            for family in dict.fromkeys(c["family"] for c in first):  # in the order of the sweep
                setting = pick(first, family, tasks, gain)
                runs = [c for c in curves if c["setting"] == setting and c["seed"] in seeds] if setting else []
                seconds = [crossing(c, tasks, gain) for c in runs]
                families[family] = {"setting": setting, "reached_by_any": any(
                    crossing(c, tasks, gain) is not None for c in first if c["family"] == family),
                                    "seeds": [c["seed"] for c in runs], "seconds": seconds,
                                    "held": [holds(c, tasks, gain) for c in runs], "spread": spread(seconds)}
            rows.append({"view": view, "gain": gain, "target": {t: round(first[0]["base"][t] + gain, 4) for t in tasks},
                         "families": families})
    return rows


def accuracy_at(curve: dict, seconds: float) -> dict:
    """Accuracy per task at the last evaluation no later than `seconds` of training (the base model before)."""
    reached_by_then = [p for p in curve["points"] if p["seconds"] <= seconds + 1e-9] or curve["points"][:1]
    return reached_by_then[-1]["accuracy"]


def ratio(a, b) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def spread(values: list) -> dict:
    """Mean, min and max of the values that exist."""
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "min": None, "max": None, "n": 0}
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "n": len(values)}


def compare(apo: dict, other: dict) -> dict:
    """A*PO against another run: time- and token-to-target, accuracy at equal clock, memory, seconds per step."""
    equal_clock = min(apo["points"][-1]["seconds"], other["points"][-1]["seconds"])
    return {"apo": apo["name"], "other": other["name"], "apo_time_to_target": time_to_target(apo),
            "other_time_to_target": time_to_target(other),
            "time_to_target_ratio": ratio(time_to_target(apo), time_to_target(other)),
            "tokens_to_target_ratio": ratio(time_to_target(apo, "tokens"), time_to_target(other, "tokens")),
            "equal_clock_seconds": equal_clock, "apo_accuracy_at_equal_clock": accuracy_at(apo, equal_clock),
            "other_accuracy_at_equal_clock": accuracy_at(other, equal_clock),
            "peak_memory_ratio": ratio(apo["peak_memory_mb"], other["peak_memory_mb"]),
            "seconds_per_step_ratio": ratio(apo["seconds_per_step"], other["seconds_per_step"]),
            "stage1_seconds_ratio": ratio(apo["stage1_seconds"], other.get("stage1_seconds"))}


def fmt(value, digits: int = 2, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def fmt_spread(s: dict, digits: int = 2) -> str:
    if s["mean"] is None:
        return "n/a"
    return f"{s['mean']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f}, n={s['n']})"


def summarise(curves: list[dict], seeds: list[int], headline: tuple) -> dict:
    """The headline pair (A*PO's and GRPO's settings named in `headline`) seed by seed: ratios per seed (mean
    and spread), and A*PO and GRPO against TRL's trainers."""
    by_name = {c["name"]: c for c in curves}
    apo, grpo = headline
    pairs = [compare(by_name[f"{apo}-seed{s}"], by_name[f"{grpo}-seed{s}"]) for s in seeds
             if f"{apo}-seed{s}" in by_name and f"{grpo}-seed{s}" in by_name]
    keys = ("time_to_target_ratio", "tokens_to_target_ratio", "peak_memory_ratio", "seconds_per_step_ratio")
    trl = {}
    for trainer, mine in (("a2po", apo), ("grpo", grpo)):
        for c in (c for c in curves if c["name"].startswith(f"trl-{trainer}-")):
            notebook = by_name.get(f"{mine}-seed{c['name'].rsplit('seed', 1)[1]}")
            if notebook is not None:
                trl[c["name"]] = compare(notebook, c) | {"trl_over_notebook_seconds_per_step": ratio(
                    c["seconds_per_step"], notebook["seconds_per_step"]),
                    "trl_over_notebook_stage1": ratio(c["stage1_seconds"], notebook["stage1_seconds"])}
    return {"pairs": pairs, "apo_over_grpo": {k: spread([p[k] for p in pairs]) for k in keys}, "trl": trl}


def markdown(curves: list[dict], summary: dict) -> str:
    """The report: one row per run, where a step's seconds go, the headline pair's ratios, and TRL."""
    lines = ["| run | algorithm | stage 1 s | s/step | responses/step | tokens/response | time to target s |"
             " countdown at end | multiplication at end | peak memory MB |", "|" + " --- |" * 10]
    for c in curves:
        end = c["points"][-1]
        lines.append(f"| {c['name']} | {c['kind']} | {fmt(c['stage1_seconds'], 1)} | {fmt(c['seconds_per_step'])} | "
                     f"{c.get('responses_per_step', '')} | {fmt(c['response_tokens'], 1)} | {fmt(time_to_target(c), 1)} | "
                     f"{end['accuracy']['countdown']:.3f} @ {end['seconds']:.0f} s | "
                     f"{end['accuracy']['multiplication']:.3f} @ {end['seconds']:.0f} s | {fmt(c['peak_memory_mb'], 0)} |")
    lines += ["", "Where a step's seconds go (mean per step; the last column is the policy's log-prob passes with gradient,"
              " backward, clipping and the optimizer):", "",
              "| run | generation | scoring | reference log-probs | policy, backward, optimizer |", "|" + " --- |" * 5]
    for c in curves:
        phases = dict(c["step_phases"])
        main = [phases.pop(name, 0.0) for name in ("generation", "scoring", "reference")]
        lines.append(f"| {c['name']} | " + " | ".join(f"{v:.3f}" for v in main + [sum(phases.values())]) + " |")
    ratios = summary["apo_over_grpo"]
    lines += ["", "The headline pair, A*PO / GRPO, mean (min-max) over seeds, at the target base + "
              f"{TARGET_GAIN:.2f} on both tasks:", "",
              "| time to target | sampled tokens to target | peak memory | seconds per step |", "| --- | --- | --- | --- |",
              "| " + " | ".join(fmt_spread(ratios[k]) for k in ("time_to_target_ratio", "tokens_to_target_ratio",
                                                               "peak_memory_ratio", "seconds_per_step_ratio")) + " |"]
    for pair in summary["pairs"]:
        t = pair["equal_clock_seconds"]
        lines.append(f"\nAt equal clock ({t:.0f} s), {pair['apo']} vs {pair['other']}: " + ", ".join(
            f"{task} {pair['apo_accuracy_at_equal_clock'][task]:.3f} vs {pair['other_accuracy_at_equal_clock'][task]:.3f}"
            for task in TASKS))
    if summary["trl"]:
        lines += ["", "TRL against this notebook (TRL's figure / the notebook's: above 1 means the notebook is faster):", "",
                  "| TRL run | notebook run | stage 1 | seconds per step | time to target | peak memory |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, c in summary["trl"].items():
            lines.append(f"| {name} | {c['apo']} | {fmt(c['trl_over_notebook_stage1'])} | "
                         f"{fmt(c['trl_over_notebook_seconds_per_step'])} | "
                         f"{fmt(ratio(c['other_time_to_target'], c['apo_time_to_target']))} | "
                         f"{fmt(ratio(1.0, c['peak_memory_ratio']))} |")
    return "\n".join(lines)


def settings_markdown(curves: list[dict]) -> str:
    """Each setting over its seeds: stage 1's seconds, seconds per step, accuracy at the end, and time to the
    headline target."""
    lines = ["| setting | seeds | stage 1 s | s/step | countdown at end | multiplication at end |"
             " time to target s (seeds reaching it) |", "|" + " --- |" * 7]
    for setting in dict.fromkeys(c["setting"] for c in curves):
        runs = [c for c in curves if c["setting"] == setting]
        mean = lambda values: fmt_spread(spread(values)) if len(runs) > 1 else fmt(spread(values)["mean"])
        times = [time_to_target(c) for c in runs]
        lines.append(f"| {setting} | {len(runs)} | {mean([c['stage1_seconds'] for c in runs]) if runs[0]['stage1_seconds'] else '-'} | "
                     f"{mean([c['seconds_per_step'] for c in runs])} | "
                     f"{mean([c['points'][-1]['accuracy']['countdown'] for c in runs])} | "
                     f"{mean([c['points'][-1]['accuracy']['multiplication'] for c in runs])} | "
                     f"{mean(times)} ({sum(t is not None for t in times)} of {len(runs)}) |")
    return "\n".join(lines)


def frontier_markdown(rows: list[dict]) -> str:
    """The frontier: per view and target, each family's pick and its seconds over seeds."""
    families = list(dict.fromkeys(f for row in rows for f in row["families"]))
    lines = []
    for view in VIEWS:
        lines += ["", f"**{view}** (target = base + gain" + (" on both tasks" if view == "both" else "") + "):", "",
                  "| gain | target | " + " | ".join(families) + " |", "|" + " --- |" * (len(families) + 2)]
        for row in (r for r in rows if r["view"] == view):
            cells = []
            for family in families:
                entry = row["families"][family]
                if entry["setting"] is None:
                    cells.append("reached, not held" if entry["reached_by_any"] else "not reached")
                    continue
                s, missed = entry["spread"], sum(x is None for x in entry["seconds"])
                seconds = f"{s['mean']:.0f} s ({s['min']:.0f}-{s['max']:.0f})" if s["n"] > 1 else f"{s['mean']:.0f} s"
                not_reached = f", {missed} of {len(entry['seeds'])} seeds never" if missed else ""
                cells.append(f"{seconds}{not_reached} [{entry['setting']}]")
            target = " / ".join(f"{v:.3f}" for v in row["target"].values())
            lines.append(f"| +{row['gain']:.2f} | {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines).strip()


FAMILY_COLOURS = {APO: "C0", SAME_RESPONSES: "C3", SAME_PROMPTS: "C1"}


def plot_frontier(rows: list[dict], path: pathlib.Path) -> None:
    """Seconds to each target against the target, one line per family (mean over seeds, min-max as a band;
    an open marker where some seed never reached it), one panel per view."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    figure, axes = plt.subplots(1, len(VIEWS), figsize=(15, 4.5))
    for axis, view in zip(axes, VIEWS):
        view_rows = [r for r in rows if r["view"] == view]
        for family, colour in FAMILY_COLOURS.items():
            points = [(r["gain"], r["families"][family]) for r in view_rows if family in r["families"]
                      and r["families"][family]["spread"]["n"]]
            if not points:
                continue
            gains = [g for g, _ in points]
            axis.fill_between(gains, [e["spread"]["min"] for _, e in points], [e["spread"]["max"] for _, e in points],
                              color=colour, alpha=0.2, linewidth=0)
            axis.plot(gains, [e["spread"]["mean"] for _, e in points], color=colour, label=family)
            for gain, entry in points:
                every_seed = None not in entry["seconds"]
                axis.plot(gain, entry["spread"]["mean"], "o", color=colour, markersize=5,
                          markerfacecolor=colour if every_seed else "white")
        axis.set(title=f"{view}: seconds to reach base + gain", xlabel="target: gain over the base model's greedy "
                 "accuracy", ylabel="training seconds (stage 1 included)", yscale="log")
        axis.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        axis.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        axis.legend(fontsize=8, title="open marker: a seed never reached it;\na line ends where no setting reaches "
                    "and holds it", title_fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot(curves: list[dict], path: pathlib.Path, key: str) -> None:
    """Held-out greedy accuracy against the training clock (or sampled tokens), one panel per task."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colours = {"A*PO": "C0", "TRL A2POTrainer": "C2", "TRL GRPOTrainer": "C3"}
    figure, axes = plt.subplots(1, len(TASKS), figsize=(13, 4.5))
    for axis, task in zip(axes, TASKS):
        labelled = set()
        for c in curves:
            points = [p for p in c["points"] if p[key] is not None]
            if not points:
                continue
            colour = colours.get(c["kind"], "C1")
            axis.plot([p[key] for p in points], [p["accuracy"][task] for p in points], color=colour, marker=".",
                      alpha=0.8, label=None if c["kind"] in labelled else c["kind"])
            labelled.add(c["kind"])
        target = curves[0]["base"][task] + TARGET_GAIN
        axis.axhline(target, color="grey", linestyle="--", linewidth=1, label="target (base + 20 points)")
        axis.axhline(curves[0]["base"][task], color="grey", linestyle=":", linewidth=1, label="base model")
        axis.set(title=f"{task}: greedy accuracy, held-out", ylim=(0, 1), ylabel="accuracy",
                 xlabel="training seconds (stage 1 included, evaluation excluded)" if key == "seconds"
                 else "sampled response tokens (stage 1 included)")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def finished(out: pathlib.Path, name: str) -> bool:
    return (out / "runs" / name / "summary.json").exists()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="cpu", choices=list(SIZES))
    parser.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    parser.add_argument("--artifacts", default=str(ROOT / "artifacts"), help="the notebook's cache of stage 0 models")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds, the first one the sweep's (default: the size's)")
    parser.add_argument("--skip-trl", action="store_true", help="only this notebook's A*PO and GRPO")
    parser.add_argument("--report-only", action="store_true", help="only tabulate the runs that exist")
    args = parser.parse_args()
    size, out = SIZES[args.size], pathlib.Path(args.out)
    seeds = args.seeds or list(size["seeds"])
    out.mkdir(parents=True, exist_ok=True)
    cache = prepare_cache(out, size, pathlib.Path(args.artifacts))
    nb = load_notebook_module()
    settings = settings_by_name(nb, size)
    headline = size["headline"]
    run = lambda name, seed: run_notebook(f"{name}-seed{seed}", size, seed, settings[name]["overrides"],
                                          size["train_steps"], out, cache)
    if not args.report_only:
        for name in settings:  # the sweep, on the first seed
            run(name, seeds[0])
        if not args.skip_trl:  # beside the sweep's runs of the same settings, before the other seeds
            for seed in size["trl_seeds"]:
                run_trl("a2po", size, seed, settings[headline[0]]["overrides"], out, cache)
                run_trl("grpo", size, seed, settings[headline[1]]["overrides"], out, cache)
    first = [notebook_curve(out / "runs" / f"{name}-seed{seeds[0]}", settings[name], seeds[0]) for name in settings
             if finished(out, f"{name}-seed{seeds[0]}")]
    picked = {e["setting"] for row in frontier(first, seeds[0], seeds[:1]) for e in row["families"].values()} - {None}
    again = [name for name in settings if name in picked or name in headline or settings[name]["family"] == APO]
    if not args.report_only:
        for seed in seeds[1:]:  # seed by seed, so that an early stop leaves whole seeds
            for name in again:
                run(name, seed)
    curves = [notebook_curve(out / "runs" / f"{name}-seed{seed}", settings[name], seed) for seed in seeds
              for name in settings if finished(out, f"{name}-seed{seed}")]
    rows = frontier(curves, seeds[0], seeds)
    headline_curves = [c for c in curves if c["setting"] in headline]
    base = curves[0]["base"]
    trl_curves = [trl_curve(path, base) for path in sorted((out / "runs").glob("trl-*.json"))]
    summary = summarise(curves + trl_curves, seeds, headline)
    (out / "benchmark.json").write_text(json.dumps({
        "size": args.size, "seeds": seeds, "target_gain": TARGET_GAIN, "headline": headline,
        "settings": list(settings.values()), "frontier": rows, "curves": curves + trl_curves, "summary": summary},
        indent=1) + "\n")
    plot_frontier(rows, out / "frontier.png")
    plot(headline_curves + trl_curves, out / "accuracy_vs_time.png", "seconds")
    plot(headline_curves, out / "accuracy_vs_tokens.png", "tokens")
    table = frontier_markdown(rows)
    (out / "frontier.md").write_text(table + "\n")
    report = markdown(curves + trl_curves, summary) + "\n\nEach setting over its seeds, mean (min-max):\n\n" + \
        settings_markdown(curves)
    (out / "report.md").write_text(report + "\n")
    print(table + "\n\n" + report)


if __name__ == "__main__":
    main()
