"""Sampling speed on stage 1's work, measured in one run: the notebook's sampler (continuous batching), the same
sampler with the model's own forward instead of the fused decoding step, the same sampler decoding batch by batch,
the sampler of an earlier revision of the notebook, and transformers' `model.generate`, on the same base model,
prompts and settings; then how far the sampler is from this machine's limits.

It samples as stage 1 does: `num_ref_samples` responses per training prompt (the preset's curriculum levels) at
the config's temperature, `generation_batch_size` responses at once, from the cached stage 0 base model (built
when missing). Each sampler is warmed up once, then timed. Prints one JSON object.

The limits: the model's FLOPs per generated token (2 per weight, plus attention over the response's context) times
tokens per second, beside the matrix-multiply throughput this machine reaches at the decoding step's own shapes;
the bytes of KV cache attention read per second, beside the machine's copy bandwidth; and, from one more run with
attention timed, the share of the sampler's time spent in attention. Last, stage 1 whole (`sample_reference_rewards`
on the same prompts): the earlier revision's with N samples for every prompt, this revision's the same way, and this
revision's as the preset runs it (with its `adaptive_min_samples`), taking turns for a few rounds (the median counts).

    .venv/bin/python tools/bench_generation.py                       # stage 1 of the cpu preset: 1,024 prompts x 8
    .venv/bin/python tools/bench_generation.py --prompts 64 --previous 79e8044 --with-generate
"""
import dataclasses
import importlib.util
import json
import pathlib
import subprocess
import tempfile
import time

import torch
from transformers import GenerationConfig

from stage0_tools import ROOT, base_model_arguments, load_base_model, load_notebook_module

PREVIOUS = "79e8044"  # the last revision whose sampler decoded batch by batch with a growing KV cache


def transformers_generate(nb, model, tokenizer, prompts: list[str], config, samples: int) -> list[list[int]]:
    """Responses from `model.generate`, `generation_batch_size` rows per call, trimmed like the notebook's."""
    eos_ids = nb.eos_token_ids(tokenizer, model)
    settings = GenerationConfig(do_sample=True, temperature=config.temperature, top_k=0, top_p=1.0,
                                max_new_tokens=config.max_new_tokens, num_return_sequences=samples,
                                eos_token_id=sorted(eos_ids), pad_token_id=tokenizer.pad_token_id)
    batch, responses = max(1, config.generation_batch_size // samples), []
    for start in range(0, len(prompts), batch):
        encoded = tokenizer(prompts[start:start + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            output = model.generate(**encoded, generation_config=settings)
        responses += [nb.trim_at_eos(row, eos_ids)
                      for row in output[:, encoded["input_ids"].shape[1]:].tolist()]
    return responses


def file_at(revision: str, path: str, folder: pathlib.Path) -> pathlib.Path:
    """`path` as it was at git `revision`, written into `folder`."""
    source = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout
    written = folder / pathlib.Path(path).name
    written.write_text(source)
    return written


def previous_notebook(revision: str):
    """The notebook's definitions at an earlier git revision, beside this revision's `tinyzero` package, sampling
    with that revision's own `tinyzero/torch_sampler.py` (the notebook's names for it rebound) where it has one (a
    revision from before the package sampled with the notebook's own code)."""
    folder = pathlib.Path(tempfile.mkdtemp())
    (folder / "tinyzero").symlink_to(ROOT / "tinyzero")
    module = load_notebook_module(file_at(revision, "TinyZero_AstarPO.ipynb", folder))
    has_sampler = subprocess.run(["git", "cat-file", "-e", f"{revision}:tinyzero/torch_sampler.py"], cwd=ROOT,
                                 capture_output=True).returncode == 0
    if has_sampler:
        path = file_at(revision, "tinyzero/torch_sampler.py", folder)
        spec = importlib.util.spec_from_file_location(f"torch_sampler_{revision}", path)
        sampler = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sampler)
        module.sample_with_model, module.trim_at_eos = sampler.sample_with_model, sampler.trim_at_eos
    return module


def timed(run, prompts: list[str], prompt_ids: list[list[int]], seed: int, warm_up: bool = True
          ) -> tuple[float, object]:
    if warm_up:  # first-call costs are nobody's sampling time
        run(prompts[:8], prompt_ids[:8])
    torch.manual_seed(seed)
    started = time.perf_counter()
    result = run(prompts, prompt_ids)
    return time.perf_counter() - started, result


def matmul_gflops(rows: int, inner: int, columns: int, repeats: int = 200) -> float:
    """This machine's float32 matrix-multiply throughput at one shape, in GFLOP/s."""
    a, b = torch.randn(rows, inner), torch.randn(inner, columns)
    torch.mm(a, b)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * rows * inner * columns * repeats / (time.perf_counter() - started) / 1e9


def copy_gbytes_per_second(megabytes: int = 256, repeats: int = 10) -> float:
    """This machine's memory bandwidth as a large tensor copy sees it (bytes read plus bytes written)."""
    source = torch.randn(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    target.copy_(source)
    started = time.perf_counter()
    for _ in range(repeats):
        target.copy_(source)
    return 2 * source.numel() * 4 * repeats / (time.perf_counter() - started) / 1e9


def limits(model, prompt_tokens: float, response_tokens: float, tokens_per_second: float, slots: int,
           key_value_columns: int, seconds: float) -> dict:
    """Achieved FLOP/s and KV-cache bytes/s against what this machine measures at the same shapes. The bytes are
    those attention read (`key_value_columns` slot-columns per layer, keys and values) over the sampling's
    `seconds`."""
    c = model.config
    weights = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)
    weights += c.vocab_size * c.hidden_size  # the output layer (tied to the embedding in these models)
    kv_width = c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    context = prompt_tokens + response_tokens / 2  # mean context a generated token attends to
    flops_per_token = 2 * weights + 4 * c.num_hidden_layers * context * c.hidden_size
    kv_bytes_read = key_value_columns * c.num_hidden_layers * 2 * kv_width * model.dtype.itemsize
    shapes = {"qkv": (slots, c.hidden_size, c.hidden_size + 2 * kv_width),
              "mlp_up": (slots, c.hidden_size, 2 * c.intermediate_size),
              "mlp_down": (slots, c.intermediate_size, c.hidden_size),
              "lm_head": (slots, c.hidden_size, c.vocab_size)}
    peak = {name: round(matmul_gflops(*shape), 1) for name, shape in shapes.items()}
    achieved = flops_per_token * tokens_per_second / 1e9
    bandwidth = copy_gbytes_per_second()
    return {"flops_per_token": int(flops_per_token), "achieved_gflops": round(achieved, 2),
            "matmul_gflops_at_step_shapes": peak,
            "share_of_best_matmul_throughput": round(achieved / max(peak.values()), 3),
            "kv_cache_gbytes_read": round(kv_bytes_read / 1e9, 1),
            "kv_cache_gbytes_per_second": round(kv_bytes_read / seconds / 1e9, 2),
            "copy_bandwidth_gbytes_per_second": round(bandwidth, 1)}


def attention_share(run, prompts: list[str], prompt_ids: list[list[int]], seed: int) -> dict:
    """The sampler once more (already warmed up and timed), with its attention (`windowed_attention_of_step`, which
    the fused step and the model's forward both decode with) timed too: seconds in attention, in all, and the
    share."""
    from tinyzero import torch_sampler
    spent, calls = [0.0], [0]
    attend = torch_sampler.windowed_attention_of_step

    def timed_attention(*args, **kwargs):
        started = time.perf_counter()
        result = attend(*args, **kwargs)
        spent[0] += time.perf_counter() - started
        calls[0] += 1
        return result
    torch_sampler.windowed_attention_of_step = timed_attention
    try:
        seconds, _ = timed(run, prompts, prompt_ids, seed, warm_up=False)
    finally:
        torch_sampler.windowed_attention_of_step = attend
    return {"seconds": round(seconds, 2), "attention_seconds": round(spent[0], 2), "share": round(spent[0] / seconds, 3),
            "attention_calls": calls[0]}


def interleaved_rounds(runs: dict, figures, seed: int, rounds: int) -> dict:
    """Each of `runs` (by name, a function of no arguments) timed `rounds` times from `seed`, the runs taking turns
    (this machine's speed drifts over minutes): each one's seconds per round, their median (`seconds`), and
    `figures` of what its last round returned (a dict, computed outside the timing)."""
    results = {name: {"rounds": []} for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            torch.manual_seed(seed)
            started = time.perf_counter()
            returned = run()
            results[name]["rounds"].append(round(time.perf_counter() - started, 2))
            results[name] |= figures(returned)
    for result in results.values():
        result["seconds"] = sorted(result["rounds"])[len(result["rounds"]) // 2]
    return results


def stage1_rounds(variants: dict, model, tokenizer, problems: list, seed: int, rounds: int) -> dict:
    """Stage 1's reference sampling for each variant, (notebook module, config) by name, in `interleaved_rounds`:
    each one's seconds per round and their median, samples and sampled tokens. Each is warmed up on a few problems
    first."""
    for module, config in variants.values():
        module.sample_reference_rewards(model, tokenizer, problems[:8], config, show_progress=False)
    runs = {name: (lambda module=module, config=config: module.sample_reference_rewards(
        model, tokenizer, problems, config, show_progress=False)) for name, (module, config) in variants.items()}
    return interleaved_rounds(runs, lambda returned: {"samples": sum(map(len, returned[0])),
                                                      "sampled_tokens": returned[1]}, seed, rounds)


def main() -> None:
    parser = base_model_arguments(__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=None, help="training prompts per task (default: all)")
    parser.add_argument("--previous", default=PREVIOUS, help="git revision of the earlier sampler ('' skips it)")
    parser.add_argument("--with-generate", action="store_true", help="also time transformers' generate (slow)")
    parser.add_argument("--stage1-rounds", type=int, default=3, help="rounds of the stage 1 comparison (median)")
    args = parser.parse_args()
    nb, config, datasets, path, tokenizer, model = load_base_model(args.preset, args.cache_dir)
    problems = [p for task in config.tasks for p in datasets[task]["train"][:args.prompts]]
    prompts = [nb.prompt_for(p, config) for p in problems]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    samples, eos_ids = config.num_ref_samples, nb.eos_token_ids(tokenizer, model)

    def notebook_sampler(refill: bool, fused: bool = True):
        return lambda texts, ids: nb.sample_with_model(model, ids, samples, False, config.temperature,
                                            config.max_new_tokens, eos_ids, tokenizer.pad_token_id,
                                            config.generation_batch_size, refill=refill, fused=fused)

    runs = {"refill": notebook_sampler(True), "refill_model_forward": notebook_sampler(True, fused=False),
            "batch_by_batch": notebook_sampler(False)}
    if args.previous:
        previous = previous_notebook(args.previous)
        runs[f"previous_{args.previous}"] = lambda texts, ids: previous.generate(
            model, tokenizer, texts, config, greedy=False, samples_per_prompt=samples, show_progress=False).response_ids
    if args.with_generate:
        runs["transformers_generate"] = lambda texts, ids: transformers_generate(nb, model, tokenizer, texts, config,
                                                                                 samples)
    report = {"base_model": str(pathlib.Path(path).relative_to(ROOT)) if path.startswith(str(ROOT)) else path,
              "prompts": len(prompts), "responses": len(prompts) * samples, "max_new_tokens": config.max_new_tokens,
              "generation_batch_size": config.generation_batch_size, "threads": torch.get_num_threads()}
    for name, run in runs.items():
        seconds, result = timed(run, prompts, prompt_ids, args.seed)
        responses, stats = result if isinstance(result, tuple) else (result, None)
        tokens = sum(map(len, responses))
        report[name] = {"seconds": round(seconds, 2), "tokens_per_second": round(tokens / seconds, 1),
                        "mean_response_tokens": round(tokens / len(responses), 2)}
        if stats is not None:
            report[name] |= {"decode_steps": stats.decode_steps, "prefills": stats.prefills,
                             "busy_slot_share": round(stats.busy_slot_steps / max(1, stats.slot_steps), 3),
                             "key_value_columns": stats.key_value_columns}
    fastest = report["refill"]
    report["speedup_over"] = {name: round(report[name]["seconds"] / fastest["seconds"], 2)
                              for name in runs if name != "refill"}
    report["limits"] = limits(model, sum(map(len, prompt_ids)) / len(prompt_ids), fastest["mean_response_tokens"],
                              fastest["tokens_per_second"], config.generation_batch_size,
                              fastest["key_value_columns"], fastest["seconds"])
    report["attention_share"] = attention_share(runs["refill"], prompts, prompt_ids, args.seed)
    if args.previous:  # stage 1 whole, as the preset runs it now (adaptive sampling included) and as it ran then
        full, then = dataclasses.replace(config, adaptive_min_samples=0), f"previous_{args.previous}_full"
        whole = stage1_rounds({then: (previous, full), "now_full": (nb, full), "now_preset": (nb, config)}, model,
                              tokenizer, problems, args.seed, args.stage1_rounds)
        whole["now_preset"]["adaptive_min_samples"] = config.adaptive_min_samples
        whole["speedup_over_previous"] = {name: round(whole[then]["seconds"] / whole[name]["seconds"], 2)
                                          for name in ("now_full", "now_preset")}
        report["stage1"] = whole
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
