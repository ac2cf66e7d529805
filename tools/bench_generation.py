"""Sampling speed: the notebook's `generate` (finished responses leave the batch) against transformers'
`model.generate` (every row decodes until the batch's longest response ends), on the same base model,
prompts and settings, measured in one run.

It samples as stage 1 does: `num_ref_samples` responses per training prompt at the config's
temperature, `generation_batch_size` rows per call, from the cached stage 0 base model (built when
missing). Prints one JSON object with both timings and their ratio.

    .venv/bin/python tools/bench_generation.py --prompts 128
"""
import json
import pathlib
import time

import torch
from transformers import GenerationConfig

from stage0_tools import ROOT, base_model_arguments, load_base_model


def transformers_generate(nb, model, tokenizer, prompts: list[str], config, samples: int) -> list[list[int]]:
    """Responses from `model.generate`, batched and trimmed like the notebook's."""
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


def timed(run) -> tuple[float, list[list[int]]]:
    started = time.perf_counter()
    responses = run()
    return time.perf_counter() - started, responses


def main() -> None:
    parser = base_model_arguments(__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=128, help="training prompts per task")
    args = parser.parse_args()
    # the training prompts of the configured levels only, as when the benchmark was first recorded
    nb, config, datasets, path, tokenizer, model = load_base_model(args.preset, args.cache_dir, curriculum={})
    prompts = [nb.prompt_for(p, config) for task in config.tasks for p in datasets[task]["train"][:args.prompts]]
    samples = config.num_ref_samples
    torch.manual_seed(args.seed)  # one small warm-up call each way, so neither pays first-call costs in its timing
    transformers_generate(nb, model, tokenizer, prompts[:8], config, samples)
    nb.generate(model, tokenizer, prompts[:8], config, greedy=False, samples_per_prompt=samples, show_progress=False)
    torch.manual_seed(args.seed)
    library_seconds, library = timed(lambda: transformers_generate(nb, model, tokenizer, prompts, config, samples))
    torch.manual_seed(args.seed)
    notebook_seconds, notebook = timed(lambda: nb.generate(model, tokenizer, prompts, config, greedy=False,
                                                           samples_per_prompt=samples, show_progress=False).response_ids)
    report = {"base_model": str(pathlib.Path(path).relative_to(ROOT)) if path.startswith(str(ROOT)) else path,
              "responses": len(prompts) * samples, "generation_batch_size": config.generation_batch_size,
              "max_new_tokens": config.max_new_tokens, "threads": torch.get_num_threads(),
              "transformers_generate": {"seconds": round(library_seconds, 3),
                                        "mean_response_tokens": sum(map(len, library)) / len(library)},
              "notebook_generate": {"seconds": round(notebook_seconds, 3),
                                    "mean_response_tokens": sum(map(len, notebook)) / len(notebook)},
              "speedup": round(library_seconds / notebook_seconds, 2)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
