import pytest

from notebook_module import load_notebook_module


@pytest.fixture(scope="session")
def nb():
    """The notebook's definitions, loaded once per test session."""
    return load_notebook_module()
