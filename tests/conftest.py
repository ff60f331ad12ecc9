"""Fixtures shared by the test modules (the repo root's conftest.py sets the environment)."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module's tests: on the 2 shared CI cores, tiny tensors run several times
    faster than with two. Opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
