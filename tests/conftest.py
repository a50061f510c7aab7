import pytest
import torch

# Tiny models gain nothing from intra-op threads, and one thread per test process keeps
# pytest-xdist workers from oversubscribing the cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
