"""The GPU path on a CUDA GPU, with no model hub: Qwen2.5's exact architectures with random weights and Qwen2.5's
tokenizer (tools/qwen_full_size.py builds both), run through the notebook itself (papermill) with the Qwen
presets' settings on CUDA: bfloat16 compute, FSDP2, the torch sampler. The runs:

* `0.5b`: stage 1, two A*PO steps with a checkpoint after each, then the notebook again, resuming at step 2 and
  taking a third. Short responses (256 tokens) keep it to a few minutes.
* `3b`: one A*PO step at the `qwen2.5-3b` preset's training settings (256 prompts a step, 1,024-token
  responses, micro-batches of 4, gradient checkpointing), to measure peak GPU memory against docs/memory.md's
  estimate. Stage 1 draws one sample per prompt, and the evaluations use four multiplication problems.
* `frozenlake`, `frozenlake-grpo`: FrozenLake episodes on the 0.5B shape (10 turns of up to 96 tokens, the
  environment's observations between them): stage 1, two A*PO steps and a resumed third; one GRPO step.
* `sampler`: the torch sampler's decoding step at the 0.5B shape, the model's own forward against the fused step,
  at 64 and 256 rows (a minute or two).

Random weights rarely emit EOS, so every response runs to the cap: the timings are those of full-length
responses, and the accuracies mean nothing.

    python tools/gpu_check.py --out results/gpu_check            # on a machine with a CUDA GPU
    python tools/gpu_check.py --smoke --out /tmp/gpu_check_smoke  # the same plumbing, tiny, on the CPU

Writes `<out>/report.json` (each run's stage seconds, step seconds and phases, sampling tokens per second, peak
GPU memory allocated and reserved) and prints it; the models and runs go under `--work`.
"""
import argparse
import functools
import json
import pathlib
import time
import traceback

import torch

from qwen_full_size import QWEN_SHAPES, build_model_folder, printed_output, run_notebook
from stage0_tools import load_notebook_module

# Each run: the Qwen shape, the notebook's overrides on top of its preset, and the steps of each notebook run.
SMALL_EVAL = dict(test_prompts_per_task=4, eval_prompts_per_task=4, pass_k=2, countdown_eval_levels=["4x99"],
                  multiplication_eval_levels=["3x3"], rollout_engine="torch", dtype="bfloat16")
FROZENLAKE_RUN = dict(SMALL_EVAL, tasks=["frozenlake"], frozenlake_eval_levels=["4x4"], pass_k=1,
                      train_prompts_per_task=32, generation_batch_size=256, eval_every=2, checkpoint_every=1)
RUNS = {
    "0.5b": dict(shape="0.5b", steps=[2, 3], overrides=dict(
        SMALL_EVAL, train_prompts_per_task=32, max_new_tokens=256, num_ref_samples=8, prompts_per_step=64,
        generation_batch_size=256, eval_every=1, checkpoint_every=1)),
    # one task, whose table level is its training level and pass@1: each evaluation is two 1,024-token passes
    "3b": dict(shape="3b", steps=[1], overrides=dict(
        SMALL_EVAL, tasks=["multiplication"], pass_k=1, train_prompts_per_task=256, max_new_tokens=1024,
        num_ref_samples=1, prompts_per_step=256, generation_batch_size=256, eval_every=100, checkpoint_every=0)),
    # FrozenLake on the Qwen path: multi-turn episodes (10 turns to the preset's 96-token cap, observations between
    # them) through stage 1, two A*PO steps and a resumed third; then one GRPO step (8 prompts x 4 episodes) from a
    # fresh run folder. Evaluation greedy only (pass@1), at the start and the end of each notebook run.
    "frozenlake": dict(shape="0.5b", steps=[2, 3], overrides=dict(
        FROZENLAKE_RUN, num_ref_samples=8, prompts_per_step=32)),
    "frozenlake-grpo": dict(shape="0.5b", steps=[1], overrides=dict(
        FROZENLAKE_RUN, algorithm="grpo", prompts_per_step=8, num_generations=4)),
}
# --smoke: the same runs' plumbing on the CPU with a two-layer Qwen-shaped model, in about a minute each.
SMOKE_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2)
SMOKE_OVERRIDES = dict(train_prompts_per_task=4, micro_batch_size=2, max_new_tokens=8, num_ref_samples=2, prompts_per_step=4,
                       generation_batch_size=8, test_prompts_per_task=2, eval_prompts_per_task=2, dtype="float32")


def device_facts() -> dict:
    """The GPU, the software, and a bf16 matrix product's throughput (8192^3, mean of 10 after 3 warm-ups)."""
    facts = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if not torch.cuda.is_available():
        return facts
    properties = torch.cuda.get_device_properties(0)
    facts.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                 multiprocessors=properties.multi_processor_count)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(10):
        a @ a
    torch.cuda.synchronize()
    facts["bf16_matmul_tflops"] = round(10 * 2 * 8192**3 / (time.perf_counter() - started) / 1e12, 1)
    del a
    torch.cuda.empty_cache()
    return facts


def step_figures(nb, run_dir: pathlib.Path) -> list[dict]:
    """Each logged step's seconds, phases, sampled tokens and tokens per second, and peak memory."""
    keep = ("step", "step_seconds", "responses", "response_tokens", "sampled_tokens", "generated_tokens_per_second",
            "peak_memory_mb", "peak_reserved_mb")
    return [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
             if k in keep or k.startswith("seconds/")} for row in nb.read_metrics(str(run_dir / "metrics.jsonl"))]


def check_run(nb, name: str, work: pathlib.Path, smoke: bool) -> dict:
    """Build the run's model folder, run the notebook once per entry of its `steps` (the later ones resume), and
    collect the figures."""
    spec = RUNS[name]
    folder = work / name / "model"
    preset = QWEN_SHAPES[spec["shape"]]["preset"]
    shape = dict(SMOKE_SHAPE, preset=preset) if smoke else QWEN_SHAPES[spec["shape"]]
    report = {"preset": preset, "model": build_model_folder(nb, shape, folder, torch.bfloat16, "cpu" if smoke else "cuda")}
    torch.cuda.empty_cache()
    overrides = dict(spec["overrides"], **(SMOKE_OVERRIDES if smoke else {}), model_name=str(folder),
                     cache_dir=str(work / name / "cache"))
    report["overrides"] = {k: v for k, v in overrides.items() if k not in ("model_name", "cache_dir")}
    report["runs"] = []
    for index, steps in enumerate(spec["steps"]):
        executed = work / name / f"executed-{index + 1}.ipynb"
        figures = run_notebook(nb, work / name, executed, preset, overrides, train_steps=steps)
        if index:
            figures["resumed_from_checkpoint"] = f"resuming from step {spec['steps'][index - 1]}" in printed_output(executed)
        report["runs"].append(figures)
    report["steps"] = step_figures(nb, work / name / "runs" / "full-size")
    return report


def check_sampler(nb, work: pathlib.Path, smoke: bool) -> dict:
    """The torch sampler's decoding step on the 0.5B shape in bf16, as the model's own forward and as the fused
    step (`FusedDecodingStep`): seconds per decoding step at 64 and 256 rows, the same prompts, greedy, responses
    to the cap (random weights do not stop)."""
    from transformers import AutoModelForCausalLM
    device = "cpu" if smoke else "cuda"
    folder = work / "sampler" / "model"
    shape = dict(SMOKE_SHAPE, preset="qwen2.5-0.5b") if smoke else QWEN_SHAPES["0.5b"]
    report = {"model": build_model_folder(nb, shape, folder, torch.bfloat16, device)}
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(device).eval()
    eos, pad = model.config.eos_token_id, model.config.pad_token_id
    new_tokens = 8 if smoke else 128

    def synchronize():
        if device == "cuda":
            torch.cuda.synchronize()

    for rows in (64, 256):
        prompts = torch.randint(0, 10_000, (rows, 40), generator=torch.Generator().manual_seed(rows)).tolist()
        responses = {}
        for fused in (False, True):
            name = "fused" if fused else "model_forward"
            nb.sample_with_model(model, prompts, 1, True, 1.0, 4, {eos}, pad, rows, fused=fused)  # warm-up
            synchronize()
            started = time.perf_counter()
            responses[name], stats = nb.sample_with_model(model, prompts, 1, True, 1.0, new_tokens, {eos}, pad, rows,
                                                          fused=fused)
            synchronize()
            seconds = time.perf_counter() - started
            report[f"rows_{rows}_{name}"] = {"seconds": round(seconds, 3), "decode_steps": stats.decode_steps,
                                             "ms_per_decode_step": round(1000 * seconds / stats.decode_steps, 2)}
        report[f"rows_{rows}_speedup"] = round(report[f"rows_{rows}_model_forward"]["seconds"]
                                               / report[f"rows_{rows}_fused"]["seconds"], 2)
        report[f"rows_{rows}_same_tokens"] = responses["fused"] == responses["model_forward"]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="0.5b,3b", help=f"which of {sorted(RUNS) + ['sampler']}, in order")
    parser.add_argument("--out", default="results/gpu_check")
    parser.add_argument("--work", default="/tmp/gpu_check_work", help="models, caches and run folders")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the plumbing only")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU is visible: run this on a GPU machine, or pass --smoke for the CPU plumbing check")
    nb = load_notebook_module()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"device": device_facts(), "smoke": args.smoke, "runs": {}}
    for name in args.runs.split(","):
        started = time.time()
        try:
            check = check_sampler if name == "sampler" else functools.partial(check_run, name=name)
            report["runs"][name] = check(nb, work=pathlib.Path(args.work), smoke=args.smoke)
        except Exception:  # keep the other runs' figures; the report says what failed
            report["runs"][name] = {"error": traceback.format_exc()}
        report["runs"][name]["wall_seconds"] = round(time.time() - started, 1)
        (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")  # after each run: nothing lost
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
