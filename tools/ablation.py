"""Going past the reference on the CPU default: A*PO as it is, with a periodic reference refresh, with a
curriculum over difficulty levels, and with both, each for several training seeds, on the same cached base
model and held-out problems. One run at a time (they share two cores), each the notebook itself through
papermill; then a table (`results/ablation/ablation.json`, printed as markdown) and a figure of held-out
greedy accuracy by step (`results/ablation/accuracy_by_step.png`).

    .venv/bin/python tools/ablation.py --seeds 0 1 2              # runs what is missing, then reports
    .venv/bin/python tools/ablation.py --seeds 0 1 2 --report-only

Every run goes to `results/ablation/<setting>-seed<N>/`; a run folder that holds a summary.json is kept. The
settings spell out their curriculum, so they mean the same whatever the `cpu` preset's defaults are.
"""
import argparse
import json
import pathlib
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CURRICULUM = {"multiplication": [["2x1", 0.3], ["3x1", 0.7]], "countdown": [["3x9", 0.5], ["3x20", 0.5]]}
SETTINGS = {  # name: (Config overrides, what it is)
    "apo": ({"curriculum": {}}, "A*PO as in the paper (the cpu preset without its curriculum)"),
    "refresh": ({"reference_refresh_every": 25, "curriculum": {}}, "+ reference refresh every 25 steps"),
    "curriculum": ({"curriculum": CURRICULUM, "curriculum_schedule": "mixed"},  # the cpu preset's own
                   "+ mixed curriculum: multiplication 2x1 0.3 / 3x1 0.7, countdown 3x9 0.5 / 3x20 0.5"),
    "both": ({"reference_refresh_every": 25, "curriculum": CURRICULUM, "curriculum_schedule": "mixed"},
             "+ refresh and curriculum"),
}
LEVELS = (("countdown", "3x9"), ("countdown", "3x20"), ("multiplication", "2x1"), ("multiplication", "3x1"),
          ("multiplication", "2x2"))


def run_dir(setting: str, seed: int) -> pathlib.Path:
    return ROOT / "results" / "ablation" / f"{setting}-seed{seed}"


def run(setting: str, seed: int) -> None:
    """The notebook for `setting` and `seed`, unless its run folder already holds a summary."""
    folder = run_dir(setting, seed)
    if (folder / "summary.json").exists():
        return
    overrides = SETTINGS[setting][0]
    command = [sys.executable, "-m", "papermill", "TinyZero_AstarPO.ipynb", str(folder) + ".executed.ipynb",
               "-p", "seed", str(seed), "-p", "output_dir", str(folder.parent), "-p", "run_name", folder.name,
               "--no-progress-bar", "--stderr-file", "/dev/stderr"]
    if overrides:
        command += ["-y", "config_overrides: " + yaml.safe_dump(overrides, default_flow_style=True)]
    print(f"running {setting} seed {seed}: {' '.join(command)}", flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def row(setting: str, seed: int) -> dict:
    """Held-out greedy accuracy by task and level, base and trained, and the seconds of the run."""
    summary = json.loads((run_dir(setting, seed) / "summary.json").read_text())
    seconds = summary["stage_seconds"]
    return {"setting": setting, "seed": seed,
            "trained": {f"{t}/{l}": summary["trained"][t]["by_level"][l] for t, l in LEVELS},
            "base": {f"{t}/{l}": summary["base"][t]["by_level"][l] for t, l in LEVELS},
            "refreshes": len(summary.get("reference_refreshes", [])),
            "seconds": round(seconds["stage1_vstar"] + seconds["stage2_train"] + seconds.get("reference_refresh", 0.0), 1),
            "stage_seconds": seconds}


def markdown(rows: list[dict]) -> str:
    """One line per setting: mean greedy accuracy per level over seeds (each seed in brackets), and seconds."""
    lines = ["| setting | " + " | ".join(f"{t} {l}" for t, l in LEVELS) + " | seconds (stage 1 + 2, refreshes) |",
             "| --- |" + " --- |" * (len(LEVELS) + 1)]
    base = rows[0]["base"]
    lines.append("| base model | " + " | ".join(f"{base[f'{t}/{l}']:.3f}" for t, l in LEVELS) + " | |")
    for setting in SETTINGS:
        mine = [r for r in rows if r["setting"] == setting]
        if not mine:
            continue
        cells = []
        for t, l in LEVELS:
            values = [r["trained"][f"{t}/{l}"] for r in mine]
            cells.append(f"{sum(values) / len(values):.3f} ({' / '.join(f'{v:.2f}' for v in values)})")
        seconds = [r["seconds"] for r in mine]
        lines.append(f"| {setting} | " + " | ".join(cells) + f" | {sum(seconds) / len(seconds):.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: pathlib.Path) -> None:
    """Held-out greedy accuracy by step at the training level of each task (one colour per setting, one line per
    seed), and the final greedy accuracy at every level (mean over seeds, each seed a dot)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, 3, figsize=(17, 4.2), gridspec_kw={"width_ratios": [1, 1, 1.4]})
    for axis, (task, level) in zip(axes, (("countdown", "3x9"), ("multiplication", "3x1"))):
        for index, setting in enumerate(SETTINGS):
            for r in (r for r in rows if r["setting"] == setting):
                records = [json.loads(line) for line in (run_dir(setting, r["seed"]) / "metrics.jsonl").read_text().splitlines()]
                points = [(x["step"], x[f"eval_greedy_accuracy/{task}"]) for x in records if f"eval_greedy_accuracy/{task}" in x]
                axis.plot([0] + [s for s, _ in points], [r["base"][f"{task}/{level}"]] + [a for _, a in points],
                          color=f"C{index}", alpha=0.7, marker=".", label=setting if r["seed"] == rows[0]["seed"] else None)
        axis.set(title=f"{task} {level}: greedy, held-out, during training", xlabel="step", ylabel="accuracy", ylim=(0, 1))
        axis.legend(fontsize=8)
    axis, width = axes[2], 0.8 / (len(SETTINGS) + 1)
    names = [f"{t}/{l}" for t, l in LEVELS]
    axis.bar([i - 0.4 + width / 2 for i in range(len(names))], [rows[0]["base"][n] for n in names], width,
             color="lightgrey", label="base model")
    for index, setting in enumerate(SETTINGS):
        mine = [r for r in rows if r["setting"] == setting]
        if not mine:
            continue
        x = [i - 0.4 + width * (index + 1.5) for i in range(len(names))]
        axis.bar(x, [sum(r["trained"][n] for r in mine) / len(mine) for n in names], width, color=f"C{index}",
                 label=setting)
        for r in mine:
            axis.plot(x, [r["trained"][n] for n in names], "k.", markersize=3)
    axis.set_xticks(range(len(names)), [n.replace("/", "\n") for n in names], fontsize=8)
    axis.set(title="after training: greedy, held-out, every level (dots: seeds)", ylim=(0, 1))
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--report-only", action="store_true", help="only tabulate the runs that exist")
    args = parser.parse_args()
    if not args.report_only:
        for seed in args.seeds:  # seed by seed, so that an early stop leaves whole seeds
            for setting in args.settings:
                run(setting, seed)
    rows = [row(s, seed) for seed in args.seeds for s in args.settings if (run_dir(s, seed) / "summary.json").exists()]
    out = ROOT / "results" / "ablation"
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(rows, indent=1) + "\n")
    plot(rows, out / "accuracy_by_step.png")
    print(markdown(rows))


if __name__ == "__main__":
    main()
