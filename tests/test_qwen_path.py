"""The Qwen2.5 presets' code path without downloads: a tiny Qwen2.5-shaped model (same architecture
class, a Qwen2 tokenizer whose pad token is its EOS, as in Qwen2.5 base) saved to a temporary folder
and passed as `model_name`, through the whole notebook in bfloat16 with gradient checkpointing."""
import json
import sys

import nbformat
import yaml
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

from notebook_module import NOTEBOOK_PATH
from test_notebook_e2e import run_checked


def save_tiny_qwen(path):
    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, eos_token="<|endoftext|>",
                               pad_token="<|endoftext|>")
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def test_qwen_preset_runs_end_to_end_on_a_local_qwen_shaped_model(tmp_path):
    model_dir = tmp_path / "tiny-qwen2.5"
    save_tiny_qwen(model_dir)
    overrides = {"model_name": str(model_dir), "cache_dir": str(tmp_path / "cache"), "train_prompts_per_task": 8,
                 "test_prompts_per_task": 8, "eval_prompts_per_task": 8, "max_new_tokens": 24, "num_ref_samples": 2,
                 "prompts_per_step": 4, "micro_batch_size": 2, "pass_k": 2, "checkpoint_every": 1, "eval_every": 1,
                 "generation_batch_size": 16}
    executed = tmp_path / "executed.ipynb"
    run_checked([sys.executable, "-m", "papermill", str(NOTEBOOK_PATH), str(executed), "-p", "preset", "qwen2.5-0.5b",
                    "-p", "train_steps", "2", "-p", "output_dir", str(tmp_path / "results"), "-p", "run_name", "qwen",
                    "-y", f"config_overrides: {yaml.safe_dump(overrides, default_flow_style=True)}", "--no-progress-bar"])
    run_dir = tmp_path / "results" / "qwen"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["model_name"] == str(model_dir)
    assert summary["config"]["prompt_template"] == "tinyzero" and summary["config"]["dtype"] == "bfloat16"
    assert summary["config"]["gradient_checkpointing"] is True and summary["stage0"] is None
    assert not (tmp_path / "cache" / "base_model").exists()  # no stage 0 for a named model
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    notebook = nbformat.read(str(executed), as_version=4)
    printed = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "A dialogue between a User and an Assistant" in printed  # the TinyZero-style prompt was used
    trained = AutoModelForCausalLM.from_pretrained(run_dir / "final_model")
    assert type(trained).__name__ == "Qwen2ForCausalLM" and trained.config.num_key_value_heads == 2
