"""What the GPU path does with memory, checked on CPU: the FSDP root's reshard setting survives generation,
gradients are freed before the next rollouts, each step records its own peak, and a smaller micro-batch resumes."""
import torch

from test_apo import TinyTraining, tiny_model_and_tokenizer


def root_reshards_after_forward(model) -> bool:
    """Whether FSDP frees the root's gathered parameters after forward (FSDP leaves a root gathered by default)."""
    return model._get_fsdp_state()._fsdp_param_group.post_forward_mesh_info is not None


def wrapped_policy(nb):
    nb.init_distributed(torch.device("cpu"))
    model, tokenizer = tiny_model_and_tokenizer(nb)
    return nb.wrap_fsdp(model, torch.device("cpu"), nb.make_config("cpu-tiny"), world_size=1), tokenizer


def test_generation_leaves_the_root_gathered_after_forward_as_fsdp_set_it(nb):
    policy, tokenizer = wrapped_policy(nb)
    batch = tokenizer(["User: 12*3=?\nAssistant: <think>"], return_tensors="pt")
    policy(**batch)  # FSDP's lazy initialisation, which sets the root's default
    layers = [m for m in policy.model.layers]
    assert not root_reshards_after_forward(policy) and all(root_reshards_after_forward(l) for l in layers)
    with nb.gathered_for_generation(policy):
        assert not any(root_reshards_after_forward(l) for l in layers)
    assert not root_reshards_after_forward(policy), "the root would be gathered again in every backward"
    assert all(root_reshards_after_forward(l) for l in layers)

    fresh, _ = wrapped_policy(nb)  # generation before any forward: the first thing stage 2 does
    with nb.gathered_for_generation(fresh):
        pass
    fresh(**batch)
    assert not root_reshards_after_forward(fresh)


def test_gradients_are_freed_by_the_step_and_each_step_records_its_peaks(nb, tmp_path):
    run = TinyTraining(nb, tmp_path)
    records = run.train(train_steps=2)
    assert all(p.grad is None for p in run.policy.parameters()), "gradients would sit beside the next KV cache"
    assert all(r["peak_memory_mb"] > 0 and "peak_reserved_mb" in r for r in records)
    assert nb.peak_reserved_memory_mb(torch.device("cpu")) is None


def test_a_smaller_micro_batch_resumes_the_run(nb, tmp_path):
    """The advice for a CUDA out-of-memory error: same run, smaller micro_batch_size, and it resumes."""
    run = TinyTraining(nb, tmp_path)
    run.train(train_steps=1, micro_batch_size=4)
    records = run.train(train_steps=2, micro_batch_size=2)
    assert [r["step"] for r in records] == [1, 2]
