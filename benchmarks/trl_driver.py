"""Run Hugging Face TRL 1.16's A*PO (`trl.experimental.a2po.A2POTrainer`) or GRPO (`trl.GRPOTrainer`) on the setup of
one notebook run (its config, base model, tokenizer, training prompts, reward and held-out greedy evaluation, all
taken from the notebook module), and write one JSON file of measurements.

    .venv/bin/pip install -r requirements.txt -r requirements-bench.txt
    .venv/bin/python benchmarks/trl_driver.py --trainer a2po --preset cpu-tiny --out /tmp/trl-a2po.json
    .venv/bin/python benchmarks/trl_driver.py --trainer grpo --num-generations 8 \
        --overrides '{"learning_rate": 3e-4, "train_steps": 40, "eval_every": 10}' --out /tmp/trl-grpo.json

Run one trainer per process: `peak_memory_mb` is the process's peak resident memory on CPU.

Output: trainer, preset, seed, overrides, num_generations (GRPO only), settings (the TRL config fields set), unmatched
(UNMATCHED), stage1_seconds (A2PO's V* estimation; None for GRPO), steps [{step, seconds, response_tokens, reward,
phases {generation, scoring, reference (A2PO), rest: log-prob passes with gradient, backward, optimizer}}],
evals [{step, train_seconds, accuracy {eval set: greedy accuracy}}], train_call_seconds (trainer.train() less the
evaluations), eval_seconds, peak_memory_mb, vllm_imported (whether vLLM was loaded: it should not be), total_seconds
(from loading the notebook module to the end).

Timing. transformers 5.23's Trainer runs each optimizer step as: fetch the step's prompts from the dataloader
(`get_batch_samples`), `on_step_begin`, `training_step` (whose `_prepare_inputs` is where TRL generates, scores and
takes the reference log-probs), `compute_loss`, backward, gradient clipping, `optimizer.step`, `lr_scheduler.step`,
`on_step_end`, then logging (`on_log`). A step's `seconds` run from `on_step_begin` to `on_step_end`: generation
through the optimizer step, as the notebook's `step_seconds`; the prompt fetch and logging are left out. A*PO's stage 1
runs in `A2POTrainer.train()` before the loop and is timed on its own (`stage1_seconds`). An evaluation's
`train_seconds` is stage 1 plus the steps so far (the notebook's stage1_vstar + stage2_train); evaluation runs in
`on_step_end` after the step's clock stops.
"""
import argparse
import json
import pathlib
import sys
import tempfile
import time

import datasets
import torch
import transformers
from transformers import PrinterCallback, TrainerCallback
import trl.import_utils as trl_import_utils

# TRL imports vLLM wherever it is installed (it is here, for the notebook's rollout_engine="vllm"), though these runs
# generate with transformers: an unused import that would add about 150 MB to TRL's peak memory and seconds to its start.
trl_import_utils.is_vllm_available = lambda *args, **kwargs: False
from trl import GRPOConfig, GRPOTrainer  # noqa: E402
from trl.experimental.a2po import A2POConfig, A2POTrainer  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from stage0_tools import load_base_model  # noqa: E402

# Settings of the notebook run that TRL cannot reproduce here (checked against the TRL 1.16 and notebook sources).
UNMATCHED = [
    "prompt order: TRL's own seeded samplers (A2PO: the Trainer's random sampler; GRPO: RepeatSampler), a new "
    "permutation per epoch, vs the notebook's step_prompt_indices (a per-epoch shuffle seeded by 'seed-epoch-k' that "
    "fills a step across an epoch boundary; TRL here drops an epoch's incomplete last batch)",
    "random streams: TRL seeds once with set_seed(seed) when the trainer is built; the notebook reseeds torch with "
    "seed*1009 before stage 1 and before stage 2, so the sampled responses differ",
    "generation: HF generate() keeps finished rows in the batch (padding them) until every row ends or "
    "max_new_tokens is reached; the notebook's decode loop drops a row and its KV cache at its first EOS",
    "generation batching: TRL generates a step's responses in one generate() call (GRPO: prompts_per_step * G rows; "
    "stage 1: per_device_train_batch_size prompts * N per call); the notebook splits by generation_batch_size rows",
    "generation mode: TRL samples with the policy in train mode, the notebook in eval mode (the same here: the Qwen2 "
    "base model has no active dropout, attention_dropout=0)",
    "backward: TRL runs one forward/backward over all of a step's responses; the notebook accumulates gradients "
    "over micro_batch_size responses sorted by length (the same loss, different peak memory and speed)",
    "parallelism: no FSDP (fully_shard) on CPU in TRL; the notebook wraps the policy with FSDP2 even on one process",
    "V* cache: TRL re-estimates V* at every run (stage 1 always runs); the notebook reuses V* cached on disk",
    "V* precision: TRL's logsumexp in float32, the notebook's in float64",
    "drop_all_failed vs filter_all_incorrect: TRL drops a prompt when its N rewards sum to 0, the notebook when none "
    "is 1.0; with format_score 0.1 a prompt of only well-formed wrong answers is dropped by the notebook only",
    "reward: A2PO documents a binary reward in {0, 1}; the notebook's reward gives format_score (0.1) to a "
    "well-formed wrong answer, passed to TRL unchanged",
    "GRPO loss settings are TRL's defaults (beta=0, epsilon=0.2, scale_rewards='group', loss_type='dapo') and G comes "
    "from --num-generations; the notebook's own grpo_* Config fields are not read",
    "AdamW weight decay: the Trainer exempts biases and norm weights; the notebook decays every parameter (the same "
    "while Config.weight_decay is 0, as in every preset)",
    "warm-up: transformers' constant_with_warmup gives step k (0-based) lr*k/warmup_steps, so the first step has lr 0; "
    "the notebook gives 1-based step s lr*min(1, s/warmup_steps) (the same while warmup_steps is 0)",
]


def unsupported_settings(config) -> list[str]:
    """Notebook options with no counterpart in TRL's trainers; the driver refuses configs that use them."""
    checks = {"reference_refresh_every": config.reference_refresh_every > 0, "entropy_coef": config.entropy_coef > 0,
              "adaptive_min_samples": config.adaptive_min_samples > 0,
              "curriculum_schedule": bool(config.curriculum) and config.curriculum_schedule == "sequential"}
    return [name for name, used in checks.items() if used]


def trl_settings(config, trainer: str, num_generations: int) -> dict:
    """The TRL config fields that map the notebook `config` (one optimizer step = one generate call over the step's
    prompts, as in the notebook)."""
    cpu = not torch.cuda.is_available()
    common = dict(
        learning_rate=config.learning_rate, optim="adamw_torch", weight_decay=config.weight_decay,
        lr_scheduler_type="constant_with_warmup" if config.warmup_steps else "constant",  # the default decays linearly
        warmup_steps=config.warmup_steps, max_grad_norm=config.grad_clip, max_steps=config.train_steps,
        gradient_accumulation_steps=1, temperature=config.temperature, max_completion_length=config.max_new_tokens,
        top_p=1.0, top_k=0,  # 0, not None: generate() replaces a None top_k by transformers' default of 50
        seed=config.seed, use_cpu=cpu, bf16=not cpu and config.dtype == "bfloat16",  # TRL's default bf16 is True
        fp16=not cpu and config.dtype == "float16", activation_checkpointing=config.gradient_checkpointing,  # TRL: on
        report_to="none", save_strategy="no", logging_steps=1, dataloader_num_workers=0, dataloader_drop_last=True,
        disable_tqdm=True)
    if trainer == "a2po":
        return common | dict(per_device_train_batch_size=config.prompts_per_step, num_value_samples=config.num_ref_samples,
                             beta1=config.beta1, beta2=config.beta2, filter_all_incorrect=config.drop_all_failed,
                             max_prompt_length=None)  # the notebook never truncates a prompt
    return common | dict(per_device_train_batch_size=config.prompts_per_step * num_generations,  # TRL counts completions
                         num_generations=num_generations, beta=0.0, epsilon=0.2, scale_rewards="group",
                         loss_type="dapo", num_iterations=1)


def trl_config(config, trainer: str, num_generations: int, output_dir: str):
    """The A2POConfig or GRPOConfig of `trl_settings`."""
    config_class = A2POConfig if trainer == "a2po" else GRPOConfig
    return config_class(output_dir=output_dir, **trl_settings(config, trainer, num_generations))


def training_dataset(prompt_for, problems: list, config) -> datasets.Dataset:
    """One row per training problem: the notebook's raw-text prompt (a plain string, so TRL applies no chat template)
    and the problem's index, which the reward function receives."""
    return datasets.Dataset.from_dict({"prompt": [prompt_for(p, config) for p in problems],
                                       "problem_index": list(range(len(problems)))})


def make_reward_function(reward_for, problems: list, format_score: float):
    """A TRL reward function that scores each completion with the notebook's `reward_for`."""
    def notebook_reward(prompts, completions, problem_index, **kwargs) -> list[float]:
        return [reward_for(problems[i], completion, format_score) for i, completion in zip(problem_index, completions)]
    return notebook_reward


def response_tokens_of(batch: dict) -> float:
    """Mean completion tokens (up to and including the first EOS) of an A2PO training batch."""
    return batch["attention_mask"][:, -batch["logits_to_keep"]:].sum(-1).float().mean().item()


class Measurements(TrainerCallback):
    """Per-step wall seconds, mean reward and response tokens, and the held-out greedy evaluations."""

    def __init__(self, greedy_accuracies, tokenizer, eval_problems: dict, config):
        self.greedy_accuracies, self.tokenizer, self.eval_problems, self.config = \
            greedy_accuracies, tokenizer, eval_problems, config
        self.stage1_seconds, self.eval_seconds, self.steps, self.evals = None, 0.0, [], []
        self.step_started, self.response_tokens, self.phases = None, None, {}

    def timed_phase(self, phase: str, function, only_without_grad: bool = False):
        """`function`, adding its wall seconds to this step's `phase` (with `only_without_grad`: only the calls made
        under torch.no_grad, such as the reference model's log-probs)."""
        def timed(*args, **kwargs):
            if only_without_grad and torch.is_grad_enabled():
                return function(*args, **kwargs)
            started = time.perf_counter()
            result = function(*args, **kwargs)
            if self.step_started is not None:
                self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - started
            return result
        return timed

    def timed_stage1(self, estimate):
        """`estimate` (A2PO's stage 1), recording its wall seconds."""
        def timed(*args, **kwargs):
            started = time.perf_counter()
            result = estimate(*args, **kwargs)
            self.stage1_seconds = time.perf_counter() - started
            return result
        return timed

    def counting_tokens(self, prepare_inputs):
        """`prepare_inputs` (A2PO's generation), recording the batch's mean response tokens."""
        def counted(*args, **kwargs):
            batch = prepare_inputs(*args, **kwargs)
            self.response_tokens = response_tokens_of(batch)
            return batch
        return counted

    def train_seconds(self) -> float:
        """Stage 1 plus the steps so far (evaluation excluded)."""
        return (self.stage1_seconds or 0.0) + sum(step["seconds"] for step in self.steps)

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_started, self.response_tokens, self.phases = time.perf_counter(), None, {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        seconds = time.perf_counter() - self.step_started
        record = {"step": state.global_step, "seconds": seconds,
                  "phases": self.phases | {"rest": seconds - sum(self.phases.values())}}  # log-probs, backward, optimizer
        if self.response_tokens is not None:
            record["response_tokens"] = self.response_tokens
        self.steps.append(record)
        config, step = self.config, state.global_step
        if config.eval_every and (step % config.eval_every == 0 or step == config.train_steps):
            started, training = time.perf_counter(), model.training
            accuracy = self.greedy_accuracies(model, self.tokenizer, self.eval_problems, config, rank=0, world_size=1)
            model.train(training)  # greedy_accuracies leaves the model in eval mode
            self.eval_seconds += time.perf_counter() - started
            self.evals.append({"step": step, "train_seconds": self.train_seconds(), "accuracy": accuracy})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.steps or self.steps[-1]["step"] != state.global_step:
            return
        if "reward" in logs:
            self.steps[-1]["reward"] = logs["reward"]
        if "completions/mean_length" in logs:  # GRPO's own metric: tokens up to and including the first EOS
            self.steps[-1]["response_tokens"] = logs["completions/mean_length"]


def run(trainer_name: str, preset: str, seed: int, cache_dir: str, overrides: dict, num_generations: int) -> dict:
    """Train with TRL on the notebook's setup; return the measurements."""
    started = time.perf_counter()
    nb, config, splits, _, tokenizer, model = load_base_model(preset, cache_dir, seed=seed, **overrides)
    unsupported = unsupported_settings(config)
    if unsupported:
        raise ValueError(f"TRL has no counterpart for these notebook settings: {unsupported}")
    train_problems = [p for task in config.tasks for p in splits[task]["train"]]  # the notebook's training prompts
    measurements = Measurements(nb.greedy_accuracies, tokenizer, nb.periodic_eval_problems(splits, config), config)
    trainer_class = A2POTrainer if trainer_name == "a2po" else GRPOTrainer
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = trainer_class(model=model, reward_funcs=make_reward_function(nb.reward_for, train_problems,
                                                                                config.format_score),
                                args=trl_config(config, trainer_name, num_generations, output_dir),
                                train_dataset=training_dataset(nb.prompt_for, train_problems, config),
                                processing_class=tokenizer, callbacks=[measurements])
        trainer.remove_callback(PrinterCallback)  # it would print every step's log
        trainer._calculate_rewards = measurements.timed_phase("scoring", trainer._calculate_rewards)
        if trainer_name == "a2po":
            trainer._estimate_optimal_values = measurements.timed_stage1(trainer._estimate_optimal_values)
            trainer._prepare_inputs = measurements.counting_tokens(trainer._prepare_inputs)
            trainer.model.generate = measurements.timed_phase("generation", trainer.model.generate)
            trainer._get_sequence_logps = measurements.timed_phase("reference", trainer._get_sequence_logps,
                                                                   only_without_grad=True)
        else:
            trainer._generate = measurements.timed_phase("generation", trainer._generate)  # sampling and decoding
        train_started = time.perf_counter()
        trainer.train()
        train_call_seconds = time.perf_counter() - train_started - measurements.eval_seconds
    return {"trainer": trainer_name, "preset": preset, "seed": seed, "overrides": overrides,
            **({"num_generations": num_generations} if trainer_name == "grpo" else {}),
            "settings": trl_settings(config, trainer_name, num_generations), "unmatched": UNMATCHED,
            "stage1_seconds": measurements.stage1_seconds, "steps": measurements.steps, "evals": measurements.evals,
            "train_call_seconds": train_call_seconds, "eval_seconds": measurements.eval_seconds,
            "peak_memory_mb": nb.peak_memory_mb(torch.device("cpu")), "vllm_imported": "vllm" in sys.modules,
            "total_seconds": time.perf_counter() - started}


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trainer", required=True, choices=["a2po", "grpo"])
    parser.add_argument("--preset", default="cpu", choices=["cpu", "cpu-tiny"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=str(ROOT / "artifacts"), help="where stage 0 base models are cached")
    parser.add_argument("--overrides", type=json.loads, default={}, help="JSON object of notebook Config fields")
    parser.add_argument("--num-generations", type=int, default=8, help="GRPO's G, completions per prompt")
    parser.add_argument("--out", required=True, help="path of the JSON file to write")
    args = parser.parse_args(argv)
    if not isinstance(args.overrides, dict) or {"seed", "cache_dir", "preset"} & set(args.overrides):
        parser.error("--overrides must be a JSON object without seed, cache_dir or preset (they have their own options)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    report = run(args.trainer, args.preset, args.seed, args.cache_dir, args.overrides, args.num_generations)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    steps, stage1 = report["steps"], report["stage1_seconds"]
    final = report["evals"][-1]["accuracy"] if report["evals"] else None
    print(f"{args.trainer} ({args.preset}, seed {args.seed}): {len(steps)} steps, "
          f"{sum(s['seconds'] for s in steps) / max(1, len(steps)):.2f} s per step, stage 1 "
          f"{'none' if stage1 is None else f'{stage1:.1f} s'}, peak {report['peak_memory_mb']:.0f} MB; "
          f"final greedy accuracy {final}; wrote {args.out}")


if __name__ == "__main__":
    main()
