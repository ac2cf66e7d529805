"""A*PO against GRPO in this notebook, and against TRL 1.16's A2POTrainer and GRPOTrainer, on the CPU default.

    .venv/bin/pip install -r requirements-bench.txt
    .venv/bin/python benchmarks/run_benchmarks.py                  # every run, then the report
    .venv/bin/python benchmarks/run_benchmarks.py --sweep          # GRPO's learning-rate and group-size sweep
    .venv/bin/python benchmarks/run_benchmarks.py --report-only    # tabulate the runs that exist

Every run is a separate process, one at a time (they share the machine's cores): the notebook itself through
papermill for this notebook's A*PO and GRPO, `benchmarks/trl_driver.py` for TRL. All start from the same cached
stage 0 base model; V* is estimated afresh in each A*PO run, so stage 1's seconds are measured with the rest.
The clock of a run is its training time: stage 1 (A*PO) plus the optimizer steps, generation included;
held-out evaluations are left out. Runs land in `<out>/runs/<name>/`; a finished one is kept (delete it to
run it again), an unfinished one starts over. The report (`report.md`, `benchmark.json`) and the figures
(`accuracy_vs_time.png`, `accuracy_vs_tokens.png`) go to `<out>`.
"""
import argparse
import json
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
TARGET_GAIN = 0.20  # time-to-target: base greedy accuracy + 20 points, on every task at once
SIZES = {  # the benchmark at full size, and the smoke version CI runs
    "cpu": {"preset": "cpu", "train_steps": 60, "eval_every": 4, "seeds": (0, 1, 2), "trl_seeds": (0,),
            "grpo": {}, "sweep_steps": 40, "sweep": {"learning_rate": (1e-4, 3e-4, 1e-3),
                                                     "groups": ((16, 4), (8, 8), (4, 16)),
                                                     "apo_learning_rate": (1e-4, 3e-4, 1e-3)}},
    "cpu-tiny": {"preset": "cpu-tiny", "train_steps": 4, "eval_every": 2, "seeds": (0,), "trl_seeds": (0,),
                 "grpo": {"prompts_per_step": 4, "num_generations": 2, "micro_batch_size": 4}, "sweep_steps": 2,
                 "sweep": {"learning_rate": (3e-4,), "groups": ((4, 2),), "apo_learning_rate": (3e-4,)}},
}
# The settings `--sweep` chose on the CPU default (results/benchmarks/sweep.md), by one rule for both algorithms:
# the fastest to the target among those still at or above it at the end of the sweep's steps.
GRPO_SETTINGS = {"algorithm": "grpo", "learning_rate": 3e-4, "prompts_per_step": 8, "num_generations": 8,
                 "micro_batch_size": 16}
APO_SETTINGS = {"learning_rate": 1e-4}  # the cpu preset's other values (beta2 0.05, 64 prompts per step)


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
    overrides = {"eval_every": size["eval_every"], "train_steps": size["train_steps"], **overrides}
    generations = overrides.get("num_generations", 8)
    command = [sys.executable, "benchmarks/trl_driver.py", "--trainer", trainer, "--preset", size["preset"],
               "--seed", str(seed), "--cache-dir", str(cache), "--overrides", json.dumps(overrides),
               "--num-generations", str(generations), "--out", str(path)]
    run_logged(path.stem, command, out)
    return path


def notebook_curve(folder: pathlib.Path) -> dict:
    """Held-out greedy accuracy of a notebook run against its training clock and its sampled tokens."""
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
    return {"name": folder.name, "kind": summary["algorithm"], "base": base, "points": points,
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


def meets_target(accuracy: dict, base: dict) -> bool:
    """Every task at its base accuracy + TARGET_GAIN or above."""
    return all(accuracy[t] >= base[t] + TARGET_GAIN - 1e-9 for t in base)


def time_to_target(curve: dict, key: str = "seconds") -> float | None:
    """The clock (or sampled tokens) at the first evaluation with every task at base + TARGET_GAIN; None if never."""
    for point in curve["points"][1:]:
        if meets_target(point["accuracy"], curve["base"]):
            return point[key]
    return None


def accuracy_at(curve: dict, seconds: float) -> dict:
    """Accuracy per task at the last evaluation no later than `seconds` of training (the base model before)."""
    reached = [p for p in curve["points"] if p["seconds"] <= seconds + 1e-9] or curve["points"][:1]
    return reached[-1]["accuracy"]


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


def summarise(curves: list[dict], seeds: list[int]) -> dict:
    """A*PO/GRPO ratios per seed (mean and spread), and A*PO against TRL's trainers."""
    by_name = {c["name"]: c for c in curves}
    pairs = [compare(by_name[f"apo-seed{s}"], by_name[f"grpo-seed{s}"]) for s in seeds
             if f"apo-seed{s}" in by_name and f"grpo-seed{s}" in by_name]
    keys = ("time_to_target_ratio", "tokens_to_target_ratio", "peak_memory_ratio", "seconds_per_step_ratio")
    trl = {}
    for trainer in ("a2po", "grpo"):
        for c in (c for c in curves if c["name"].startswith(f"trl-{trainer}-")):
            seed = c["name"].rsplit("seed", 1)[1]
            mine = by_name.get(f"{'apo' if trainer == 'a2po' else 'grpo'}-seed{seed}")
            if mine is not None:
                trl[c["name"]] = compare(mine, c) | {"trl_over_notebook_seconds_per_step": ratio(
                    c["seconds_per_step"], mine["seconds_per_step"]),
                    "trl_over_notebook_stage1": ratio(c["stage1_seconds"], mine["stage1_seconds"])}
    return {"pairs": pairs, "apo_over_grpo": {k: spread([p[k] for p in pairs]) for k in keys}, "trl": trl}


def markdown(curves: list[dict], summary: dict) -> str:
    """The report: one row per run, the A*PO/GRPO ratios, and A*PO against TRL."""
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
    lines += ["", "A*PO / GRPO (this notebook), mean (min-max) over seeds:", "",
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


def run_sweep(size: dict, out: pathlib.Path, cache: pathlib.Path) -> list[dict]:
    """GRPO at each learning rate and group shape, and A*PO at each learning rate (seed 0): time to target and
    accuracy at the end."""
    settings = [(f"sweep-grpo-lr{lr:g}-p{prompts}-g{group}",  # (prompts per step, G): the same responses per step
                 {**GRPO_SETTINGS, **size["grpo"], "learning_rate": lr, "prompts_per_step": prompts,
                  "num_generations": group})
                for lr in size["sweep"]["learning_rate"] for prompts, group in size["sweep"]["groups"]]
    settings += [(f"sweep-apo-lr{lr:g}", {"learning_rate": lr}) for lr in size["sweep"]["apo_learning_rate"]]
    rows = []
    for name, overrides in settings:
        curve = notebook_curve(run_notebook(name, size, 0, overrides, size["sweep_steps"], out, cache))
        end = curve["points"][-1]
        rows.append({"name": name, "algorithm": curve["kind"], "learning_rate": overrides["learning_rate"],
                     "prompts_per_step": overrides.get("prompts_per_step", curve["responses_per_step"]),
                     "num_generations": overrides.get("num_generations"), "time_to_target": time_to_target(curve),
                     "seconds_per_step": curve["seconds_per_step"], "stage1_seconds": curve["stage1_seconds"],
                     "end": end, "holds_target": meets_target(end["accuracy"], curve["base"])})
    return rows


def chosen(rows: list[dict], algorithm: str) -> dict | None:
    """The sweep's pick for `algorithm`: the fastest to the target among the runs that hold it to the end."""
    holding = [r for r in rows if r["algorithm"].startswith(algorithm) and r["holds_target"]
               and r["time_to_target"] is not None]
    return min(holding, key=lambda r: r["time_to_target"], default=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="cpu", choices=list(SIZES))
    parser.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    parser.add_argument("--artifacts", default=str(ROOT / "artifacts"), help="the notebook's cache of stage 0 models")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: the size's)")
    parser.add_argument("--skip-trl", action="store_true", help="only this notebook's A*PO and GRPO")
    parser.add_argument("--sweep", action="store_true", help="run GRPO's sweep instead of the benchmark")
    parser.add_argument("--report-only", action="store_true", help="only tabulate the runs that exist")
    args = parser.parse_args()
    size, out = SIZES[args.size], pathlib.Path(args.out)
    seeds = args.seeds or list(size["seeds"])
    out.mkdir(parents=True, exist_ok=True)
    cache = prepare_cache(out, size, pathlib.Path(args.artifacts))
    if args.sweep:
        rows = run_sweep(size, out, cache)
        (out / "sweep.json").write_text(json.dumps(rows, indent=1) + "\n")
        table = ["| run | learning rate | prompts x G | s/step | time to target s | countdown at end | multiplication at end |",
                 "|" + " --- |" * 7]
        for row in rows:
            end, group = row["end"], row["num_generations"] or 1
            table.append(f"| {row['name']} | {row['learning_rate']:g} | {row['prompts_per_step']} x {group} | "
                         f"{row['seconds_per_step']:.2f} | {fmt(row['time_to_target'], 1)} | "
                         f"{end['accuracy']['countdown']:.3f} | {end['accuracy']['multiplication']:.3f} |")
        table += ["", "Chosen (the fastest to the target among the runs still at or above it at the end): " + ", ".join(
            f"{name}: {row['name'] if row else 'none'}" for name, row in (("A*PO", chosen(rows, "A*PO")),
                                                                       ("GRPO", chosen(rows, "GRPO"))))]
        (out / "sweep.md").write_text("\n".join(table) + "\n")
        print("\n".join(table))
        return
    grpo = {**GRPO_SETTINGS, **size["grpo"]}
    apo = APO_SETTINGS if size["preset"] == "cpu" else {}
    if not args.report_only:
        for seed in seeds:  # seed by seed, so that an early stop leaves whole pairs
            run_notebook(f"apo-seed{seed}", size, seed, apo, size["train_steps"], out, cache)
            run_notebook(f"grpo-seed{seed}", size, seed, grpo, size["train_steps"], out, cache)
        if not args.skip_trl:
            for seed in size["trl_seeds"]:
                run_trl("a2po", size, seed, apo, out, cache)
                run_trl("grpo", size, seed, grpo, out, cache)
    curves = [notebook_curve(out / "runs" / f"{kind}-seed{s}") for s in seeds for kind in ("apo", "grpo")
              if (out / "runs" / f"{kind}-seed{s}" / "summary.json").exists()]
    base = curves[0]["base"]
    curves += [trl_curve(path, base) for path in sorted((out / "runs").glob("trl-*.json"))]
    summary = summarise(curves, seeds)
    (out / "benchmark.json").write_text(json.dumps({"size": args.size, "target_gain": TARGET_GAIN, "apo": apo, "grpo": grpo,
                                                    "curves": curves, "summary": summary}, indent=1) + "\n")
    plot(curves, out / "accuracy_vs_time.png", "seconds")
    plot([c for c in curves if c["points"][0]["tokens"] is not None], out / "accuracy_vs_tokens.png", "tokens")
    report = markdown(curves, summary)
    (out / "report.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
