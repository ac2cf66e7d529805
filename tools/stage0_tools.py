"""What the tools share: the notebook's definitions, their common options, and the cached stage 0 model."""
import argparse
import contextlib
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from notebook_module import load_notebook_module  # noqa: E402


def base_model_arguments(description: str) -> argparse.ArgumentParser:
    """A parser with the options of every tool that measures a stage 0 model: --preset, --seed, --cache-dir."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", default="cpu", choices=["cpu", "cpu-tiny"], help="a preset with a stage 0 model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=str(ROOT / "artifacts"), help="where stage 0 models are cached")
    return parser


def load_base_model(preset: str, cache_dir: str, **overrides):
    """The notebook module, the config, its datasets, and the stage 0 model's folder, tokenizer and model
    (built and cached when missing)."""
    nb = load_notebook_module()
    config = nb.make_config(preset, **overrides, cache_dir=cache_dir)
    datasets = nb.build_datasets(config)
    with contextlib.redirect_stdout(sys.stderr):  # a build's messages: the tools print their reports on stdout
        path = nb.ensure_base_model(config, nb.heldout_keys(datasets))
    tokenizer, model = nb.load_tokenizer(path), nb.load_causal_lm(path, config, torch.device("cpu"))
    return nb, config, datasets, path, tokenizer, model
