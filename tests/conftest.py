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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the tests marked `gpu` when no CUDA device is present; the count is printed."""
    if torch.cuda.is_available():
        return
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if item.get_closest_marker("gpu") is None]
        config.stash[_GPU_DESELECTED] = len(gpu)
        if hasattr(config, "workeroutput"):  # a pytest-xdist worker: tell the controller
            config.workeroutput["gpu_deselected"] = len(gpu)


_GPU_DESELECTED = pytest.StashKey[int]()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:  # noqa: ANN001 - pytest-xdist's hook
    """Every xdist worker collects the whole suite; the controller keeps their count."""
    count = getattr(node, "workeroutput", {}).get("gpu_deselected", 0)
    config = node.config
    config.stash[_GPU_DESELECTED] = max(config.stash.get(_GPU_DESELECTED, 0), count)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    count = config.stash.get(_GPU_DESELECTED, 0)
    if count:
        terminalreporter.write_line(
            f"{count} GPU test(s) deselected: no CUDA device (marked `gpu`; run them on a GPU)"
        )
