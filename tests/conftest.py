import os

import pytest
import torch

# Tiny models gain nothing from intra-op threads, and one thread per test process keeps
# pytest-xdist workers from oversubscribing the cores. scripts/test.sh reruns the statistical
# tests with another count (SEQLAB_TEST_THREADS), which changes how reductions are split.
torch.set_num_threads(int(os.environ.get("SEQLAB_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
