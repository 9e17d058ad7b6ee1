import pytest
import torch


@pytest.fixture(autouse=True)
def _small_thread_count():
    """Tests are tiny: one thread avoids oversubscribing CI's 2 cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def digits():
    from dynacnn.data import load_dataset

    return load_dataset("digits", seed=0)
