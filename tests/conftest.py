"""Fixtures shared by the test modules (a module opts in with `pytestmark = pytest.mark.usefixtures(...)`)."""

import pytest
import torch


@pytest.fixture(scope="module")
def single_thread():
    """Small tensors: a second thread only adds synchronisation (20x slower when the 2 cores are
    busy); results do not depend on the number of threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def eager_single_thread(single_thread):
    """One thread, and bitsandbytes' torch.compile'd CPU fallback kernels run eagerly: compiling
    them for every new shape costs seconds and changes no result."""
    import torch._dynamo

    with torch._dynamo.config.patch(disable=True):
        yield
