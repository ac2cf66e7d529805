"""The notebook as a two-process torchrun job on CPU (gloo), launched the way modal_app.py launches
several GPUs: papermill injects the parameters, nbconvert exports a script, torchrun runs it.

The end-to-end test needs the notebook's per-rank debug log: with TINYZERO_DEBUG_RANK_LOG set to a
folder, every rank appends {rank, step, indices, policy, shard, reference} per step to
`<folder>/rank<r>.jsonl`, where the last three are digests of the gathered policy, of the rank's own
shard and of its reference copy (see `tensor_digest` below for how they are computed).

Set TINYZERO_TEST_NOTEBOOK to run these tests against another build of the notebook.
"""
import hashlib
import json
import os
import pathlib
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import modal_app  # noqa: E402

NOTEBOOK = pathlib.Path(os.environ.get("TINYZERO_TEST_NOTEBOOK", modal_app.NOTEBOOK))
WORLD_SIZE = 2
# A rank that waits in a collective for more than TIMEOUT_SECONDS fails the run. Each rank's evaluation is made to
# last EVAL_SECONDS longer than that (TINYZERO_DEBUG_EVAL_SECONDS): the run passes only if every rank evaluates
# its share at the same time, and none waits in a collective while another evaluates alone (as rank 1 did while
# rank 0 evaluated the base model, which NCCL's watchdog ends after 10 minutes).
TIMEOUT_SECONDS, EVAL_SECONDS = 8, 12
FAST_OVERRIDES = dict(max_new_tokens=16, test_prompts_per_task=4, eval_prompts_per_task=4,
                      multiplication_eval_levels=["2x1", "3x1"], num_ref_samples=2, pass_k=1,
                      reference_refresh_every=2, curriculum={"multiplication": [["2x1", 0.5], ["3x1", 0.5]]},
                      distributed_timeout_minutes=TIMEOUT_SECONDS / 60)
FAST_TASKS = ["multiplication"]
# What a finished multi-GPU run folder holds: the notebook's outputs (written by rank 0 only) and
# the launcher's prepared notebook, exported script and log. Anything else came from somewhere else.
EXPECTED_RUN_FILES = {"base_eval.json", "checkpoint.pt", "metrics.jsonl", "summary.json", "training_curves.png",
                      "vstar_histogram.png", "final_model", "reference-step2", modal_app.PREPARED_NOTEBOOK,
                      modal_app.TORCHRUN_SCRIPT, modal_app.TORCHRUN_LOG}


def tensor_digest(tensors: dict) -> str:
    """First 16 hex digits of sha256 over each name and its tensor's float32 bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize("count,prompts_per_step", [(32, 8), (16, 8), (21, 6), (7, 4)])
def test_ranks_split_each_steps_prompts(nb, count, prompts_per_step):
    """Rank shares of a step are disjoint, cover the whole step, and match the one-process order."""
    for step in range(1, 12):
        whole = nb.step_prompt_indices(step, count, prompts_per_step, seed=3)
        shares = [nb.step_prompt_indices(step, count, prompts_per_step, 3, rank, WORLD_SIZE)
                  for rank in range(WORLD_SIZE)]
        assert sorted(shares[0] + shares[1]) == sorted(whole)
        assert len(shares[0]) + len(shares[1]) == prompts_per_step
        if len(set(whole)) == len(whole):  # a step that straddles two epochs may hold a prompt twice
            assert not set(shares[0]) & set(shares[1])


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory):
    """One finished two-process cpu-tiny run (module-scoped: it takes a while)."""
    base = tmp_path_factory.mktemp("torchrun")
    debug = base / "rank_log"
    saved = {key: os.environ.get(key) for key in ("TINYZERO_DEBUG_RANK_LOG", "OMP_NUM_THREADS",
                                                  "TINYZERO_DEBUG_EVAL_SECONDS")}
    os.environ.update(TINYZERO_DEBUG_RANK_LOG=str(debug), OMP_NUM_THREADS="1", TINYZERO_DEBUG_EVAL_SECONDS=str(EVAL_SECONDS))
    try:
        result = modal_app.run_notebook("cpu-tiny", seed=0, run_name="ddp", gpus=WORLD_SIZE,
                                        volume_root=str(base / "runs"), cache_dir=str(base / "cache"),
                                        tasks=FAST_TASKS, config_overrides=FAST_OVERRIDES, notebook=NOTEBOOK)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return base, pathlib.Path(result["run_dir"]), debug, result


def read_jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_only_rank_zero_writes_results(torchrun_run):
    base, run_dir, _, result = torchrun_run
    assert {p.name for p in run_dir.iterdir()} == EXPECTED_RUN_FILES
    leftovers = [p for p in base.rglob("*") if ".tmp-" in p.name or ".partial-" in p.name]
    assert leftovers == [], f"unfinished atomic writes left behind: {leftovers}"
    assert [p.relative_to(base) for p in base.rglob("metrics.jsonl")] == [pathlib.Path("runs/ddp/metrics.jsonl")]
    assert {"model.safetensors", "config.json"} <= {p.name for p in (run_dir / "final_model").iterdir()}
    steps = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) == 4, "each step logged exactly once"
    summary = result["summary"]
    assert summary["world_size"] == WORLD_SIZE and summary["steps"] == 4
    assert not modal_app.uses_magics((run_dir / modal_app.TORCHRUN_SCRIPT).read_text())


def test_only_rank_zero_prints(torchrun_run):
    _, run_dir, _, _ = torchrun_run
    log = (run_dir / modal_app.TORCHRUN_LOG).read_text()
    for line in ("training prompts, ", "base model: ", "stage 2 trains on "):  # printed by the notebook's cells
        assert log.count(line) == 1, f"{line!r} printed {log.count(line)} times by {WORLD_SIZE} ranks"


def rank_logs(debug: pathlib.Path) -> list[list[dict]]:
    if not debug.is_dir():
        pytest.fail("the notebook wrote no per-rank log: it lacks the TINYZERO_DEBUG_RANK_LOG hook "
                    "(log_rank_state in the training loop)")
    logs = [read_jsonl(debug / f"rank{rank}.jsonl") for rank in range(WORLD_SIZE)]
    assert sorted(p.name for p in debug.iterdir()) == [f"rank{rank}.jsonl" for rank in range(WORLD_SIZE)]
    for rank, records in enumerate(logs):
        assert [r["step"] for r in records] == [1, 2, 3, 4]
        assert {r["rank"] for r in records} == {rank}
    return logs


def test_ranks_trained_on_different_prompts(torchrun_run, nb):
    _, _, debug, result = torchrun_run
    config = nb.Config(**result["summary"]["config"])
    problems = [p for split in nb.build_datasets(config).values() for p in split["train"]]
    levels = []
    for rank0, rank1 in zip(*rank_logs(debug)):
        step = rank0["step"]
        assert not set(rank0["indices"]) & set(rank1["indices"]), f"step {step}: ranks shared prompts"
        pool = nb.step_pool(step, problems, config)  # the sequential curriculum's active level
        whole = [pool[i] for i in nb.step_prompt_indices(step, len(pool), config.prompts_per_step, config.seed)]
        assert sorted(rank0["indices"] + rank1["indices"]) == sorted(whole), f"step {step}: prompts lost"
        for rank, record in enumerate((rank0, rank1)):
            assert record["indices"] == [pool[i] for i in nb.step_prompt_indices(
                step, len(pool), config.prompts_per_step, config.seed, rank, WORLD_SIZE)]
        levels.append({problems[i].level for i in rank0["indices"] + rank1["indices"]})
    assert levels == [{"2x1"}, {"2x1"}, {"3x1"}, {"3x1"}], "two steps of each curriculum level, in order"


def test_parameters_stay_identical_across_ranks(torchrun_run):
    _, run_dir, debug, _ = torchrun_run
    logs = rank_logs(debug)
    for rank0, rank1 in zip(*logs):
        step = rank0["step"]
        assert rank0["policy"] == rank1["policy"], f"step {step}: ranks hold different policies"
        assert rank0["reference"] == rank1["reference"], f"step {step}: reference copies differ"
        assert rank0["shard"] != rank1["shard"], f"step {step}: the policy is not sharded across ranks"
    policies = [r["policy"] for r in logs[0]]
    assert len(set(policies)) == len(policies), "the policy must change at every step"
    references = [r["reference"] for r in logs[0]]
    assert references[0] == references[1] != references[2] == references[3], "frozen, except at the refresh"
    from transformers import AutoModelForCausalLM
    refreshed = AutoModelForCausalLM.from_pretrained(run_dir / "reference-step2")  # saved by the refresh after step 2
    assert tensor_digest(dict(refreshed.named_parameters())) == references[2], "every rank loaded the saved policy"
    checkpoint = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert checkpoint["step"] == 4
    assert tensor_digest(checkpoint["model"]) == policies[-1], "rank 0 checkpointed another model than the ranks hold"
