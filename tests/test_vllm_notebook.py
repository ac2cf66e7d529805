"""The whole notebook, headless, sampling with vLLM (its CPU build): stage 1, stage 2 with a weight sync after
every step, evaluation and plots, killed in the middle of stage 2 and resumed."""
import json
import math

import nbformat
import torch

from notebook_runs import kill_after_steps, papermill_command, run_checked
from test_vllm_engine import VLLM_TINY

TRAIN_STEPS = 3


def test_notebook_with_vllm_is_killed_and_resumes(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-e2e")
    cache_dir = tmp_path_factory.getbasetemp() / "vllm-cache"  # test_vllm_engine.py's base model, when it ran first
    executed, metrics = str(root / "executed.ipynb"), root / "results" / "tiny" / "metrics.jsonl"
    command = papermill_command(executed, str(root / "results"), str(cache_dir), TRAIN_STEPS, eval_every=2,
                                checkpoint_every=1, **VLLM_TINY)
    steps_before = kill_after_steps(command, metrics, 2)
    assert 2 <= steps_before < TRAIN_STEPS
    checkpoint = torch.load(root / "results" / "tiny" / "checkpoint.pt", weights_only=False, mmap=True)
    assert 1 <= checkpoint["step"] < TRAIN_STEPS and checkpoint["config"]["rollout_engine"] == "vllm"

    run_checked(command)
    notebook = nbformat.read(executed, as_version=4)
    assert not [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    printed = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "vLLM engine started" in printed and f"resuming from step {checkpoint['step']}" in printed
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, TRAIN_STEPS + 1))
    for record in records:  # every step sampled with vLLM, synced the new weights, and measured the sampler's gap
        assert record["seconds/sync"] > 0 and 0 <= record["sampler_logprob_gap"] < 1e-3
        assert all(math.isfinite(v) for v in record.values() if isinstance(v, float))
    assert "eval_greedy_accuracy/countdown" in records[1] and "eval_greedy_accuracy/countdown" in records[2]
    run_dir = root / "results" / "tiny"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["rollout_engine"] == "vllm" and summary["steps"] == TRAIN_STEPS
    assert summary["stage1"]["sampled_tokens"] > 0
    for when in ("base", "trained"):
        assert 0.0 <= summary[when]["multiplication"]["pass@1"] <= summary[when]["multiplication"]["pass@2"] <= 1.0
    assert (run_dir / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
