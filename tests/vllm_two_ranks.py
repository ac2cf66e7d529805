"""Run by tests/test_vllm_torchrun.py under `torchrun --nproc_per_node=2`: each rank's vLLM engine (external
launcher) samples its share of a stage 2 step, receives the FSDP-sharded policy's new weights gathered parameter
by parameter, and then decodes as the policy does. Prints one line per rank."""
import sys

import torch
import torch.distributed as dist

from notebook_module import load_notebook_module
from test_vllm_engine import VLLM_TINY

nb = load_notebook_module()
cpu = torch.device("cpu")
rank, world_size = nb.init_distributed(cpu)
config = nb.make_config("cpu-tiny", cache_dir=sys.argv[1], **dict(VLLM_TINY, prompts_per_step=8))
datasets = nb.build_datasets(config)
path = nb.ensure_base_model(config, nb.heldout_keys(datasets), build=rank == 0)
tokenizer = nb.load_tokenizer(path)
policy = nb.wrap_fsdp(nb.load_causal_lm(path, config, cpu), cpu, config, world_size)
reference = nb.freeze(nb.load_causal_lm(path, config, cpu))
engine = nb.start_rollout_engine(path, reference, tokenizer, datasets, config, cpu, world_size)
optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-2)
problems = datasets["multiplication"]["train"][rank:8:world_size]
record = nb.stage2_step(policy, reference, tokenizer, problems, [0.5] * len(problems), optimizer, config, cpu, 1,
                        world_size, engine)
prompts = [nb.prompt_for(p, config) for p in datasets["multiplication"]["test"][rank::world_size][:16]]
with nb.gathered_for_generation(policy):
    by_policy = nb.generate(policy, tokenizer, prompts, config, greedy=True, show_progress=False).response_ids
by_engine = nb.generate(policy, tokenizer, prompts, config, greedy=True, show_progress=False,
                        engine=engine).response_ids
by_base = nb.generate(reference, tokenizer, prompts, config, greedy=True, show_progress=False).response_ids
print(f"rank {rank}: synced {by_engine == by_policy}, changed {by_policy != by_base}, "
      f"gap {record['sampler_logprob_gap']:.2e}, sync {record['seconds/sync']:.3f} s", flush=True)
dist.barrier()
dist.destroy_process_group()
