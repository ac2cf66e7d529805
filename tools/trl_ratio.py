"""The TRL comparison alone, in one run: the benchmark's headline pair (this notebook's A*PO and GRPO at the settings
`benchmarks/run_benchmarks.py` names as its headline) and TRL's A2POTrainer and GRPOTrainer on the same setup, seed 0,
one after another; then stage 1 and seconds per step of TRL over the notebook. The full benchmark takes about 3 hours;
this is its TRL part, for checking a speed change (about 15 minutes on the CPU default).

    .venv/bin/python tools/trl_ratio.py --out results/trl_ratio
"""
import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import run_benchmarks as bench  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "results" / "trl_ratio"))
    parser.add_argument("--artifacts", default=str(ROOT / "artifacts"))
    args = parser.parse_args()
    size, out, seed = bench.SIZES[args.size], pathlib.Path(args.out), args.seed
    out.mkdir(parents=True, exist_ok=True)
    cache = bench.prepare_cache(out, size, pathlib.Path(args.artifacts))
    nb = bench.load_notebook_module()
    settings = bench.settings_by_name(nb, size)
    apo, grpo = size["headline"]
    curves = []
    for name in (apo, grpo):
        folder = bench.run_notebook(f"{name}-seed{seed}", size, seed, settings[name]["overrides"], size["train_steps"],
                                    out, cache)
        curves.append(bench.notebook_curve(folder, settings[name], seed))
    for trainer, name in (("a2po", apo), ("grpo", grpo)):
        path = bench.run_trl(trainer, size, seed, settings[name]["overrides"], out, cache)
        curves.append(bench.trl_curve(path, curves[0]["base"]))
    summary = bench.summarise(curves, [seed], size["headline"])
    rows = {c["name"]: {"stage1_seconds": c["stage1_seconds"], "seconds_per_step": c["seconds_per_step"],
                        "peak_memory_mb": c["peak_memory_mb"]} for c in curves}
    report = {"size": args.size, "seed": seed, "runs": rows,
              "trl_over_notebook": {name: {k: v for k, v in r.items() if k.startswith("trl_over")}
                                    for name, r in summary["trl"].items()}}
    (out / "trl_ratio.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
