"""Sampling engines measured in one run: the notebook's torch sampler, transformers' `generate` and vLLM (its CPU
build here), in generated tokens per second, and a stage 2 step with each rollout engine, the weight sync
included.

Two models with random weights (speed does not depend on what they learnt): a small Qwen2 model of head size
64 with the notebook's character tokenizer, and Qwen2.5-0.5B's published shape with Qwen2.5's tokenizer. The
same prompts (countdown and multiplication) go to every engine, sampled at temperature 1 as rollouts are.

    .venv/bin/python tools/bench_vllm.py                      # writes results/vllm_speed.json
    .venv/bin/python tools/bench_vllm.py --prompts 8 --new-tokens 16 --step-prompts 4 --out /tmp/smoke.json
"""
import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from bench_generation import transformers_generate
from stage0_tools import ROOT, load_notebook_module

CPU = torch.device("cpu")
QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151_936, max_position_embeddings=32_768, tie_word_embeddings=True)
SMALL_HEAD64 = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=True)


def save_model(nb, name: str, folder: str) -> tuple:
    """A random-weight model of the named shape and its tokenizer, saved in Hugging Face format."""
    if name == "qwen2.5-0.5b":
        from tinyzero.qwen_tokenizer import qwen25_tokenizer
        tokenizer = qwen25_tokenizer()
    else:
        tokenizer = nb.build_char_tokenizer()
    shape = dict(QWEN25_05B if name == "qwen2.5-0.5b" else SMALL_HEAD64)
    shape.setdefault("vocab_size", len(tokenizer))
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**shape, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                                         pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model.eval(), tokenizer


def timed(run) -> tuple[float, object]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def sampling_speeds(nb, model, tokenizer, engine, prompts: list[str], config) -> dict:
    """Generated tokens per second of each engine on `prompts` (one warm-up call each first)."""
    runs = {"torch sampler": lambda batch: nb.generate(model, tokenizer, batch, config, greedy=False,
                                                       show_progress=False).response_ids,
            "transformers generate": lambda batch: transformers_generate(nb, model, tokenizer, batch, config, 1),
            "vllm": lambda batch: nb.generate(model, tokenizer, batch, config, greedy=False, show_progress=False,
                                              engine=engine).response_ids}
    report = {}
    for name, run in runs.items():
        torch.manual_seed(1)
        run(prompts[:4])
        torch.manual_seed(2)
        seconds, responses = timed(lambda: run(prompts))
        tokens = sum(map(len, responses))
        report[name] = {"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_second": round(tokens / seconds, 1)}
    for name in ("torch sampler", "transformers generate"):
        report[f"vllm / {name}"] = round(report["vllm"]["tokens_per_second"] / report[name]["tokens_per_second"], 2)
    return report


def stage2_steps(nb, folder: str, tokenizer, engine, problems: list, config, steps: int) -> dict:
    """Seconds of `steps` stage 2 steps from the same start with each rollout engine (after one untimed step)."""
    nb.init_distributed(CPU)
    report = {}
    for name, used in (("torch", None), ("vllm", engine)):
        policy = nb.wrap_fsdp(nb.load_causal_lm(folder, config, CPU), CPU, config, world_size=1)
        reference = nb.freeze(nb.load_causal_lm(folder, config, CPU))
        optimizer = torch.optim.AdamW(policy.parameters(), lr=config.learning_rate)
        torch.manual_seed(3)
        records = [nb.stage2_step(policy, reference, tokenizer, problems, [0.5] * len(problems), optimizer, config,
                                  CPU, step, 1, used) for step in range(steps + 1)][1:]
        mean = lambda key, digits=3: round(sum(r.get(key, 0.0) for r in records) / len(records), digits)
        report[name] = {"step_seconds": mean("step_seconds"), "generation_seconds": mean("seconds/generation"),
                        "sync_seconds": mean("seconds/sync"), "response_tokens": mean("response_tokens"),
                        "sampler_logprob_gap": mean("sampler_logprob_gap", 8) if used else None,
                        "phases": {key.split("/")[1]: mean(key) for key in records[0] if key.startswith("seconds/")}}
        report[name]["sync_share_of_step"] = round(report[name]["sync_seconds"] / report[name]["step_seconds"], 4)
    report["torch / vllm step seconds"] = round(report["torch"]["step_seconds"] / report["vllm"]["step_seconds"], 2)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="small-head64,qwen2.5-0.5b")
    parser.add_argument("--prompts", type=int, default=64, help="prompts sampled (half countdown, half multiplication)")
    parser.add_argument("--new-tokens", type=int, default=128, help="max_new_tokens of the sampling comparison")
    parser.add_argument("--step-prompts", type=int, default=16, help="prompts per timed stage 2 step (small model)")
    parser.add_argument("--step-prompts-05b", type=int, default=8, help="prompts per timed stage 2 step (0.5B)")
    parser.add_argument("--steps", type=int, default=2, help="timed stage 2 steps per engine (small model; 0.5B: 1)")
    parser.add_argument("--out", default=str(ROOT / "results" / "vllm_speed.json"))
    args = parser.parse_args()
    names = args.models.split(",")
    if len(names) > 1:  # one process per model: one vLLM engine per process
        report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
                  "torch_threads": torch.get_num_threads(),
                  "command": " ".join(["tools/bench_vllm.py"] + sys.argv[1:]), "models": {}}
        for name in names:
            with tempfile.NamedTemporaryFile(suffix=".json") as part:
                command = [sys.executable, __file__, *sys.argv[1:], "--models", name, "--out", part.name]
                subprocess.run(command, check=True)
                report["models"].update(json.load(open(part.name))["models"])
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
        print(json.dumps(report, indent=1))
        return
    nb = load_notebook_module()
    report = {"models": {}}
    for name in names:
        qwen = name == "qwen2.5-0.5b"
        with tempfile.TemporaryDirectory() as folder:
            model, tokenizer = save_model(nb, name, folder)
            config = nb.make_config("cpu", device="cpu", max_new_tokens=args.new_tokens,
                                    generation_batch_size=args.prompts, prompt_template="tinyzero" if qwen else "compact")
            datasets = nb.build_datasets(config)
            problems = [p for task in config.tasks for p in datasets[task]["train"][:args.prompts // 2]]
            prompts = [nb.prompt_for(p, config) for p in problems]
            engine_seconds, engine = timed(lambda: nb.start_rollout_engine(folder, model, tokenizer, datasets, config,
                                                                           CPU, world_size=1))
            entry = {"parameters": sum(p.numel() for p in model.parameters()), "vocab": model.config.vocab_size,
                     "prompts": len(prompts), "max_new_tokens": args.new_tokens,
                     "mean_prompt_tokens": round(sum(len(tokenizer(p)["input_ids"]) for p in prompts) / len(prompts), 1),
                     "engine_start_seconds": round(engine_seconds, 1),
                     "sampling": sampling_speeds(nb, model, tokenizer, engine, prompts, config)}
            print(json.dumps({name: entry}), flush=True)
            step_prompts = args.step_prompts_05b if qwen else args.step_prompts
            step_config = dataclasses.replace(config, prompts_per_step=step_prompts,
                                              micro_batch_size=min(4 if qwen else 16, step_prompts),
                                              max_new_tokens=min(args.new_tokens, 64 if qwen else args.new_tokens))
            entry["stage2_step"] = dict(stage2_steps(nb, folder, tokenizer, engine, problems[:step_prompts],
                                                     step_config, 1 if qwen else args.steps),
                                        prompts_per_step=step_prompts, max_new_tokens=step_config.max_new_tokens)
            print(json.dumps({name: entry["stage2_step"]}), flush=True)
            report["models"][name] = entry
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
