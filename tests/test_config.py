"""Config presets and validation: every bad value is named in the error."""
import pytest


def test_presets_build_and_default_is_cpu(nb):
    for name in nb.PRESETS:
        config = nb.make_config(name)
        assert config.preset == name
        assert config.prompts_per_step % config.micro_batch_size == 0
    assert nb.Config().preset == "cpu"


def test_qwen_presets_use_paper_defaults(nb):
    for name in ("qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b"):
        config = nb.make_config(name)
        assert config.model_name.startswith("Qwen/Qwen2.5-")
        assert (config.num_ref_samples, config.beta1, config.beta2, config.learning_rate, config.temperature,
                config.prompts_per_step, config.grad_clip) == (8, 0.5, 1e-3, 1e-6, 1.0, 256, 1.0)
        assert config.prompt_template == "tinyzero" and config.dtype == "bfloat16"


@pytest.mark.parametrize("overrides, field", [
    ({"tasks": ["countdown", "sorting"]}, "tasks"),
    ({"tasks": []}, "tasks"),
    ({"countdown_level": "9x9"}, "countdown_level"),
    ({"multiplication_level": "4x4"}, "multiplication_level"),
    ({"train_steps": -1}, "train_steps"),
    ({"train_steps": 0}, "train_steps"),
    ({"num_ref_samples": 2.5}, "num_ref_samples"),
    ({"beta1": 0.0}, "beta1"),
    ({"beta2": -1e-3}, "beta2"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"temperature": 0}, "temperature"),
    ({"prompts_per_step": 10, "micro_batch_size": 4}, "prompts_per_step"),
    ({"format_score": 1.0}, "format_score"),
    ({"prompt_template": "chatml"}, "prompt_template"),
    ({"dtype": "int8"}, "dtype"),
    ({"base_think_fraction": 1.5}, "base_think_fraction"),
    ({"base_countdown_levels": ("3x9", "4x20")}, "base_countdown_levels"),
    ({"adaptive_min_samples": 9}, "adaptive_min_samples"),
    ({"run_name": "a/b"}, "run_name"),
    ({"stage0_seed": -1}, "stage0_seed"),
    ({"stage0_seed": 1.5}, "stage0_seed"),
    ({"report_to": ["tensorboard", "mlflow"]}, "report_to"),
    ({"algorithm": "ppo"}, "algorithm"),
    ({"algorithm": "grpo", "num_generations": 1}, "num_generations"),
    ({"algorithm": "grpo", "reference_refresh_every": 10}, "reference_refresh_every"),
    ({"algorithm": "grpo", "drop_all_failed": True}, "drop_all_failed"),
    ({"algorithm": "grpo", "num_generations": 3, "prompts_per_step": 8, "micro_batch_size": 16}, "prompts_per_step"),
    ({"grpo_epsilon": 0.0}, "grpo_epsilon"),
    ({"grpo_beta": -0.1}, "grpo_beta"),
    ({"grpo_scale_rewards": "yes"}, "grpo_scale_rewards"),
])
def test_bad_values_name_the_field(nb, overrides, field):
    with pytest.raises(ValueError, match=rf"Config\.{field}\b"):
        nb.make_config("cpu", **overrides)


def test_unknown_preset_and_field_list_the_allowed(nb):
    with pytest.raises(ValueError, match="qwen2.5-0.5b"):
        nb.make_config("gpt2")
    with pytest.raises(ValueError, match="unknown Config field 'learning_rat'"):
        nb.make_config("cpu", learning_rat=1e-3)
