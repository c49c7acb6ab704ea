import os

import pytest

# Tests never log to Weights & Biases nor read a user's data/runs/reports folders by accident.
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture
def isolated_paths(tmp_path, monkeypatch):
    """Run and report folders in a temporary directory (data stays where the test puts it)."""
    monkeypatch.setenv("REPLICATE_RUN_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("REPLICATE_REPORT_DIR", str(tmp_path / "reports"))
    return tmp_path


@pytest.fixture
def one_thread():
    """Small tensors: one thread is faster than two, and far faster on a busy machine
    (`pytestmark = pytest.mark.usefixtures("one_thread")` in the model test files)."""
    import torch  # here, not at the top: the notebook tiers' workers need no torch of their own

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """`make test` collects the full-profile tier from tests/test_notebooks.py alone (collecting
    every file costs each worker about 4 s): a `full_profile` test anywhere else would never run."""
    stray = [item.nodeid for item in items
             if item.get_closest_marker("full_profile") and item.path.name != "test_notebooks.py"]
    if stray:
        raise pytest.UsageError(f"full_profile tests belong in tests/test_notebooks.py (make test runs only it): {stray}")
