"""A*PO's accuracy after training with each stage 1, seed by seed: the benchmark's A*PO setting
(`benchmarks/run_benchmarks.py`, the learning rate of its headline pair) run again with N = 8 reference samples for
every prompt (the full estimate), N = 4, and adaptive sampling (2 first), on the benchmark's seeds, beside the
benchmark's own runs (`results/benchmarks/runs/`, stage 1 as the preset has it), so run the benchmark first.
Writes `<out>/stage1_accuracy.json` (per variant and seed: stage 1 seconds and sampled tokens, held-out greedy
accuracy at the last evaluation and at the best one) and prints it as a table.

    .venv/bin/python tools/stage1_accuracy.py
"""
import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import run_benchmarks as bench  # noqa: E402

FULL = "the benchmark's runs (the preset's stage 1)"
VARIANTS = {"N = 8, every prompt": ("n8", {"adaptive_min_samples": 0}),
            "N = 4": ("n4", {"num_ref_samples": 4, "adaptive_min_samples": 0}),
            "adaptive, 2 first": ("adaptive2", {"adaptive_min_samples": 2})}


def outcome(curve: dict) -> dict:
    """What a run's curve says about its stage 1 and where its held-out accuracy ended."""
    points = curve["points"]
    return {"seed": curve["seed"], "stage1_seconds": curve["stage1_seconds"], "stage1_tokens": points[0]["tokens"],
            "last": points[-1]["accuracy"],
            "best": {task: max(p["accuracy"][task] for p in points) for task in points[-1]["accuracy"]}}


def table(results: dict) -> str:
    """Markdown: one row per variant, each number the mean over seeds with its range."""
    def cell(values):
        return f"{sum(values) / len(values):.3f} ({min(values):.3f}-{max(values):.3f})"
    tasks = list(next(iter(results.values()))[0]["last"])
    lines = ["| stage 1 | seeds | stage 1 seconds | " + " | ".join(f"{t} last | {t} best" for t in tasks) + " |",
             "| --- | --- | --- | " + " | ".join("--- | ---" for _ in tasks) + " |"]
    for name, rows in results.items():
        seconds = [r["stage1_seconds"] for r in rows]
        lines.append(f"| {name} | {', '.join(str(r['seed']) for r in rows)} | {sum(seconds) / len(seconds):.1f} | "
                     + " | ".join(f"{cell([r['last'][t] for r in rows])} | {cell([r['best'][t] for r in rows])}"
                                  for t in tasks) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="cpu", choices=list(bench.SIZES))
    parser.add_argument("--benchmark", default=str(ROOT / "results" / "benchmarks"), help="the benchmark's output")
    parser.add_argument("--out", default=str(ROOT / "results" / "stage1_variants"))
    parser.add_argument("--artifacts", default=str(ROOT / "artifacts"), help="the notebook's cache of stage 0 models")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: the size's)")
    args = parser.parse_args()
    size, out, benchmark = bench.SIZES[args.size], pathlib.Path(args.out), pathlib.Path(args.benchmark)
    seeds = args.seeds or list(size["seeds"])
    nb = bench.load_notebook_module()
    settings = bench.settings_by_name(nb, size)
    setting = settings[size["headline"][0]]
    missing = [seed for seed in seeds if not bench.finished(benchmark, f"{setting['name']}-seed{seed}")]
    if missing:
        raise SystemExit(f"the benchmark has no finished {setting['name']} run for seeds {missing} in {benchmark}: "
                         f"run benchmarks/run_benchmarks.py --size {args.size} first")
    results = {FULL: [outcome(bench.notebook_curve(benchmark / "runs" / f"{setting['name']}-seed{seed}", setting, seed))
                      for seed in seeds]}
    out.mkdir(parents=True, exist_ok=True)
    cache = bench.prepare_cache(out, size, pathlib.Path(args.artifacts))
    for variant, (slug, overrides) in VARIANTS.items():
        results[variant] = []
        for seed in seeds:
            folder = bench.run_notebook(f"{setting['name']}-{slug}-seed{seed}", size, seed,
                                        {**setting["overrides"], **overrides}, size["train_steps"], out, cache)
            results[variant].append(outcome(bench.notebook_curve(folder, setting, seed)))
    (out / "stage1_accuracy.json").write_text(json.dumps(
        {"size": args.size, "setting": setting, "seeds": seeds, "train_steps": size["train_steps"],
         "variants": {name: VARIANTS[name][1] if name in VARIANTS else {} for name in results}, "results": results},
        indent=1) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
