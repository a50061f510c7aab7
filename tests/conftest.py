import os

# scipy's fits (seqlab.scaling) call OpenBLAS, whose threads only oversubscribe the cores
# under pytest-xdist; set before numpy or torch load it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models gain nothing from intra-op threads, and one thread per test process keeps
# pytest-xdist workers from oversubscribing the cores. scripts/test.sh reruns the statistical
# tests with another count (SEQLAB_TEST_THREADS), which changes how reductions are split.
torch.set_num_threads(int(os.environ.get("SEQLAB_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
