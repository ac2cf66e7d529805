"""The Qwen2.5 presets' code path without downloads: a tiny Qwen2.5-shaped model (same architecture
class, Qwen2.5's tokenizer and vocabulary, pad token = EOS as in Qwen2.5 base) saved to a temporary folder
and passed as `model_name`, through the whole notebook in bfloat16 with gradient checkpointing, sampling with
vLLM as the presets do (head size 32, which vLLM's CPU attention supports), FrozenLake's episodes included."""
import json
import sys

import nbformat
import yaml
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from tinyzero.qwen_tokenizer import qwen25_tokenizer

from notebook_module import NOTEBOOK_PATH
from test_notebook_e2e import run_checked


def save_tiny_qwen(path):
    tokenizer = qwen25_tokenizer()
    config = Qwen2Config(vocab_size=151_936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def test_qwen_preset_runs_end_to_end_on_a_local_qwen_shaped_model(tmp_path):
    model_dir = tmp_path / "tiny-qwen2.5"
    save_tiny_qwen(model_dir)
    overrides = {"model_name": str(model_dir), "cache_dir": str(tmp_path / "cache"), "train_prompts_per_task": 4,
                 "test_prompts_per_task": 2, "eval_prompts_per_task": 2, "max_new_tokens": 16, "num_ref_samples": 2,
                 "prompts_per_step": 2, "micro_batch_size": 1, "pass_k": 2, "checkpoint_every": 1, "eval_every": 1,
                 "generation_batch_size": 16, "max_turns": 2, "max_turn_tokens": 16}
    executed = tmp_path / "executed.ipynb"
    run_checked([sys.executable, "-m", "papermill", str(NOTEBOOK_PATH), str(executed), "-p", "preset", "qwen2.5-0.5b",
                    "-p", "train_steps", "2", "-p", "output_dir", str(tmp_path / "results"), "-p", "run_name", "qwen",
                    "-p", "tasks", "countdown,multiplication,frozenlake",
                    "-y", f"config_overrides: {yaml.safe_dump(overrides, default_flow_style=True)}", "--no-progress-bar"])
    run_dir = tmp_path / "results" / "qwen"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["model_name"] == str(model_dir)
    assert summary["config"]["prompt_template"] == "tinyzero" and summary["config"]["dtype"] == "bfloat16"
    assert summary["config"]["gradient_checkpointing"] is True and summary["stage0"] is None
    assert not (tmp_path / "cache" / "base_model").exists()  # no stage 0 for a named model
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert summary["config"]["rollout_engine"] == "vllm"  # the presets sample with vLLM (its CPU build here)
    assert all(r["seconds/sync"] > 0 and r["sampler_logprob_gap"] is not None for r in records)
    notebook = nbformat.read(str(executed), as_version=4)
    printed = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "A dialogue between a User and an Assistant" in printed  # the TinyZero-style prompt was used
    assert "You are P on a frozen lake" in printed and 1 <= summary["trained"]["frozenlake"]["greedy_turns"] <= 2
    trained = AutoModelForCausalLM.from_pretrained(run_dir / "final_model")
    assert type(trained).__name__ == "Qwen2ForCausalLM" and trained.config.num_key_value_heads == 1
