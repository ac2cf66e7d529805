import os

import pytest

from notebook_module import load_notebook_module


@pytest.fixture(scope="session")
def nb():
    """The notebook's definitions, loaded once per test session."""
    return load_notebook_module()


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
