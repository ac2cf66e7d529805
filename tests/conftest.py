import pytest

from notebook_module import load_notebook_module


@pytest.fixture(scope="session")
def nb():
    """The notebook's definitions, loaded once per test session."""
    return load_notebook_module()


def pytest_configure(config):
    """List the slowest tests at the end of every run (the suite is kept under 10 minutes)."""
    if config.option.durations is None:
        config.option.durations = 12
