import os
import pathlib

import pytest

from notebook_module import load_notebook_module


@pytest.fixture(scope="session")
def nb():
    """The notebook's definitions, loaded once per test session."""
    return load_notebook_module()


# The files whose tests take longest, slowest first (measured with --durations). Each file runs on one worker
# (pytest.ini), and the workers take files in collection order: these first, so the two end close together.
SLOWEST_FILES = ("test_tools.py", "test_readme.py", "test_benchmarks.py", "test_vllm_notebook.py", "test_qwen_path.py",
                 "test_frozenlake_notebook.py", "test_notebook_e2e.py", "test_vllm_engine.py", "test_trackers.py",
                 "test_modal_app.py", "test_torchrun.py", "test_heldout.py", "test_trl_driver.py",
                 "test_vllm_torchrun.py")  # by their time in one run of the suite (pytest -n 2 -v --durations=0)
assert all((pathlib.Path(__file__).parent / name).exists() for name in SLOWEST_FILES), "a renamed test file"


def pytest_collection_modifyitems(items):
    """The slowest files first, each file's tests in their own order, then every other file as collected."""
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_configure(config):
    """List the slowest tests at the end of every run (the suite, on README's two workers, is kept under 10
    minutes)."""
    if config.option.durations is None:
        config.option.durations = 12


if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per worker: two workers (and the notebooks they start) each with a core, instead of four torch
    # threads spinning against each other on two cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
